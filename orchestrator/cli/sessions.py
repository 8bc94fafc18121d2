"""Connections and agent sessions to an environment's nodes, for commands that talk to them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def env_sessions(environment: Any, *, require_engine: bool = True) -> Iterator[tuple[dict, dict]]:
    """(connections, agent sessions) to every node of the environment, all or nothing; closed after."""
    from orchestrator.io import transport as T
    from orchestrator.io.agent_bundle import current_bundle

    targets = [T.target_from_node(n) for n in environment.nodes]
    conns = T.connect_all(targets, T.options_from_env(environment))
    try:
        sessions = T.open_sessions(conns, current_bundle(), require_engine=require_engine)
        try:
            yield conns, sessions
        finally:
            for s in sessions.values():
                s.close()
    finally:
        T.close_all(conns)



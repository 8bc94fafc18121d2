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


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)

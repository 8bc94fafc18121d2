"""`orch history`: the project's release history in an environment, read from every
node's ledger and merged (orchestrator.io.ledger)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def read_history(environment: Any, project: str, limit: int, warn: Callable[[str], None]) -> Any:
    """The merged core.releases.History (newest first, at most `limit` releases; unreadable
    nodes in .errors and passed to warn)."""
    from orchestrator.io.ledger import ReleaseLedger
    from orchestrator.io.nodes import env_sessions

    with env_sessions(environment) as (_, sessions):
        return ReleaseLedger(sessions, project, environment.name, on_warning=warn).history(limit=limit)

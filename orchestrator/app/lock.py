"""`orch lock status` and `orch lock break`: an environment's deploy lock read, or broken
and the break recorded, over one agent session per node (orchestrator.io.lock)."""

from __future__ import annotations

from typing import Any


def lock_status_of(environment: Any) -> Any:
    """Who holds the environment's lock (io.lock.LockStatus), read on every node without taking it."""
    from orchestrator.io.lock import lock_status
    from orchestrator.io.nodes import env_sessions

    with env_sessions(environment) as (_, sessions):
        return lock_status(environment.name, sessions)


def break_env_lock(environment: Any, reason: str) -> list:
    """Make every node's holder of the environment's lock let go; recorded with who (this
    performer) and why. One io.lock.NodeBreak per node."""
    from orchestrator.io.ledger import detect_performer
    from orchestrator.io.lock import break_lock
    from orchestrator.io.nodes import env_sessions

    with env_sessions(environment, require_engine=False) as (_, sessions):
        return break_lock(environment.name, sessions, reason, detect_performer())

"""One environment's nodes for one command (`EnvConnection`): connected (nodes.ssh_connect,
or the seams' connector), locked (io.lock, on each node's lock session) and closed, with
the command's round trips to each node counted (nodes.RoundTrips).

Round trips after the connect are what a slow link makes expensive, so the lock is taken
with the reads the command makes next under it pipelined behind each node's `lock_acquire`
(`lock(reads=...)`: the ledger's `release_list`, the project's `state`): the agent serves a
session's requests in order, so they still run under the lock, and they come back with it.
The lock is let go by sending `lock_release` without waiting for the answers and closing
the sessions: agent.lock frees it at `lock_release` or when the agent's input ends, which
closing the session gives it; either way nothing else runs under it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestrator.core.progress import Progress

Read = tuple[str, dict]  # (op, args) of an agent request that only reads


def lock_nodes(nodes: Mapping[str, Any], env: str, holder: Any, wait: float,
               on_wait: Callable[..., None] | None = None) -> Any:
    """Take env's lock on each node's lock session (nodes.SSHNode.lock_session: the
    node's first agent session, which the node closes with the command); the
    orchestrator.io.lock.EnvLock, released with .release()."""
    from orchestrator.io.lock import acquire_lock

    sessions = {name: node.lock_session() for name, node in nodes.items()}
    return acquire_lock(env, sessions, holder, wait, on_wait)


class EnvConnection:
    """One environment for one command: its nodes (nodes.SSHNode), its lock, its ledger."""

    def __init__(self, environment: Any, project: str, progress: Progress, seams: Any):
        from orchestrator.io.nodes import ssh_connect

        self.environment = environment
        self.project = project
        self.progress = progress
        self.seams = seams  # pipeline.Seams: .connector, .locker
        # The lock lives on each node's first session (nodes.SSHNode.lock_session).
        self.connector = seams.connector or ssh_connect
        self.nodes: dict[str, Any] = {}
        self.lock_handle: Any = None
        self.timings: dict[str, float] = {}
        self.round_trips: dict[str, dict] = {}  # per node, once closed (nodes.RoundTrips.to_json)

    def connect(self, read_state: bool = True) -> dict[str, Any]:
        """read_state: read the project's `state` along with each agent's hello (False when
        the command reads it under the lock anyway)."""
        t0 = time.monotonic()
        names = [n.name for n in self.environment.nodes]
        self.progress.phase("connect", f"connecting to {len(names)} node(s) of {self.environment.name}: "
                            f"{', '.join(names)}", nodes=names)
        self.nodes = self.connector(self.environment, self.progress, self.project if read_state else None)
        self.timings["connect"] = time.monotonic() - t0
        return self.nodes

    def state_read(self) -> Read:
        """The project's `state` as observing its nodes asks for it (nodes.observe_nodes)."""
        from orchestrator.io.nodes import state_args

        env = self.environment
        return "state", state_args(self.project, env.name if getattr(env, "mesh_enabled", False) else "")

    def lock(self, command: str, wait: float, performer: Any, reads: Iterable[Read] = ()) -> None:
        """Take the environment's deploy lock; `reads`: requests the command makes next
        under it, sent behind each node's lock_acquire (nodes.SSHNode.read_behind_next)."""
        from orchestrator.io.lock import LockHolder

        t0 = time.monotonic()
        env = self.environment.name
        self.progress.phase("lock", f"taking the deploy lock of {env}")
        holder = LockHolder.current(command, performer, self.project)

        def on_wait(node: str, who: Any, waited: float, reason: str | None = None) -> None:
            from dataclasses import asdict

            if reason:  # the lock is ours; agents of a controller that went away are finishing
                self.progress.phase("lock", f"locked {env}; waiting on {node} ({waited:.0f}s): {reason}",
                                    node=node, waited=waited, holder=None, reason=reason)
                return
            text = who.describe() if who is not None else "another controller"
            self.progress.phase("lock", f"waiting for the lock of {env} ({waited:.0f}s): held by {text}",
                                node=node, waited=waited, holder=asdict(who) if who is not None else None)

        reads = list(reads)
        for node in self.nodes.values():
            if reads and hasattr(node, "read_behind_next"):
                node.read_behind_next(reads)
        self.lock_handle = (self.seams.locker or lock_nodes)(self.nodes, env, holder, wait, on_wait)
        # The state read along with hello predates the lock: read it again under it.
        for node in self.nodes.values():
            if hasattr(node, "prefetched_state"):
                node.prefetched_state = None
        self.timings["lock"] = time.monotonic() - t0
        self.progress.event("locked", env=env, seconds=round(self.timings["lock"], 3))

    def ledger(self) -> Any:
        from orchestrator.io.ledger import ReleaseLedger

        return ReleaseLedger(self.nodes, self.project, self.environment.name, on_warning=self.progress.warning)

    def preconnected(self, *args: Any, **kw: Any) -> dict[str, Any]:
        """A nodes.Connector handing the Deployment these nodes."""
        return self.nodes

    def _let_go(self) -> None:
        """`lock_release` on every node held, in reverse order, not waited for: the sessions
        close right after, which frees the lock anyway (agent.lock). A lock handle or nodes
        that cannot do that (tests' fakes) are released the waiting way."""
        handle, held = self.lock_handle, list(getattr(self.lock_handle, "held", None) or [])
        sessions = [getattr(self.nodes.get(name), "lock_session", lambda: None)() for name in reversed(held)]
        if not held or not all(hasattr(s, "stream") for s in sessions):
            handle.release()
            return
        for s in sessions:
            try:
                s.stream("lock_release", {"env": handle.env})
            except Exception:
                pass  # a channel that is gone has freed the lock already
        handle.held = []

    def close(self) -> None:
        from orchestrator.io.nodes import close_nodes

        try:
            if self.lock_handle is not None:
                self._let_go()
        finally:
            self.lock_handle = None
            self.round_trips = {name: node.round_trips().to_json() for name, node in sorted(self.nodes.items())
                                if hasattr(node, "round_trips")}
            close_nodes(self.nodes)
            self.nodes = {}

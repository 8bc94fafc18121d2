"""The environment's deploy lock, taken on every node of the environment.

Every mutating command (up, promote, rollback, down) takes it before it changes
anything. The lock lives in the agent processes (agent.lock): each node's agent holds
an flock for as long as this controller's SSH channel to it is open, so a controller
killed with SIGKILL, or a cancelled CI job, frees it at once. One that goes silent
without closing the connection (network or power lost) frees it within
agent.wire.protocol.LEASE_SECONDS: the session's ping thread (transport.AgentSession) renews
the agent's lease while this process lives, however busy its main thread is. Nodes are
locked in a fixed order (by name), so two controllers never hold half of an
environment each. `break_lock` is the operator's override (`orch lock break`).

    sessions = {name: node.lock_session() for name, node in pool.items()}  # io.nodes; or any agent session per node
    with acquire_lock("prod", sessions, LockHolder.current("orch up --env prod"), wait=0):
        ...                                            # deploy
    # LockHeld (exit 4) names holder, command, start time and CI job

orch's own commands take it on each node's first session (nodes.SSHNode.lock_session),
the one that lives as long as the command, so it costs no extra agent start. When the
controller goes away, that agent first puts back the batch it was working on, then
ends and frees the lock; the next holder's lock_acquire also waits for the other
sessions' operations still finishing (agent.lock.working), so it never works beside
them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from agent.wire.protocol import LEASE_SECONDS
from orchestrator.errors import LockHeld, OrchError

LOCKED_KIND = "locked"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or asks for) the lock; written on the node next to the flock."""

    user: str
    host: str
    command: str
    started: str  # ISO time the command started
    ci_job: str = ""
    pid: int | None = None
    project: str = ""

    @classmethod
    def current(cls, command: str, performer: Any = None, project: str = "") -> LockHolder:
        """This process as holder; performer: releases.Performer (default: detected)."""
        if performer is None:
            from orchestrator.io.ledger import detect_performer

            performer = detect_performer()
        return cls(
            user=performer.user, host=performer.host, command=command,
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), ci_job=performer.ci_job,
            pid=os.getpid(), project=project,
        )

    def to_args(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LockHolder | None:
        if not d:
            return None
        return cls(user=str(d.get("user", "?")), host=str(d.get("host", "?")), command=str(d.get("command", "?")),
                   started=str(d.get("started", "")), ci_job=str(d.get("ci_job", "") or ""),
                   pid=d.get("pid") if isinstance(d.get("pid"), int) else None, project=str(d.get("project", "") or ""))

    def describe(self, now: datetime | None = None) -> str:
        text = f"{self.user} on {self.host}, running `{self.command}`"
        if self.started:
            text += f" since {self.started}"
            age = _age(self.started, now)
            if age:
                text += f" ({age} ago)"
        if self.ci_job:
            text += f", CI job {self.ci_job}"
        return text


def _age(started: str, now: datetime | None = None) -> str:
    try:
        t = datetime.strptime(started[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return ""
    secs = int(((now or datetime.now(timezone.utc)) - t).total_seconds())
    if secs < 0:
        return ""
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"


def lock_held_error(env: str, node: str, holder: LockHolder | None, waited: float = 0.0) -> LockHeld:
    who = holder.describe() if holder else "another controller (it has not written its name yet)"
    text = f"environment {env} is locked by {who} (held on {node})"
    if waited:
        text += f"; waited {waited:.0f}s"
    return LockHeld(
        text + ". Nothing was changed.",
        fix=f"wait for it to finish and run again, or add --lock-wait SECONDS to wait for it; `orch lock status "
        f"--env {env}` shows the holder. The lock frees itself the moment that controller exits, even when killed, "
        f"and {LEASE_SECONDS:.0f}s after it went silent (network lost); `orch lock break --env {env} --reason TEXT` "
        "forces it.",
        details={"env": env, "node": node, "holder": asdict(holder) if holder else None},
    )


class EnvLock:
    """The lock of one environment over its nodes' agent sessions (acquire / release)."""

    def __init__(self, env: str, sessions: Mapping[str, Any], holder: LockHolder):
        self.env = env
        self.sessions = dict(sorted(sessions.items()))  # the fixed order: by node name
        self.holder = holder
        self.held: list[str] = []

    def acquire(self, wait: float = 0.0, on_wait: Callable[..., None] | None = None
                ) -> EnvLock:
        """Take the lock on every node in order, waiting up to `wait` seconds in all."""
        from orchestrator.io.transport import AgentError

        deadline = time.monotonic() + max(0.0, wait)
        try:
            for node, session in self.sessions.items():
                remaining = max(0.0, deadline - time.monotonic())

                def event(ev: dict, node: str = node) -> None:
                    if ev.get("type") == "lock.waiting" and on_wait is not None:
                        waited = float(ev.get("waited") or 0)
                        if ev.get("reason"):  # locked by us; an earlier controller's agents finishing
                            on_wait(node, None, waited, ev["reason"])
                        else:
                            on_wait(node, LockHolder.from_dict(ev.get("holder")), waited)

                try:
                    session.call("lock_acquire", {"env": self.env, "holder": self.holder.to_args(),
                                                  "wait_s": round(remaining, 3)}, on_event=event)
                except AgentError as err:
                    if err.kind == LOCKED_KIND and err.details.get("work"):
                        raise LockHeld(
                            f"environment {self.env} on {node}: {err.message}. Nothing was changed.",
                            fix="they end by themselves once they have put their batch back; run again later. "
                            "`orch ps` shows the containers.",
                            details={"env": self.env, "node": node, "holder": None}) from None
                    if err.kind == LOCKED_KIND:
                        raise lock_held_error(self.env, node, LockHolder.from_dict(err.details.get("holder")),
                                              float(err.details.get("waited") or 0)) from None
                    raise
                self.held.append(node)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Release on every node still held (best effort: a dead channel has freed it already)."""
        for node in reversed(self.held):
            try:
                self.sessions[node].call("lock_release", {"env": self.env}, timeout=15)
            except Exception:
                pass
        self.held = []

    def __enter__(self) -> EnvLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire_lock(env: str, sessions: Mapping[str, Any], holder: LockHolder, wait: float = 0.0,
                 on_wait: Callable[..., None] | None = None) -> EnvLock:
    """Take `env`'s lock on every node of sessions; LockHeld (exit 4) when another holds it."""
    return EnvLock(env, sessions, holder).acquire(wait, on_wait)


@dataclass(frozen=True)
class NodeLockState:
    node: str
    held: bool
    mine: bool
    holder: LockHolder | None
    error: str = ""


@dataclass(frozen=True)
class LockStatus:
    env: str
    nodes: list[NodeLockState]
    last_break: dict | None = None  # the newest `orch lock break` in the nodes' ledgers

    @property
    def held(self) -> bool:
        return any(n.held for n in self.nodes)

    @property
    def holder(self) -> LockHolder | None:
        return next((n.holder for n in self.nodes if n.holder is not None), None)

    def to_json(self) -> dict:
        h = self.holder
        return {"env": self.env, "held": self.held, "holder": asdict(h) if h else None,
                "nodes": [{"node": n.node, "held": n.held, "holder": asdict(n.holder) if n.holder else None,
                           **({"error": n.error} if n.error else {})} for n in self.nodes],
                "last_break": self.last_break}

    def describe(self) -> str:
        if not self.held:
            text = f"environment {self.env}: not locked."
        else:
            where = ", ".join(n.node for n in self.nodes if n.held)
            h = self.holder
            text = f"environment {self.env}: locked by {h.describe() if h else 'an unnamed holder'} (on {where})."
        b = self.last_break
        if b:
            from orchestrator.core.releases import performer_text

            text += f"\nLast broken {b.get('at')} by {performer_text(b.get('by') or {})}: {b.get('reason')}"
        return text


def lock_status(env: str, sessions: Mapping[str, Any]) -> LockStatus:
    """Who holds `env`'s lock, read on every node without taking it."""
    from orchestrator.io.transport import parallel

    def ask(session: Any) -> tuple[dict, list]:
        breaks = session.call("lock_break_list", {"env": env, "limit": 1})["breaks"]
        return session.call("lock_status", {"env": env}), breaks

    items = sorted(sessions.items())
    answers, errors = parallel(items, lambda item: ask(item[1]), key=lambda i: i[0])
    nodes, breaks = [], []
    for node, _ in items:
        if node in answers:
            a, node_breaks = answers[node]
            breaks += node_breaks
            nodes.append(NodeLockState(node, bool(a.get("held")), bool(a.get("mine")),
                                       LockHolder.from_dict(a.get("holder"))))
        else:
            err = errors[node]
            nodes.append(NodeLockState(node, False, False, None,
                                       err.render() if isinstance(err, OrchError) else str(err)))
    return LockStatus(env, nodes, max(breaks, key=lambda b: str(b.get("at")), default=None))


@dataclass(frozen=True)
class NodeBreak:
    """What `orch lock break` did on one node."""

    node: str
    held: bool
    broken: bool
    holder: LockHolder | None
    killed: bool = False  # the holder needed SIGKILL: its in-flight batch was not put back
    error: str = ""


def break_lock(env: str, sessions: Mapping[str, Any], reason: str, performer: Any) -> list[NodeBreak]:
    """An operator's override: every node's holder of `env`'s lock is made to let go
    (agent lock_break), and the break is recorded in each node's ledger with who and why."""
    from orchestrator.io.transport import parallel

    items = sorted(sessions.items())
    by = performer.to_dict()
    answers, errors = parallel(items, lambda item: item[1].call(
        "lock_break", {"env": env, "reason": reason, "by": by}, timeout=120), key=lambda i: i[0])
    out = []
    for node, _ in items:
        if node in answers:
            a = answers[node]
            out.append(NodeBreak(node, bool(a.get("held")), bool(a.get("broken")),
                                 LockHolder.from_dict(a.get("holder")), bool(a.get("killed"))))
        else:
            err = errors[node]
            out.append(NodeBreak(node, False, False, None,
                                 error=err.render() if isinstance(err, OrchError) else str(err)))
    return out

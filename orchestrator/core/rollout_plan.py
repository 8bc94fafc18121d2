"""The rolling update as data: what `orch up` will do to each service, in order. Pure.

`plan_rollout` turns a Plan (orchestrator.core.plan: per service and node, what happens to
each replica) and the observed containers into a `RolloutPlan`, which
orchestrator.app.deploy executes as it is and `orch plan` shows:

    per service, in wave order (a wave's services roll in parallel):
      batches    the replicas to replace, in order, `parallelism` at a time across nodes
                 (orchestrator.core.rollout.batches), `delay` before each but the first;
                 each replica stop-first or start-first (`order`; a start-first replica
                 whose running container publishes a host port the new one needs is
                 replaced stop-first); the agent is sent each replica's order and follows
                 it (agent.wire.messages.RolloutRequest; it refuses a start-first one
                 whose old container still holds such a port); its previous container is
                 kept as `<name>-prev`: stopped before the new one starts (stop-first),
                 or, start-first, once out of rotation and drained, in the background
                 (agent.stops: the next batch does not wait for it; the deploy does,
                 at its end: orchestrator.app.stops)
      settle     nodes where nothing is replaced but a kept container must be waited for
                 or the ingress synced
      retire     replicas no longer wanted on a node (scaled down, moved): stopped and kept
      monitor    the update_config.monitor window the replaced replicas are watched for
      restore    what a failure puts back (failure_action rollback): each replaced or
                 retired replica onto its previous container (started again if it ran),
                 a replica new in this release removed
    moved        after every wave: services leaving a node entirely, stopped and kept

A rollback undoes what was actually replaced (orchestrator.core.rollout.Journal: only the
batches that ran), latest wave first; `restore` is what it comes to when every batch ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.core.plan import CREATE, RECREATE, REMOVE, Observed, Plan, Step
from orchestrator.core.rollout import Slot, UpdatePolicy, batches

STOP_FIRST, START_FIRST = "stop-first", "start-first"
_RUNNING = ("running", "restarting")
_RETIRED_SUFFIX = "-prev"  # agent.wire.labels.RETIRED_SUFFIX


@dataclass(frozen=True)
class Previous:
    """The container a replica has before the update: kept for a rollback."""

    container: str
    id: str = ""
    release: str = ""
    running: bool = False  # a rollback starts it again

    def to_json(self) -> dict:
        return {"container": self.container, "id": self.id, "release": self.release, "running": self.running}


@dataclass(frozen=True)
class Replace:
    """One replica in a batch."""

    node: str
    replica: int
    kind: str  # create | recreate
    order: str  # stop-first | start-first, for this replica
    previous: Previous | None = None  # None: new in this release (a rollback removes it)
    why: str = ""  # why the order is not the policy's

    def to_json(self) -> dict:
        out = {"node": self.node, "replica": self.replica, "action": self.kind, "order": self.order,
               "previous": self.previous.to_json() if self.previous is not None else None}
        if self.why:
            out["why"] = self.why
        return out


@dataclass(frozen=True)
class Batch:
    number: int  # 1-based
    replaces: tuple[Replace, ...]
    delay: float = 0.0  # seconds waited before it (update_config.delay)

    @property
    def order(self) -> str:
        orders = {r.order for r in self.replaces}
        return orders.pop() if len(orders) == 1 else "mixed"

    def by_node(self) -> dict[str, list[int]]:
        """Node -> replicas: one agent `rollout` per node, in parallel."""
        out: dict[str, list[int]] = {}
        for r in self.replaces:
            out.setdefault(r.node, []).append(r.replica)
        return {n: sorted(rs) for n, rs in out.items()}

    def to_json(self) -> dict:
        return {"batch": self.number, "order": self.order, "delay": self.delay,
                "replicas": [r.to_json() for r in self.replaces]}


@dataclass(frozen=True)
class Settle:
    """A node where nothing is replaced, but the agent must wait or sync the ingress."""

    node: str
    why: str

    def to_json(self) -> dict:
        return {"node": self.node, "why": self.why}


@dataclass(frozen=True)
class Retire:
    """Replicas stopped and kept (renamed) on a node: scaled down or moved away."""

    service: str
    node: str
    replicas: tuple[int, ...]
    previous: tuple[Previous, ...] = ()

    def to_json(self) -> dict:
        return {"service": self.service, "node": self.node, "replicas": list(self.replicas)}


@dataclass(frozen=True)
class Restore:
    """What a failure puts back for one replica: its previous container (started again
    if it ran), or, with none, the new container removed."""

    node: str
    replica: int
    previous: Previous | None

    def to_json(self) -> dict:
        return {"node": self.node, "replica": self.replica,
                "to": self.previous.container if self.previous is not None else None,
                "start": bool(self.previous and self.previous.running)}


@dataclass(frozen=True)
class ServiceRollout:
    service: str
    wave: int
    policy: UpdatePolicy
    batches: tuple[Batch, ...] = ()
    settle: tuple[Settle, ...] = ()
    retire: tuple[Retire, ...] = ()
    monitor: float = 0.0  # seconds each replaced replica is watched after its batch (0: checked once at the end)
    watched: tuple[tuple[str, int], ...] = ()  # (node, replica): those with a previous container
    restore: tuple[Restore, ...] = ()

    @property
    def failure_action(self) -> str:
        return self.policy.failure_action

    def to_json(self) -> dict:
        p = self.policy
        return {"service": self.service, "wave": self.wave, "order": p.order, "parallelism": p.parallelism,
                "delay": p.delay, "failure_action": p.failure_action, "max_failure_ratio": p.max_failure_ratio,
                "batches": [b.to_json() for b in self.batches], "settle": [s.to_json() for s in self.settle],
                "retire": [r.to_json() for r in self.retire],
                "monitor": {"seconds": self.monitor,
                            "replicas": [{"node": n, "replica": r} for n, r in self.watched]},
                "restore": [r.to_json() for r in self.restore]}

    def render_lines(self) -> list[str]:
        p = self.policy
        head = (f"{self.service} (wave {self.wave}): {len(self.batches)} batch"
                f"{'es' if len(self.batches) != 1 else ''}, parallelism {p.parallelism}, {p.order}")
        if p.delay:
            head += f", delay {p.delay:g}s"
        head += f", on failure {p.failure_action}"
        lines = [head]
        for b in self.batches:
            parts = []
            for r in b.replaces:
                text = f"{r.node} replica {r.replica} {r.kind}"
                if r.kind == RECREATE:
                    text += f" {r.order}" + (f" ({r.why})" if r.why else "")
                parts.append(text)
            lines.append(f"  batch {b.number}: " + "; ".join(parts))
        for s in self.settle:
            lines.append(f"  then {s.node}: {s.why}")
        for r in self.retire:
            lines.append(f"  then retire on {r.node}: replica {', '.join(str(x) for x in r.replicas)} (stopped, kept)")
        if self.watched and self.monitor > 0:
            lines.append(f"  monitor {self.monitor:g}s: {len(self.watched)} replaced replica(s)")
        back = sum(1 for r in self.restore if r.previous is not None)
        new = len(self.restore) - back
        if p.failure_action == "rollback" and self.restore:
            lines.append(f"  on failure: the release is rolled back ({back} replica(s) back on their previous "
                         f"container" + (f", {new} new one(s) removed" if new else "") + ")")
        elif self.restore:
            lines.append(f"  on failure: {'paused' if p.failure_action == 'pause' else 'going on'}, "
                         "the batches done stay")
        return lines


@dataclass(frozen=True)
class RolloutPlan:
    services: tuple[ServiceRollout, ...] = ()  # wave order, then the wave's order
    moved: tuple[Retire, ...] = ()  # after every wave

    def service(self, name: str) -> ServiceRollout | None:
        return next((s for s in self.services if s.service == name), None)

    def to_json(self) -> dict:
        return {"services": [s.to_json() for s in self.services], "moved": [r.to_json() for r in self.moved]}

    def render_lines(self) -> list[str]:
        shown = [s for s in self.services if s.batches or s.settle or s.retire]
        if not shown and not self.moved:
            return []
        lines = ["Rollout:"]
        for s in shown:
            lines += ["  " + ln for ln in s.render_lines()]
        for r in self.moved:
            lines.append(f"  after every wave: retire {r.service} on {r.node}: replica "
                         f"{', '.join(str(x) for x in r.replicas)} (stopped, kept)")
        return lines


# --------------------------------------------------------------------------- planning


def _running(c: Observed | None) -> bool:
    return c is not None and c.state in _RUNNING


def _previous(c: Observed | None, kept_name: str = "") -> Previous | None:
    if c is None:
        return None
    return Previous(kept_name or c.name, c.id, c.release, _running(c) and not c.retired)


def _port_conflict(old: Observed, unit: Any) -> bool:
    """The old container holds a host port the new one (or the service's ingress) needs:
    the agent's safety net (agent.rollout._conflicting_ports) applies the same rule."""
    held = {(p.get("published"), p.get("protocol") or "tcp") for p in old.ports
            if isinstance(p, Mapping) and p.get("published")}
    wanted = {(p.get("published"), p.get("protocol") or "tcp")
              for p in ((unit.spec.get("container") or {}).get("ports") or []) if p.get("published")}
    ingress = getattr(unit, "ingress", None)
    if ingress is not None:
        wanted.add((ingress.published, "tcp"))
    return bool(held & wanted)


def _replace(step: Step, replica: int, kind: str, policy: UpdatePolicy,
             current: Mapping[int, Observed], kept: Mapping[int, Observed]) -> Replace:
    """How one replica is replaced; the agent is sent this order (agent.rollout.op_rollout)."""
    old = current.get(replica) if kind == RECREATE else None
    if old is None:  # nothing runs under the name: an older kept one is the previous container
        stale = kept.get(replica)
        return Replace(step.node, replica, kind, policy.order, _previous(stale) if stale is not None else None)
    order, why = policy.order, ""
    if policy.order == START_FIRST and _running(old) and _port_conflict(old, step.unit):
        order, why = STOP_FIRST, "its container publishes a host port the new one needs"
    return Replace(step.node, replica, kind, order, _previous(old, old.name + _RETIRED_SUFFIX), why)


def _containers(observed: Mapping[str, Sequence[Observed]], service: str, node: str,
                retired: bool) -> dict[int, Observed]:
    out: dict[int, Observed] = {}
    for c in observed.get(node, ()):
        if c.service == service and c.retired == retired and c.replica not in out:
            out[c.replica] = c
    return out


def service_rollout(wave: int, service: str, steps: Iterable[Step],
                    observed: Mapping[str, Sequence[Observed]]) -> ServiceRollout:
    """The rolling update of one service (its steps: one per node, in node order)."""
    steps = list(steps)
    policy = next((s.unit.policy for s in steps if getattr(s.unit, "policy", None) is not None), None) \
        or UpdatePolicy()
    how: dict[tuple[str, int], Replace] = {}
    slots = []
    for st in steps:
        current = {}
        for a in st.actions:
            if a.kind == RECREATE:
                c = next((c for c in observed.get(st.node, ()) if c.id == a.container_id and not c.retired), None)
                if c is not None:
                    current[a.replica] = c
        kept = _containers(observed, service, st.node, True)
        for a in st.changes:
            if a.kind in (CREATE, RECREATE):
                how[(st.node, a.replica)] = _replace(st, a.replica, a.kind, policy, current, kept)
                slots.append(Slot(st.node, a.replica, a.kind))
    planned = tuple(Batch(k, tuple(how[(s.node, s.replica)] for s in batch), policy.delay if k > 1 else 0.0)
                    for k, batch in enumerate(batches(slots, policy.parallelism), 1))
    settle = tuple(Settle(st.node, "waiting for a kept container" if st.wait_only else f"ingress sync ({st.ingress})")
                   for st in steps if not st.changes and (st.wait_only or st.ingress))
    retire = tuple(_retire(service, st.node, [a.replica for a in st.actions if a.kind == REMOVE], observed)
                   for st in steps if any(a.kind == REMOVE for a in st.actions))
    replaced = [r for b in planned for r in b.replaces]
    # Watched for `monitor` seconds, or (0s, orch's default) checked once when the update ends.
    watched = tuple((r.node, r.replica) for r in replaced if r.previous is not None)
    restore = [Restore(r.node, r.replica, r.previous) for r in replaced]
    restore += [Restore(t.node, p_replica, p) for t in retire for p_replica, p in zip(t.replicas, t.previous)]
    return ServiceRollout(service, wave, policy, planned, settle, retire, policy.monitor, watched, tuple(sorted(restore, key=lambda r: (r.node, r.replica))))


def _retire(service: str, node: str, replicas: Sequence[int], observed: Mapping[str, Sequence[Observed]]) -> Retire:
    current = _containers(observed, service, node, False)
    reps = tuple(sorted(replicas))
    prev = tuple(Previous(current[r].name + _RETIRED_SUFFIX, current[r].id, current[r].release, _running(current[r]))
                 if r in current else Previous("") for r in reps)
    return Retire(service, node, reps, prev)


def plan_rollout(plan: Plan, observed: Mapping[str, Sequence[Observed]]) -> RolloutPlan:
    """The rolling update of every service the plan changes, and the moved replicas."""
    services = []
    for i, wave in enumerate(plan.waves, 1):
        steps = plan.wave_steps(i)
        for service in wave:
            mine = [st for st in steps if st.service == service]
            if any(st.needs_apply for st in mine):
                services.append(service_rollout(i, service, mine, observed))
    moved = tuple(_retire(r.service, r.node, r.replicas or [], observed) for r in plan.removals if not r.orphan)
    return RolloutPlan(tuple(services), moved)

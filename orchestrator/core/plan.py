"""Desired units vs what the nodes report: the plan of `orch up`. Pure.

Inputs: the Units of orchestrator.core.specs (one per service and node) and each node's
`state` result (container summaries of agent.engine.ContainerInfo.summary). Output: a
Plan with, per service and node, what happens to each replica:

  create     no container for that replica on that node yet
  recreate   there is one but its config hash differs (the plan says which fields), or
             it is not running (exited with an error, unhealthy, half made)
  unchanged  same config hash and running (or, for a one-shot, exited 0)
  remove     a replica no longer wanted there (scaled down, moved to another node),
             or a service no longer in the Compose file (only with remove_orphans;
             otherwise it is listed as an orphan and a warning)

The convergence rule mirrors the agent's (agent.operations._keepable), so a service
whose every replica is `unchanged` needs no `apply` call at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CREATE, RECREATE, UNCHANGED, REMOVE = "create", "recreate", "unchanged", "remove"
KINDS = (CREATE, RECREATE, UNCHANGED, REMOVE)


@dataclass(frozen=True)
class Observed:
    """One container as a node's agent reports it (the fields the plan and ps use)."""

    node: str
    id: str
    name: str
    service: str
    replica: int
    state: str
    health: str = ""
    exit_code: int = 0
    restart_count: int = 0
    config_hash: str = ""
    config_parts: Mapping[str, str] = field(default_factory=dict)
    image: str = ""
    image_id: str = ""
    ports: tuple = ()
    started_at: str = ""
    finished_at: str = ""
    release: str = ""
    retired: bool = False  # kept (stopped, renamed *-prev) for a rollback until its successor is live

    @classmethod
    def from_summary(cls, node: str, d: Mapping[str, Any]) -> "Observed":
        return cls(
            node=node, id=d.get("id", ""), name=d.get("name", ""), service=d.get("service", ""),
            replica=int(d.get("replica") or 0), state=d.get("state", ""), health=d.get("health") or "",
            exit_code=int(d.get("exit_code") or 0), restart_count=int(d.get("restart_count") or 0),
            config_hash=d.get("config_hash", ""), config_parts=dict(d.get("config_parts") or {}),
            image=d.get("image", ""), image_id=d.get("image_id", ""), ports=tuple(d.get("ports") or ()),
            started_at=d.get("started_at") or "", finished_at=d.get("finished_at") or "",
            release=d.get("release") or "", retired=bool(d.get("retired")),
        )

    def one_shot_done(self, restart: str) -> bool:
        return (self.state == "exited" and self.exit_code == 0 and self.restart_count == 0
                and restart.partition(":")[0] in ("no", "on-failure"))

    def describe_state(self) -> str:
        if self.state == "exited":
            return f"exited ({self.exit_code})"
        if self.health and self.state == "running":
            return f"running ({self.health})"
        return self.state or "unknown"


def observe(states: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Observed]]:
    """Agent `state` results per node -> Observed containers per node."""
    return {node: [Observed.from_summary(node, c) for c in (res.get("containers") or [])]
            for node, res in states.items()}


def existing_slots(observed: Mapping[str, Iterable[Observed]]) -> list:
    """Where replicas run now, for stable placement (orchestrator.core.placement.Slot)."""
    from orchestrator.core.placement import Slot

    seen = {}
    for node, containers in observed.items():
        for c in containers:
            if c.service and c.replica > 0 and not c.retired:
                seen.setdefault((c.service, c.replica), Slot(c.service, c.replica, node))
    return sorted(seen.values(), key=lambda s: (s.service, s.replica, s.node))


@dataclass(frozen=True)
class Action:
    kind: str  # create | recreate | unchanged | remove
    service: str
    node: str
    replica: int
    reason: str = ""
    container: str = ""  # the existing container's name, if any
    container_id: str = ""
    changed: tuple[str, ...] = ()  # ContainerSpec fields that differ (recreate)
    orphan: bool = False

    def to_json(self) -> dict:
        out = {"action": self.kind, "service": self.service, "replica": self.replica, "node": self.node}
        if self.reason:
            out["reason"] = self.reason
        if self.container:
            out["container"] = self.container
        if self.container_id:
            out["id"] = self.container_id
        if self.changed:
            out["changed"] = list(self.changed)
        if self.orphan:
            out["orphan"] = True
        return out


@dataclass
class Step:
    """One service on one node: an `apply` call when anything changes (or must be waited for)."""

    wave: int  # 1-based
    service: str
    node: str
    unit: Any  # orchestrator.core.specs.Unit
    actions: list[Action] = field(default_factory=list)
    wait_only: bool = False  # nothing changes but a kept container is not ready yet
    ingress: str = ""  # why the node's ingress for the service must be synced ("" : it is right)

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.kind != UNCHANGED]

    @property
    def needs_apply(self) -> bool:
        return bool(self.changes) or self.wait_only or bool(self.ingress)


@dataclass
class Removal:
    """A `remove` call, made after every wave succeeded."""

    node: str
    service: str
    replicas: list[int] | None  # None: the whole service on that node
    orphan: bool = False
    actions: list[Action] = field(default_factory=list)


@dataclass
class Plan:
    project: str
    environment: str
    waves: list[list[str]]
    steps: list[Step]
    removals: list[Removal]
    orphans: dict[str, list[str]]  # services not in the Compose file, left running: service -> nodes
    nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mesh: list[Any] = field(default_factory=list)  # orchestrator.core.mesh.MeshAction: nodes whose mesh changes
    rollout: Any = None  # orchestrator.core.rollout_plan.RolloutPlan: what apply() executes, in order
    edge: Any = None  # orchestrator.core.edge_plan.EdgePlan: certificates put, the certificate daemon's calls

    def actions(self) -> list[Action]:
        out = [a for s in self.steps for a in s.actions]
        out += [a for r in self.removals for a in r.actions]
        return out

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for a in self.actions():
            out[a.kind] += 1
        return out

    @property
    def is_noop(self) -> bool:
        return not self.removals and not self.mesh and not self.edge \
            and not any(s.changes or s.ingress for s in self.steps)

    def wave_steps(self, wave: int) -> list[Step]:
        return [s for s in self.steps if s.wave == wave]

    def changed_services(self) -> list[str]:
        names = {a.service for a in self.actions() if a.kind != UNCHANGED}
        return sorted(names)

    def to_json(self) -> dict:
        return {
            "project": self.project,
            "environment": self.environment,
            "noop": self.is_noop,
            "waves": [list(w) for w in self.waves],
            "summary": self.counts(),
            "actions": [dict(a.to_json(), wave=s.wave) for s in self.steps for a in s.actions]
            + [a.to_json() for r in self.removals for a in r.actions],
            "orphans": {k: list(v) for k, v in sorted(self.orphans.items())},
            "ingress": [{"service": s.service, "node": s.node, "reason": s.ingress} for s in self.steps if s.ingress],
            "mesh": [{"node": m.node, "join": m.join, "reasons": list(m.reasons)} for m in self.mesh],
            "warnings": list(self.warnings),
            "certificates": self.edge.to_json() if self.edge is not None else None,
        } | ({"rollout": self.rollout.to_json()} if self.rollout is not None else {})

    def render_text(self) -> str:
        rows: list[list[str]] = []
        lines = [f"Plan for {self.project} on {self.environment} ({len(self.nodes)} node"
                 f"{'s' if len(self.nodes) != 1 else ''}: {', '.join(self.nodes)}):"]
        for i, wave in enumerate(self.waves, 1):
            steps = self.wave_steps(i)
            if not steps:
                continue
            rows.append([f"wave {i}", "", "", "", ""])
            for s in steps:
                for a in s.actions:
                    rows.append(["", a.service, f"{a.replica}", a.node, _describe(a)])
        removal_actions = [a for r in self.removals for a in r.actions]
        if removal_actions:
            rows.append(["after", "", "", "", ""])
            for a in removal_actions:
                rows.append(["", a.service, f"{a.replica}", a.node, _describe(a)])
        widths = [max(len(r[i]) for r in rows) if rows else 0 for i in range(5)]
        header = ["", "SERVICE", "REPLICA", "NODE", "ACTION"]
        widths = [max(w, len(h)) for w, h in zip(widths, header)]
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        for service, nodes in sorted(self.orphans.items()):
            lines.append(f"orphan: {service} on {', '.join(nodes)} is not in the Compose file "
                         "(left running; --remove-orphans removes it)")
        for s in self.steps:
            if s.ingress:
                lines.append(f"ingress: {s.service} on {s.node} is synced ({s.ingress})")
        for m in self.mesh:
            lines.append(f"mesh: {m.node}: {', '.join(m.reasons)}")
        if self.edge is not None:
            lines += self.edge.render_lines()
        if self.rollout is not None:
            lines += self.rollout.render_lines()
        c = self.counts()
        if self.is_noop:
            lines.append(f"No changes: {c[UNCHANGED]} container(s) up to date.")
        else:
            lines.append(f"{c[CREATE]} to create, {c[RECREATE]} to recreate, {c[REMOVE]} to remove, "
                         f"{c[UNCHANGED]} unchanged.")
        return "\n".join(lines)


def _describe(a: Action) -> str:
    text = a.kind
    if a.reason:
        text += f" ({a.reason})"
    return text


# --------------------------------------------------------------------------- planning


def converged(c: Observed, unit: Any) -> tuple[bool, str]:
    """(keep?, why not) for an existing container of unit's service and replica."""
    from agent.wire.labels import container_name

    if c.config_hash != unit.config_hash:
        return False, "config changed"
    if c.name != container_name(unit.spec["project"], unit.service, c.replica):
        return False, f"misnamed ({c.name})"
    if c.state == "running":
        if c.health == "unhealthy":
            return False, "unhealthy"
        return True, ""
    if c.one_shot_done(unit.restart):
        return True, ""
    return False, f"not running: {c.describe_state()}"


def ready_now(c: Observed, unit: Any) -> bool:
    """Whether a kept container already satisfies the unit's wait (else apply waits)."""
    if c.one_shot_done(unit.restart):
        return True
    if unit.wait == "completed":
        return False
    if c.health:
        return c.health == "healthy"
    return unit.wait != "healthy"


def changed_fields(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[str, ...]:
    if not old or not new:
        return ()
    return tuple(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))


def make_plan(
    project: str,
    environment: str,
    waves: Sequence[Sequence[str]],
    units: Mapping[tuple[str, str], Any],
    observed: Mapping[str, Sequence[Observed]],
    project_services: Iterable[str],
    remove_orphans: bool = False,
    nodes: Sequence[str] = (),
    ingress: Mapping[str, Mapping[str, Any]] | None = None,
) -> Plan:
    """The plan for deploying `units` (the services of `waves`) over `observed`.

    Services of the project that are not being deployed (a partial `orch up web`) are
    left alone; services no longer in the project are orphans.
    """
    deploying = {s for wave in waves for s in wave}
    known = set(project_services)
    node_order = list(nodes) or sorted(observed)
    order = {n: i for i, n in enumerate(node_order)}
    by_key: dict[tuple[str, str], list[Observed]] = {}
    where: dict[tuple[str, int], list[str]] = {}
    for node, containers in observed.items():
        for c in containers:
            if c.retired:
                continue  # kept for a rollback; the release that is live decides its fate
            by_key.setdefault((c.service, node), []).append(c)
            where.setdefault((c.service, c.replica), []).append(node)
    wanted_on: dict[tuple[str, int], str] = {}
    for (service, node), unit in units.items():
        for r in unit.replicas:
            wanted_on[(service, r)] = node

    nodes_of: dict[str, set[str]] = {}  # by service, once: a scan of units per service grows with services²
    for (service, node) in units:
        nodes_of.setdefault(service, set()).add(node)

    steps: list[Step] = []
    for i, wave in enumerate(waves, 1):
        for service in wave:
            for node in sorted(nodes_of.get(service, ()), key=lambda n: (order.get(n, 99), n)):
                unit = units[(service, node)]
                step = Step(i, service, node, unit)
                present = by_key.get((service, node), [])
                for r in unit.replicas:
                    group = [c for c in present if c.replica == r]
                    keep = None
                    why = ""
                    for c in group:
                        ok, reason = converged(c, unit)
                        if ok and keep is None:
                            keep = c
                        elif not why:
                            why = reason
                    if keep is not None:
                        step.actions.append(Action(UNCHANGED, service, node, r, container=keep.name,
                                                   container_id=keep.id))
                        if not ready_now(keep, unit):
                            step.wait_only = True
                    elif group:
                        old = group[0]
                        fields = changed_fields(old.config_parts, unit.config_parts) if why == "config changed" else ()
                        reason = f"changed: {', '.join(fields)}" if fields else why
                        step.actions.append(Action(RECREATE, service, node, r, reason=reason, container=old.name,
                                                   container_id=old.id, changed=fields))
                    else:
                        elsewhere = [n for n in where.get((service, r), []) if n != node]
                        reason = f"moved from {elsewhere[0]}" if elsewhere else "new"
                        step.actions.append(Action(CREATE, service, node, r, reason=reason))
                # Replicas the agent's apply removes on this node (not wanted here any more).
                for c in sorted(present, key=lambda c: c.replica):
                    if c.replica not in unit.replicas:
                        step.actions.append(Action(REMOVE, service, node, c.replica,
                                                   reason=_gone_reason(service, c.replica, node, wanted_on),
                                                   container=c.name, container_id=c.id))
                if not step.changes:
                    step.ingress = ingress_drift(unit, step, (ingress or {}).get(node, {}).get(service))
                steps.append(step)

    removals: list[Removal] = []
    orphans: dict[str, list[str]] = {}
    for node in node_order:
        services = sorted({c.service for c in observed.get(node, []) if not c.retired})
        for service in services:
            if (service, node) in units:
                continue
            present = sorted(by_key.get((service, node), []), key=lambda c: c.replica)
            if service in deploying:
                rm = Removal(node, service, sorted({c.replica for c in present}))
                for c in present:
                    rm.actions.append(Action(REMOVE, service, node, c.replica,
                                             reason=_gone_reason(service, c.replica, node, wanted_on),
                                             container=c.name, container_id=c.id))
                removals.append(rm)
            elif service not in known:
                if remove_orphans:
                    rm = Removal(node, service, None, orphan=True)
                    for c in present:
                        rm.actions.append(Action(REMOVE, service, node, c.replica, reason="orphan: not in the Compose file",
                                                 container=c.name, container_id=c.id, orphan=True))
                    removals.append(rm)
                else:
                    orphans.setdefault(service, []).append(node)
    warnings = [f"{service} runs on {', '.join(n)} but is not in the Compose file; it was left running "
                "(--remove-orphans removes it)" for service, n in sorted(orphans.items())]
    from orchestrator.core.rollout_plan import plan_rollout

    plan = Plan(project=project, environment=environment, waves=[list(w) for w in waves], steps=steps,
                removals=removals, orphans=orphans, nodes=node_order, warnings=warnings)
    plan.rollout = plan_rollout(plan, observed)
    return plan


def ingress_drift(unit: Any, step: Step, actual: Mapping[str, Any] | None) -> str:
    """Why a service's ingress on a node differs from what its kept containers need ("":
    it does not). Only for steps that change no container (a change syncs it anyway)."""
    from agent.wire.labels import server_name

    wanted = getattr(unit, "ingress", None)
    if wanted is None:
        return "the service has no ingress any more" if actual else ""
    if not actual:
        return "no ingress for the service on the node yet"
    if not actual.get("running", True):
        return "HAProxy is not running"
    args = wanted.agent_args()
    port = actual.get("port") or {}
    if (port.get("published"), port.get("target")) != (args["port"]["published"], args["port"]["target"]):
        return "ingress port changed"
    from agent.wire.ingress import Health

    if Health.from_dict(dict(actual.get("health") or {})) != Health.from_dict(args["health"]):
        return "ingress health check changed"
    if port.get("host_ip", "0.0.0.0") != args["port"]["host_ip"]:
        return "ingress address changed"
    # Host routes (agent.wire.tls.Route): compared in their parsed form, so defaults match.
    from agent.wire.tls import Route

    have = {k: v for k, v in (actual.get("route") or {}).items() if k != "certs"}  # certs: what the node holds
    if Route.parse(have or None) != Route.parse(args.get("route")):
        return "ingress host names or TLS changed"
    servers = sorted(server_name(unit.service, a.replica, a.container_id) for a in step.actions
                     if a.kind == UNCHANGED and a.container_id)
    if servers != sorted(actual.get("servers") or []):
        return "ingress servers differ from the containers"
    return ""


def _gone_reason(service: str, replica: int, node: str, wanted_on: Mapping[tuple[str, int], str]) -> str:
    target = wanted_on.get((service, replica))
    if target and target != node:
        return f"moved to {target}"
    return "scaled down"

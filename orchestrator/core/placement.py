"""Place service replicas on an environment's nodes. Pure: no I/O.

Rules, in order:
- constraints (Swarm syntax: `node.labels.role == web`, `node.hostname != prod-2`)
  filter the eligible nodes; none eligible is bad input;
- a replica that already runs on a node that is still eligible stays there
  (stability: a re-run moves nothing that need not move);
- a new replica goes to the eligible node with the fewest replicas of this service,
  then the environment's node order (spread). Other services' replicas are not
  counted, so a service without replicas runs on the first eligible node and services
  sharing a named volume (a database and its migration job) land together;
- `deploy.mode: global` runs one replica on every eligible node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.errors import InputError, Problem

_CONSTRAINT = re.compile(r"^\s*(node\.(?:labels\.[\w.\-]+|hostname|name|id|role))\s*(==|!=)\s*(\S.*?)\s*$")


@dataclass(frozen=True)
class Constraint:
    attribute: str  # node.labels.role, node.hostname
    equal: bool
    value: str

    def matches(self, node: "NodeInfo") -> bool:
        if self.attribute.startswith("node.labels."):
            actual = node.labels.get(self.attribute[len("node.labels."):])
        elif self.attribute == "node.role":
            actual = node.labels.get("role", "worker")
        else:  # hostname, name, id: orch's node name
            actual = node.name
        return (actual == self.value) if self.equal else (actual != self.value)

    def __str__(self) -> str:
        return f"{self.attribute} {'==' if self.equal else '!='} {self.value}"


def parse_constraint(text: str, *, file: str | None = None, line: int | None = None, key: str | None = None) -> Constraint:
    match = _CONSTRAINT.match(text)
    if not match:
        raise InputError(
            Problem(
                f"cannot read placement constraint {text!r}",
                file=file, line=line, key=key,
                fix="write `node.labels.KEY == VALUE` or `node.hostname != NAME` (== or !=).",
            )
        )
    attribute, op, value = match.groups()
    return Constraint(attribute, op == "==", value.strip("'\""))


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlacementRequest:
    service: str
    replicas: int = 1
    constraints: tuple[Constraint, ...] = ()
    global_mode: bool = False
    # where the request came from, for errors
    file: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class Slot:
    service: str
    replica: int  # 1-based, stable across deploys
    node: str


def place(
    requests: Sequence[PlacementRequest],
    nodes: Sequence[NodeInfo],
    existing: Iterable[Slot] = (),
) -> dict[str, list[Slot]]:
    """Slots per service, replicas numbered from 1, sorted by replica."""
    current: dict[str, dict[int, str]] = {}
    for slot in existing:
        current.setdefault(slot.service, {})[slot.replica] = slot.node
    order = {n.name: i for i, n in enumerate(nodes)}
    problems: list[Problem] = []
    result: dict[str, list[Slot]] = {}
    for req in requests:
        eligible = [n for n in nodes if all(c.matches(n) for c in req.constraints)]
        if not eligible:
            shown = " and ".join(str(c) for c in req.constraints)
            problems.append(
                Problem(
                    f"no node satisfies the placement constraints of service {req.service} ({shown})",
                    file=req.file, line=req.line, key=f"services.{req.service}.deploy.placement.constraints",
                    fix="label a node to match (labels: in the environment file) or relax the constraint.",
                )
            )
            continue
        names = [n.name for n in eligible]
        if req.global_mode:
            slots = [Slot(req.service, i + 1, name) for i, name in enumerate(names)]
        else:
            slots = _spread(req, names, current.get(req.service, {}), order)
        result[req.service] = slots
    if problems:
        raise InputError(problems)
    return result


def _spread(req, eligible, now: dict[int, str], order) -> list[Slot]:
    per_node = {name: 0 for name in eligible}
    kept: dict[int, str] = {}
    for replica in sorted(now):
        node = now[replica]
        if replica <= req.replicas and node in per_node:
            kept[replica] = node
            per_node[node] += 1
    slots = []
    for replica in range(1, req.replicas + 1):
        node = kept.get(replica)
        if node is None:
            node = min(eligible, key=lambda n: (per_node[n], order[n]))
            per_node[node] += 1
        slots.append(Slot(req.service, replica, node))
    return slots

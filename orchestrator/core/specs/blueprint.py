"""The deployment's model, pure: what `compile_blueprint` makes of a project (a `Blueprint`,
one `ServiceBlueprint` per service) and what `Blueprint.units` makes of it once the services
are placed: one `Unit` per (service, node), the ServiceSpec JSON sent to that node's agent,
its networks in the environment's service mesh (orchestrator.core.mesh: per-node subnets,
the node's mesh DNS and search domains) and the config hash (agent.wire.spec.config_hash)
that decides recreation; and the checks a placement must pass (host port clashes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import InputError, Problem


@dataclass(frozen=True)
class Unit:
    """One service on one node: the agent's `apply` request."""

    service: str
    node: str
    replicas: tuple[int, ...]
    config_hash: str
    wait: str  # running | healthy | completed
    restart: str
    spec: dict  # agent ServiceSpec JSON
    cross_node: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (dependency, the other nodes it runs on)
    policy: Any = None  # orchestrator.core.rollout.UpdatePolicy
    ingress: Any = None  # orchestrator.core.rollout.IngressSpec

    @property
    def image(self) -> str:
        return self.spec["container"]["image"]

    @property
    def config_parts(self) -> dict[str, str]:
        return self.spec.get("config_parts") or {}


@dataclass
class ServiceBlueprint:
    name: str
    image: str
    container: dict  # ContainerSpec JSON, before cross-node extra_hosts
    networks: dict  # NetworkDef JSON by Compose name (only those the service joins)
    volumes: dict  # VolumeDef JSON by Compose name (only those it mounts)
    restart: str
    wait: str
    dependencies: dict  # name -> compose DependsOn, only services being deployed
    published: list[tuple[str, int, str, int]]  # (host_ip, published, protocol, target)
    pull: str
    request: Any  # placement.PlacementRequest
    healthcheck: bool  # the Compose file defines one (the image may have its own)
    policy: Any = None  # orchestrator.core.rollout.UpdatePolicy
    ingress: Any = None  # orchestrator.core.rollout.IngressSpec: the node's HAProxy owns that port


@dataclass
class Blueprint:
    project: str
    env: str
    services: dict[str, ServiceBlueprint]  # the services being deployed
    project_services: set[str]  # every enabled service of the project (for orphans)
    waves: list[list[str]]
    warnings: list[str] = field(default_factory=list)

    def requests(self) -> list:
        return [self.services[name].request for wave in self.waves for name in wave]

    def place(self, nodes: Sequence[Any], existing: Iterable[Any] = ()) -> dict[str, list]:
        """Slots per service: each service placed on its own (see place_services)."""
        return place_services(self.requests(), nodes, existing)

    def dependents(self, name: str) -> list[str]:
        return sorted(s.name for s in self.services.values() if name in s.dependencies)

    def units(self, slots: Mapping[str, Sequence[Any]], node_order: Sequence[str] = (),
              mesh: Any = None, release: str = "") -> tuple[dict[tuple[str, str], Unit], list[str]]:
        """One Unit per (service, node) from placement slots; (units, warnings).

        `release` is the id of the release being deployed, in every spec (the agent labels the
        containers io.orch.release with it; not part of the config hash); "" for a dry run.

        `mesh` (orchestrator.core.mesh.MeshLayout, or None when the environment has no mesh)
        puts every network of the project into the environment's service mesh: per node a
        subnet of it, and every replica resolves its networks' names there (dns, dns_search).
        Without a mesh, a dependency on another node is a warning: it cannot be reached.
        """
        from agent.wire.spec import config_digest

        order = {n: i for i, n in enumerate(node_order)}
        where: dict[str, dict[str, list[int]]] = {}
        for name, service_slots in slots.items():
            for slot in service_slots:
                where.setdefault(name, {}).setdefault(slot.node, []).append(slot.replica)
        check_port_conflicts(self, where)
        units: dict[tuple[str, str], Unit] = {}
        digests: dict[str, tuple[str, dict[str, str]]] = {}
        warnings: list[str] = _shared_volume_warnings(self, where)
        for wave in self.waves:
            for name in wave:
                bp = self.services[name]
                nodes = sorted(where.get(name, {}), key=lambda n: (order.get(n, len(order)), n))
                for node in nodes:
                    container = dict(bp.container)
                    networks = bp.networks
                    cross = []
                    for dep in sorted(bp.dependencies):
                        dep_nodes = where.get(dep, {})
                        if dep_nodes and node not in dep_nodes:
                            cross.append((dep, sorted(dep_nodes, key=lambda n: order.get(n, len(order)))))
                    if mesh is not None:
                        networks = {k: (dict(v, **mesh.network(node, k)) if k in mesh.net_slots else v)
                                    for k, v in bp.networks.items()}
                        attached = [a["name"] for a in container.get("networks") or []]
                        container["dns"] = [mesh.address(node)]
                        container["dns_search"] = mesh.domains(attached)
                        # One lookup round: a bare name ("cache", no dot) is tried in the
                        # networks' search domains first, which the node's dnsmasq answers
                        # with every live replica, its own node's first.
                        container["dns_opt"] = ["ndots:1"]
                    else:
                        warnings.extend(_no_mesh_warnings(name, node, cross))
                    spec = {
                        "project": self.project,
                        "service": name,
                        "env": self.env,
                        "release": release,
                        "replicas": sorted(where[name][node]),
                        "container": container,
                        "networks": networks,
                        "volumes": bp.volumes,
                        "pull": bp.pull,
                    }
                    # Without a mesh a service's container is the same on every node: hashed once.
                    digest = digests.get(name) if mesh is None else None
                    if digest is None:
                        digest = digests[name] = config_digest(container)
                    spec["config_hash"], spec["config_parts"] = digest[0], dict(digest[1])
                    units[(name, node)] = Unit(
                        service=name, node=node, replicas=tuple(spec["replicas"]), config_hash=spec["config_hash"],
                        wait=bp.wait, restart=bp.restart, spec=spec,
                        cross_node=tuple((dep, tuple(ns)) for dep, ns in cross),
                        policy=bp.policy, ingress=bp.ingress,
                    )
        return units, _dedupe(warnings)


def place_services(requests: Sequence[Any], nodes: Sequence[Any], existing: Iterable[Any] = ()) -> dict[str, list]:
    """orchestrator.core.placement.place: each service spread over its eligible nodes on its
    own, stable (existing replicas stay while their node is still eligible)."""
    from orchestrator.core.placement import place

    return place(requests, nodes, existing)


def _shared_volume_warnings(bp: "Blueprint", where: Mapping[str, Mapping[str, list[int]]]) -> list[str]:
    users: dict[str, set[str]] = {}
    for name, svc in bp.services.items():
        for vol, decl in svc.volumes.items():
            if not decl.get("external"):
                users.setdefault(vol, set()).add(name)
    out = []
    for vol, names in sorted(users.items()):
        nodes = {n for name in names for n in where.get(name, {})}
        if len(names) > 1 and len(nodes) > 1:
            out.append(f"services {', '.join(sorted(names))} share volume {vol} but run on different nodes "
                       f"({', '.join(sorted(nodes))}): each node has its own copy of the volume")
    return out


def _no_mesh_warnings(name: str, node: str, cross: list) -> list[str]:
    return [f"{name} on {node} depends on {dep}, which runs only on {', '.join(nodes)}, and the environment's "
            f"mesh is off (mesh: {{mode: off}}): '{dep}' does not resolve there. Turn the mesh on, or "
            f"constrain both to one node." for dep, nodes in cross]


def check_port_conflicts(bp: Blueprint, where: Mapping[str, Mapping[str, list[int]]]) -> None:
    """Two containers on one node cannot publish the same host port."""
    problems = []
    for node in sorted({n for per in where.values() for n in per}):
        taken: dict[tuple[str, int, str], str] = {}
        for name in sorted(where):
            replicas = where[name].get(node, [])
            if not replicas or name not in bp.services:
                continue
            for host_ip, port, proto, _ in bp.services[name].published:
                key = (host_ip or "0.0.0.0", port, proto)
                if len(replicas) > 1:
                    problems.append(Problem(
                        f"service {name} publishes host port {port}/{proto} but {len(replicas)} of its replicas "
                        f"are placed on node {node}", key=f"services.{name}.ports",
                        fix="drop the host port (let the engine pick one), add nodes, or lower replicas"))
                    break
                if key in taken:
                    problems.append(Problem(
                        f"services {taken[key]} and {name} both publish host port {port}/{proto} on node {node}",
                        key=f"services.{name}.ports", fix="publish a different host port for one of them"))
                taken[key] = name
    if problems:
        raise InputError(problems)



def _dedupe(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)


"""The environment's service mesh, planned (pure): settings from the environment file,
which slot each node and each Compose network gets, and what each node is told.

The address plan and the typed node request live in agent.wire.mesh (shared with the
agent); docs/networking.md explains the design. Slots are stable: a node keeps the slot
its agent reports, a network keeps the slot its existing Docker networks carry, so adding
or removing a node changes nothing for the others but their peer lists.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.wire.mesh import (DEFAULT_CIDR, DEFAULT_MTU, DEFAULT_PORT, MAX_NET_SLOT, MODES, NODE_PREFIX, MeshConfig,
                             MeshPeer,
                             MeshState, max_nodes, net_gateway, net_subnet, node_address, search_domain)
from orchestrator.errors import InputError, Problem

MESH_KEYS = {"mode", "cidr", "port", "mtu"}


@dataclass(frozen=True)
class MeshSettings:
    mode: str = "auto"  # auto: on when the environment has 2+ nodes; on; off
    cidr: str = DEFAULT_CIDR
    port: int = DEFAULT_PORT  # UDP, on every node
    mtu: int = DEFAULT_MTU

    def enabled(self, node_count: int) -> bool:
        return self.mode == "on" or (self.mode == "auto" and node_count > 1)


def parse_mesh(r: Any, doc: Any, node_count: int) -> MeshSettings:
    """`mesh:` of an environment file (r: environments._Reader, collecting problems)."""
    raw = r.mapping(doc, "mesh", "mesh", MESH_KEYS)
    mode = r.typed(raw, "mode", "mesh.mode", (str,), "auto, on or off", "auto")
    if mode not in MODES:
        r.problem(raw, "mode", "mesh.mode", f"'{mode}' is not a mesh mode",
                  fix="write mode: auto (on with 2+ nodes), on or off.")
        mode = "auto"
    cidr = r.typed(raw, "cidr", "mesh.cidr", (str,), "an IPv4 network like 10.208.0.0/12", DEFAULT_CIDR)
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
        room = max_nodes(str(net)) if net.prefixlen <= NODE_PREFIX else 0
        if room < max(2, node_count):
            r.problem(raw, "cidr", "mesh.cidr", f"{cidr} has room for {room} node(s), "
                      f"the environment lists {node_count}",
                      fix="use a larger range: each node takes a /19 (e.g. 10.208.0.0/12 fits 128 nodes).")
    except ValueError as exc:
        r.problem(raw, "cidr", "mesh.cidr", f"'{cidr}' is not an IPv4 network ({exc})",
                  fix="write e.g. cidr: 10.208.0.0/12 (no host bits set).")
        cidr = DEFAULT_CIDR
    port = r.typed(raw, "port", "mesh.port", (int,), "a UDP port number", DEFAULT_PORT)
    if not 0 < port < 65536:
        r.problem(raw, "port", "mesh.port", f"port {port} is out of range", fix="use 1-65535 (default 51820).")
        port = DEFAULT_PORT
    mtu = r.typed(raw, "mtu", "mesh.mtu", (int,), "a number of bytes", DEFAULT_MTU)
    if not 1280 <= mtu <= 9000:
        r.problem(raw, "mtu", "mesh.mtu", f"MTU {mtu} is out of range",
                  fix="use 1280-9000: the nodes' network MTU minus 80 (default 1420).")
        mtu = DEFAULT_MTU
    return MeshSettings(mode=mode, cidr=str(cidr), port=port, mtu=mtu)


def endpoint_of(node: Any, port: int) -> str:
    """Where the other nodes send this node's WireGuard packets: `endpoint:` or host:port."""
    if getattr(node, "endpoint", None):
        return node.endpoint
    host = node.host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


ENDPOINT_FIX = "write endpoint: HOST:PORT (e.g. 203.0.113.7:51820, or [2001:db8::7]:51820) where the " \
    "other nodes reach this node's WireGuard port."


def check_endpoint(r: Any, raw: Any, path: str) -> str | None:
    value = r.typed(raw, "endpoint", f"{path}.endpoint", (str,), "HOST:PORT")
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    ok = bool(sep) and port.isdigit() and 0 < int(port) < 65536 and bool(host.strip("[]")) \
        and all(c.isalnum() or c in ".-:[]" for c in host) and (":" not in host or host.startswith("["))
    if not ok:
        r.problem(raw, "endpoint", f"{path}.endpoint", f"'{value}' is not HOST:PORT", fix=ENDPOINT_FIX)
        return None
    return value


@dataclass(frozen=True)
class MeshLayout:
    """Slots of one deploy: node -> slot, this project's Compose network -> k."""

    settings: MeshSettings
    node_slots: dict[str, int]
    net_slots: dict[str, int]

    def address(self, node: str) -> str:
        return node_address(self.settings.cidr, self.node_slots[node])

    def network(self, node: str, name: str) -> dict[str, Any]:
        """The NetworkDef fields that put Compose network `name` into the mesh on `node`."""
        k, slot = self.net_slots[name], self.node_slots[node]
        return {"mesh_slot": k, "subnet": str(net_subnet(self.settings.cidr, slot, k)),
                "gateway": net_gateway(self.settings.cidr, slot, k), "mtu": self.settings.mtu}

    def domains(self, names: Iterable[str]) -> list[str]:
        return [search_domain(self.net_slots[n]) for n in names if n in self.net_slots]


def _states(observed: Mapping[str, Any]) -> dict[str, MeshState]:
    return {node: s if isinstance(s, MeshState) else MeshState.from_dict(s) for node, s in observed.items()}


def plan_layout(settings: MeshSettings, node_order: list[str], project: str, networks: Iterable[str],
                observed: Mapping[str, Any], where: str = "") -> MeshLayout:
    """Stable slots for the environment's nodes and the project's (non-external) networks."""
    states = _states(observed)
    node_slots: dict[str, int] = {}
    for node in node_order:
        cfg = states.get(node, MeshState(env="")).config
        slot = cfg.get("slot")
        if isinstance(slot, int) and cfg.get("cidr") == settings.cidr and slot not in node_slots.values() \
                and slot < max_nodes(settings.cidr):
            node_slots[node] = slot
    free = (s for s in range(max_nodes(settings.cidr)) if s not in node_slots.values())
    for node in node_order:
        if node not in node_slots:
            node_slots[node] = next(free)
    taken: dict[str, int] = {}
    for s in states.values():
        for key, k in s.net_slots.items():
            taken.setdefault(key, k)
    net_slots: dict[str, int] = {}
    used = set(taken.values())
    for name in sorted(set(networks)):
        key = f"{project}/{name}"
        if key in taken:
            net_slots[name] = taken[key]
            continue
        k = next((k for k in range(1, MAX_NET_SLOT + 1) if k not in used), None)
        if k is None:
            raise InputError(Problem(
                f"the mesh of this environment has no room for network '{name}' of project {project}: "
                f"{MAX_NET_SLOT} Compose networks are in use by its projects", file=where, key="networks",
                fix="remove projects that are no longer needed (orch down), or merge networks"))
        used.add(k)
        net_slots[name] = k
    return MeshLayout(settings=settings, node_slots=node_slots, net_slots=net_slots)


def refuse_unmeshed(project: str, env: str, observed: Mapping[str, Any]) -> None:
    """A network of this project made before the mesh cannot be re-addressed in place
    (Docker has no such operation): say so before anything changes."""
    from orchestrator.errors import OrchError

    found = sorted({(node, key.split("/", 1)[1]) for node, s in _states(observed).items() for key in s.unmeshed
                    if key.split("/", 1)[0] == project})
    if found:
        where = ", ".join(f"{net} on {node}" for node, net in found)
        raise OrchError(
            f"project {project} has networks made before the environment's mesh ({where}); their replicas "
            f"could not be reached from other nodes, and Docker cannot re-address a network in place. "
            f"Nothing was changed.",
            fix=f"run `orch down -p {project} --env {env}` (volumes are kept) and then `orch up` again: the "
                f"networks are made again inside the mesh. Or keep the old behaviour with `mesh: {{mode: off}}` "
                f"in the environment file")


def node_configs(env: str, layout: MeshLayout, nodes: list[Any], keys: Mapping[str, str]) -> dict[str, MeshConfig]:
    """What each node is told: its slot and every other node as a peer (with its key)."""
    s = layout.settings
    peers = {n.name: MeshPeer(node=n.name, slot=layout.node_slots[n.name], public_key=keys[n.name],
                              endpoint=endpoint_of(n, s.port)) for n in nodes if keys.get(n.name)}
    return {n.name: MeshConfig(env=env, node=n.name, slot=layout.node_slots[n.name], cidr=s.cidr, port=s.port,
                               mtu=s.mtu, peers=sorted((p for name, p in peers.items() if name != n.name),
                                                       key=lambda p: p.slot))
            for n in nodes}


@dataclass(frozen=True)
class MeshAction:
    node: str
    join: bool  # the node has no key yet: mesh_join first
    reasons: tuple[str, ...] = field(default_factory=tuple)


def mesh_actions(layout: MeshLayout, nodes: list[Any], observed: Mapping[str, Any], env: str) -> list[MeshAction]:
    """Nodes whose mesh differs from the plan (to `mesh_apply`), and why. A no-op deploy
    has none: every node healthy with exactly its planned config."""
    states = _states(observed)
    keys = {n: s.public_key for n, s in states.items() if s.public_key}
    want = node_configs(env, layout, nodes, keys)
    out = []
    for n in nodes:
        st = states.get(n.name, MeshState(env=env))
        reasons = []
        if not st.public_key:
            reasons.append("joins the mesh")
        elif any(not keys.get(o.name) for o in nodes if o.name != n.name):
            reasons.append("a new peer")
        elif st.config != want[n.name].to_dict():
            reasons.append("peers or address change")
        elif not st.healthy:
            down = sorted(k for k, v in st.running.items() if not v) or ["not running"]
            reasons.append("restart " + ", ".join(down))
        elif st.outdated:
            reasons.append("update " + ", ".join(sorted(st.outdated)))
        if reasons:
            out.append(MeshAction(node=n.name, join=not st.public_key, reasons=tuple(reasons)))
    return out

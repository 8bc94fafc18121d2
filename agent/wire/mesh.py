"""The service mesh's contract: address plan, names and the typed mesh requests.

An environment's nodes form one WireGuard mesh (docs/networking.md). Its address range
(`mesh.cidr`, default 10.208.0.0/12) is cut into one block per node (a /19: the node's
"slot") and, inside every block, one /24 per Compose network of the environment's
projects (the network's "slot" k, 1..31, the same on every node). So:

    node slot s          block  cidr + s * 2^13            (routed to that node over WireGuard)
    node's mesh address  block + 1                         (on its WireGuard interface; DNS there)
    network k on node s  block + k * 256, a /24            (that node's Docker bridge of the network)

Because k sits in the same bits of every node's block, "the same Compose network" is a
bit mask over the whole range, which the node's firewall matches without knowing the
other nodes (agent.mesh.firewall). Stdlib only, no I/O: the controller imports it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List

from agent.wire.protocol import (
    BadRequest,
    check_int,
    check_keys,
    check_name,
    check_str,
    require,
)

DEFAULT_CIDR = "10.208.0.0/12"
NODE_PREFIX = 19  # one block per node
NET_PREFIX = 24  # one subnet per Compose network on a node
MAX_NET_SLOT = (1 << (NET_PREFIX - NODE_PREFIX)) - 1  # 31 networks per environment
DEFAULT_PORT = 51820  # UDP, WireGuard
RECORDS_PORT = 51820  # TCP on the node's mesh address: the name records peers pull
DEFAULT_MTU = 1420  # 1500 minus WireGuard's 80 bytes (IPv6 outer header)
DOMAIN = "orch.internal"
MODES = ("auto", "on", "off")
KEY_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw480]=")  # a WireGuard (curve25519) public key
ENDPOINT_RE = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")


def check_cidr(value: Any, what: str) -> ipaddress.IPv4Network:
    text = check_str(value, what)
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise BadRequest("%s %r is not an IPv4 network (%s)" % (what, text, exc))
    if net.prefixlen > NODE_PREFIX - 1:
        raise BadRequest("%s %s is too small: it needs room for at least 2 nodes (/%d or larger)"
                         % (what, text, NODE_PREFIX - 1))
    return net


def max_nodes(cidr: str) -> int:
    return 1 << (NODE_PREFIX - ipaddress.IPv4Network(cidr).prefixlen)


def node_block(cidr: str, slot: int) -> ipaddress.IPv4Network:
    net = ipaddress.IPv4Network(cidr)
    return ipaddress.IPv4Network((int(net.network_address) + (slot << (32 - NODE_PREFIX)), NODE_PREFIX))


def node_address(cidr: str, slot: int) -> str:
    return str(node_block(cidr, slot).network_address + 1)


def net_subnet(cidr: str, slot: int, k: int) -> ipaddress.IPv4Network:
    base = int(node_block(cidr, slot).network_address) + (k << (32 - NET_PREFIX))
    return ipaddress.IPv4Network((base, NET_PREFIX))


def net_gateway(cidr: str, slot: int, k: int) -> str:
    return str(net_subnet(cidr, slot, k).network_address + 1)


def same_network_match(cidr: str, k: int) -> str:
    """iptables source/destination: every node's subnet of network k ("addr/mask", the
    mask covering the range's prefix and the network bits, not the node bits)."""
    net = ipaddress.IPv4Network(cidr)
    range_mask = int(net.netmask)
    net_bits = ((1 << (NET_PREFIX - NODE_PREFIX)) - 1) << (32 - NET_PREFIX)
    mask = range_mask | net_bits
    addr = int(net.network_address) | (k << (32 - NET_PREFIX))
    return "%s/%s" % (ipaddress.IPv4Address(addr), ipaddress.IPv4Address(mask))


def search_domain(k: int) -> str:
    """Names of network k's replicas live under this domain (a container's `search`)."""
    return "n%d.%s" % (k, DOMAIN)


def interface_name(env: str) -> str:
    """The environment's WireGuard interface (<= 15 characters, Linux's limit)."""
    if re.fullmatch(r"[a-z0-9][a-z0-9-]{0,9}", env):
        return "orch-" + env
    return "orch-" + hashlib.sha256(env.encode()).hexdigest()[:10]


def check_key(value: Any, what: str) -> str:
    text = check_str(value, what)
    if not KEY_RE.fullmatch(text):
        raise BadRequest("%s is not a WireGuard public key" % what)
    return text


@dataclass(frozen=True)
class MeshPeer:
    node: str
    slot: int
    public_key: str
    endpoint: str  # host:port (or [v6]:port) this node is reached at

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "MeshPeer":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("node", "slot", "public_key", "endpoint"), where)
        endpoint = check_str(require(d, "endpoint", where), where + ".endpoint")
        if not ENDPOINT_RE.fullmatch(endpoint) or ":" not in endpoint:
            raise BadRequest("%s.endpoint %r must be host:port" % (where, endpoint))
        return cls(node=check_name(require(d, "node", where), where + ".node"),
                   slot=check_int(require(d, "slot", where), where + ".slot", 0, 4095),
                   public_key=check_key(require(d, "public_key", where), where + ".public_key"),
                   endpoint=endpoint)

    def to_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "slot": self.slot, "public_key": self.public_key, "endpoint": self.endpoint}


@dataclass(frozen=True)
class MeshConfig:
    """What one node of the mesh is told (`mesh_apply`): its slot and its peers."""

    env: str
    node: str
    slot: int
    cidr: str
    port: int
    mtu: int
    peers: List[MeshPeer] = field(default_factory=list)

    @property
    def interface(self) -> str:
        return interface_name(self.env)

    @property
    def address(self) -> str:
        return node_address(self.cidr, self.slot)

    @classmethod
    def from_dict(cls, d: Any, where: str = "mesh") -> "MeshConfig":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("env", "node", "slot", "cidr", "port", "mtu", "peers"), where)
        cidr = check_cidr(require(d, "cidr", where), where + ".cidr")
        slot = check_int(require(d, "slot", where), where + ".slot", 0, max_nodes(str(cidr)) - 1)
        peers_raw = d.get("peers") or []
        if not isinstance(peers_raw, list) or len(peers_raw) > 1000:
            raise BadRequest("%s.peers must be a list of at most 1000 peers" % where)
        peers = [MeshPeer.from_dict(p, "%s.peers[%d]" % (where, i)) for i, p in enumerate(peers_raw)]
        slots = [p.slot for p in peers] + [slot]
        if len(set(slots)) != len(slots):
            raise BadRequest("%s: two nodes share a slot" % where)
        return cls(env=check_name(require(d, "env", where), where + ".env"),
                   node=check_name(require(d, "node", where), where + ".node"),
                   slot=slot, cidr=str(cidr),
                   port=check_int(d.get("port", DEFAULT_PORT), where + ".port", 1, 65535),
                   mtu=check_int(d.get("mtu", DEFAULT_MTU), where + ".mtu", 1280, 9000),
                   peers=sorted(peers, key=lambda p: p.slot))

    def to_dict(self) -> Dict[str, Any]:
        return {"env": self.env, "node": self.node, "slot": self.slot, "cidr": self.cidr, "port": self.port,
                "mtu": self.mtu, "peers": [p.to_dict() for p in self.peers]}


@dataclass(frozen=True)
class MeshState:
    """A node's mesh as its agent sees it (part of `state`, and `mesh_status`)."""

    env: str
    public_key: str = ""  # "" before the node joined (no key made yet)
    config: Dict[str, Any] = field(default_factory=dict)  # the MeshConfig last applied, as a dict
    net_slots: Dict[str, int] = field(default_factory=dict)  # "project/network" -> k, from the engine
    running: Dict[str, bool] = field(default_factory=dict)  # link, dns, meshd -> up?
    peers: List[Dict[str, Any]] = field(default_factory=list)  # node, endpoint, handshake_age, reachable
    problems: List[str] = field(default_factory=list)  # what is missing on the node, with the fix
    unmeshed: List[str] = field(default_factory=list)  # "project/network" made before the mesh
    outdated: List[str] = field(default_factory=list)  # parts running from another orch's code or arguments

    def to_dict(self) -> Dict[str, Any]:
        return {"env": self.env, "public_key": self.public_key, "config": dict(self.config),
                "net_slots": dict(self.net_slots), "running": dict(self.running), "peers": list(self.peers),
                "problems": list(self.problems), "unmeshed": list(self.unmeshed), "outdated": list(self.outdated)}

    @classmethod
    def from_dict(cls, d: Any) -> "MeshState":
        d = d if isinstance(d, dict) else {}
        return cls(env=str(d.get("env") or ""), public_key=str(d.get("public_key") or ""),
                   config=dict(d.get("config") or {}),
                   net_slots={str(k): int(v) for k, v in (d.get("net_slots") or {}).items()},
                   running={str(k): bool(v) for k, v in (d.get("running") or {}).items()},
                   peers=list(d.get("peers") or []), problems=[str(p) for p in d.get("problems") or []],
                   unmeshed=[str(p) for p in d.get("unmeshed") or []],
                   outdated=[str(p) for p in d.get("outdated") or []])

    @property
    def healthy(self) -> bool:
        return bool(self.public_key) and bool(self.running) and all(self.running.values())

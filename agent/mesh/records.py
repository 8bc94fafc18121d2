"""Name records: which names of which Compose network resolve to which replica address.

Built from the engine's own JSON (pure functions, so the daemon and the tests share
them). A replica is a record while it runs and is not unhealthy or still starting; its
names are its service name and its network aliases (as on one host), under the network's
search domain (agent.wire.mesh.search_domain).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from agent.wire import labels as L
from agent.wire.mesh import search_domain

MESH_SLOT = L.PREFIX + ".mesh.slot"
MESH_INTERNAL = L.PREFIX + ".mesh.internal"
NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,62})")


@dataclass(frozen=True)
class MeshNet:
    name: str  # engine name
    k: int
    bridge: str
    internal: bool
    project: str
    compose_name: str


@dataclass(frozen=True)
class Record:
    k: int
    ip: str
    names: Tuple[str, ...]

    def to_dict(self) -> Dict[str, Any]:
        return {"k": self.k, "ip": self.ip, "names": list(self.names)}

    @classmethod
    def parse(cls, d: Any) -> Optional["Record"]:
        """A peer's record, or None if malformed (a peer is not trusted to be well-formed)."""
        try:
            k, ip, names = int(d["k"]), str(d["ip"]), [str(n) for n in d["names"]][:64]
        except (KeyError, TypeError, ValueError):
            return None
        if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", ip) or not 0 < k < 4096:
            return None
        return cls(k, ip, tuple(n for n in names if NAME_RE.fullmatch(n)))


def mesh_networks(networks: Iterable[Dict[str, Any]], env: str) -> Dict[str, MeshNet]:
    """Engine networks of this environment that are part of the mesh, by engine name."""
    out = {}
    for n in networks:
        labels = n.get("Labels") or {}
        if labels.get(L.ENV) != env or not str(labels.get(MESH_SLOT, "")).isdigit():
            continue
        bridge = (n.get("Options") or {}).get("com.docker.network.bridge.name") or "br-" + str(n.get("Id", ""))[:12]
        out[n["Name"]] = MeshNet(name=n["Name"], k=int(labels[MESH_SLOT]), bridge=bridge,
                                 internal=labels.get(MESH_INTERNAL) == "true",
                                 project=labels.get(L.PROJECT, ""), compose_name=labels.get(L.NAME, ""))
    return out


def serving(container: Dict[str, Any]) -> bool:
    """Running, and not unhealthy or still starting (list output: State and Status)."""
    if container.get("State") != "running":
        return False
    status = str(container.get("Status") or "")
    return "(unhealthy)" not in status and "(health: starting)" not in status


def local_records(containers: Iterable[Dict[str, Any]], nets: Dict[str, MeshNet],
                  aliases: Dict[Tuple[str, str], List[str]]) -> List[Record]:
    """Records of this node's serving replicas. `aliases`: (container id, network) -> the
    aliases the engine holds for it (from inspect; the list output has none)."""
    out = []
    for c in containers:
        if not serving(c):
            continue
        labels = c.get("Labels") or {}
        service = labels.get(L.SERVICE, "")
        if not service or L.is_retired(((c.get("Names") or ["/"])[0]).lstrip("/")):
            continue
        for net_name, ep in sorted(((c.get("NetworkSettings") or {}).get("Networks") or {}).items()):
            net = nets.get(net_name)
            ip = (ep or {}).get("IPAddress") or ""
            if net is None or not ip:
                continue
            short = str(c.get("Id", ""))[:12]
            names = {service} | {a for a in aliases.get((c.get("Id", ""), net_name), []) if a != short}
            out.append(Record(net.k, ip, tuple(sorted(n for n in names if NAME_RE.fullmatch(n)))))
    return sorted(out, key=lambda r: (r.k, r.ip))


def hosts_text(local: List[Record], remote: List[Record]) -> str:
    """dnsmasq hosts file: local replicas first (dnsmasq answers in file order)."""
    lines = ["# written by the orch mesh daemon; local replicas first"]
    for r in list(local) + sorted(remote, key=lambda r: (r.k, r.ip)):
        for name in r.names:
            lines.append("%s %s.%s" % (r.ip, name, search_domain(r.k)))
    return "\n".join(lines) + "\n"

"""The ingress model: what the controller asks of a node's ingress (agent.ingress runs
HAProxy) and what a node reports back, and the ingress_* requests parsed and validated.
Pure: stdlib only, no I/O, Python 3.9 compatible.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from agent.wire.protocol import (
    BadRequest,
    check_container_name,
    check_int,
    check_keys,
    check_name,
    check_number,
    check_project,
    check_str,
    require,
)
from agent.wire.tls import Route

INGRESS = "ingress"  # error kind: HAProxy itself failed (config refused, start/reload, socket)
PROTOCOLS = ("http",)
DEFAULT_SYNC_TIMEOUT = 60.0
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_REMOVE_DRAIN = 10.0  # servers dropped by a sync while still in rotation
SERVER_STATES = ("ready", "warming", "drain", "maint")
ROLLOUT_DRAIN_TIMEOUT = 10.0  # a rollout's drain of an old server (IngressSettings)
ROLLOUT_SYNC_TIMEOUT = 60.0  # a rollout's wait until its new servers are UP (IngressSettings)

# What may appear in a health-check path: no spaces, quotes, backslashes, '#' or '$'
# (the config parser would read them as separators, quoting, comments or variables).
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~%!&()*+,;=:@/?-]{0,255}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::[0-9]{1,5})?$")


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Health:
    path: str = "/"
    interval: float = 1.0  # seconds between checks
    timeout: float = 2.0  # seconds a check may take
    rise: int = 2  # consecutive passes before a server is UP
    fall: int = 2  # consecutive failures before it is DOWN
    host: str = "localhost"  # Host header of the check request

    @classmethod
    def from_dict(cls, d: Any, where: str = "health") -> "Health":
        if isinstance(d, str):  # shorthand: just the path
            d = {"path": d}
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object {path, interval, ...}" % where)
        check_keys(d, ("path", "interval", "timeout", "rise", "fall", "host"), where)
        path = check_str(d.get("path", "/"), where + ".path")
        if not _PATH_RE.fullmatch(path):
            raise BadRequest("%s.path %r must start with '/' and contain no spaces, quotes, '#', '$' or '\\'"
                             % (where, path))
        host = check_str(d.get("host", "localhost"), where + ".host")
        if not _HOST_RE.fullmatch(host):
            raise BadRequest("%s.host %r is not a host name" % (where, host))
        interval = check_number(d.get("interval", 1.0), where + ".interval", 0.1)
        timeout = check_number(d.get("timeout", 2.0), where + ".timeout", 0.1)
        for value, what in ((interval, "interval"), (timeout, "timeout")):
            if value > 300:
                raise BadRequest("%s.%s must be at most 300 seconds" % (where, what))
        return cls(
            path=path,
            interval=interval,
            timeout=timeout,
            rise=check_int(d.get("rise", 2), where + ".rise", 1, 100),
            fall=check_int(d.get("fall", 2), where + ".fall", 1, 100),
            host=host,
        )

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "interval": self.interval, "timeout": self.timeout, "rise": self.rise,
                "fall": self.fall, "host": self.host}


@dataclass(frozen=True)
class Server:
    name: str  # the HAProxy server name (stable across renames of the container)
    container: str  # the Docker container name (to look its address up, and to show)
    address: str = ""  # IPv4 address; "" until resolved
    state: str = "ready"  # ready | warming (added, not yet seen healthy) | drain | maint

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "container": self.container, "address": self.address, "state": self.state}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Server":
        state = d.get("state", "ready")
        return cls(name=d["name"], container=d.get("container", ""), address=d.get("address", ""),
                   state=state if state in SERVER_STATES else "maint")


@dataclass(frozen=True)
class ServiceIngress:
    """One ingress-marked service on this node: a frontend on its port (none when
    `published` is 0: a service reached by host name only), a backend of servers, and
    its host names on the node's shared HTTP/HTTPS ports (`route`, agent.edge)."""

    project: str
    service: str
    published: int
    target: int
    health: Health = field(default_factory=Health)
    env: str = ""
    host_ip: str = "0.0.0.0"
    protocol: str = "http"
    servers: Tuple[Server, ...] = ()
    route: Route = field(default_factory=Route)

    @property
    def key(self) -> str:
        return service_key(self.project, self.service)

    @property
    def frontend(self) -> str:
        # Projects have no '.', so "<project>.<service>" never means two things.
        return "fe.%s.%s" % (self.project, self.service)

    @property
    def backend(self) -> str:
        return "be.%s.%s" % (self.project, self.service)

    def shape(self) -> Tuple[Any, ...]:
        """What only a reload can change (servers change at run time)."""
        return (self.published, self.target, self.host_ip, self.protocol, self.health, self.route)

    def server(self, name: str) -> Optional[Server]:
        for s in self.servers:
            if s.name == name:
                return s
        return None

    def with_servers(self, servers: List[Server]) -> "ServiceIngress":
        return replace(self, servers=tuple(servers))

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "project": self.project, "service": self.service, "env": self.env,
            "port": {"published": self.published, "target": self.target, "protocol": self.protocol,
                     "host_ip": self.host_ip},
            "health": self.health.to_dict(),
            "servers": [s.to_dict() for s in self.servers],
        }
        if self.route.routed:
            out["route"] = self.route.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ServiceIngress":
        port = d.get("port") or {}
        return cls(
            project=d["project"], service=d["service"], env=d.get("env", ""),
            published=int(port["published"]), target=int(port["target"]),
            protocol=port.get("protocol", "http"), host_ip=port.get("host_ip", "0.0.0.0"),
            health=Health.from_dict(d.get("health") or {}),
            servers=tuple(Server.from_dict(s) for s in d.get("servers") or []),
            route=Route.parse(d.get("route")),
        )


def service_key(project: str, service: str) -> str:
    return "%s/%s" % (project, service)



# ----------------------------------------------------------------------------- validation


def check_ipv4(value: Any, what: str) -> str:
    check_str(value, what)
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        raise BadRequest("%s %r is not an IPv4 address" % (what, value))
    if str(addr) != value:
        raise BadRequest("%s %r must be written canonically (%s)" % (what, value, addr))
    return value


def check_server_ip(value: Any, what: str) -> str:
    check_ipv4(value, what)
    addr = ipaddress.IPv4Address(value)
    if addr.is_unspecified or addr.is_multicast or value == "255.255.255.255":
        raise BadRequest("%s %r cannot be a server address" % (what, value))
    return value


@dataclass(frozen=True)
class Backend:
    name: str
    container: str
    address: str = ""


@dataclass(frozen=True)
class SyncRequest:
    service: ServiceIngress  # servers without addresses unless given
    backends: Tuple[Backend, ...]
    network: str = ""
    timeout: float = DEFAULT_SYNC_TIMEOUT
    drain_timeout: float = DEFAULT_REMOVE_DRAIN


def parse_port(d: Any, where: str = "port", routed: bool = False) -> Dict[str, Any]:
    """A service's port; `published` may be 0 (no frontend of its own) when it is
    `routed` (reached by host name on the shared ports)."""
    if not isinstance(d, dict):
        raise BadRequest("%s must be an object {published, target, protocol}" % where)
    check_keys(d, ("published", "target", "protocol", "host_ip"), where)
    protocol = d.get("protocol") or "http"
    if protocol not in PROTOCOLS:
        raise BadRequest("%s.protocol %r is not supported by the ingress (only %s; plain TCP services keep "
                         "their published ports)" % (where, protocol, ", ".join(PROTOCOLS)))
    return {
        "published": check_int(require(d, "published", where), where + ".published", 0 if routed else 1, 65535),
        "target": check_int(require(d, "target", where), where + ".target", 1, 65535),
        "protocol": protocol,
        "host_ip": check_ipv4(d.get("host_ip") or "0.0.0.0", where + ".host_ip"),
    }


def parse_sync(args: Dict[str, Any]) -> SyncRequest:
    check_keys(args, ("project", "env", "service", "port", "health", "backends", "network", "timeout",
                      "drain_timeout", "route"), "ingress_sync")
    project = check_project(require(args, "project", "ingress_sync"))
    service = check_name(require(args, "service", "ingress_sync"), "service")
    env = check_name(args["env"], "env") if args.get("env") else ""
    route = Route.parse(args.get("route"))
    port = parse_port(require(args, "port", "ingress_sync"), routed=route.routed)
    health = Health.from_dict(args.get("health") or {})
    raw = require(args, "backends", "ingress_sync")
    if not isinstance(raw, list):
        raise BadRequest("backends must be a list of {name, container, address?}")
    backends = []
    for i, b in enumerate(raw):
        where = "backends[%d]" % i
        if not isinstance(b, dict):
            raise BadRequest("%s must be an object {name, container, address?}" % where)
        check_keys(b, ("name", "container", "address"), where)
        backends.append(Backend(
            name=check_name(require(b, "name", where), where + ".name"),
            container=check_container_name(require(b, "container", where), where + ".container"),
            address=check_server_ip(b["address"], where + ".address") if b.get("address") else "",
        ))
    names = [b.name for b in backends]
    dupes = sorted(set(n for n in names if names.count(n) > 1))
    if dupes:
        raise BadRequest("backends: server name %s given more than once" % ", ".join(dupes))
    timeout = check_number(args.get("timeout", DEFAULT_SYNC_TIMEOUT), "timeout")
    drain_timeout = check_number(args.get("drain_timeout", DEFAULT_REMOVE_DRAIN), "drain_timeout")
    network = check_name(args["network"], "network") if args.get("network") else ""
    svc = ServiceIngress(project=project, service=service, env=env, published=port["published"],
                         target=port["target"], protocol=port["protocol"], host_ip=port["host_ip"],
                         health=health, servers=tuple(Server(b.name, b.container, b.address) for b in backends),
                         route=route)
    return SyncRequest(service=svc, backends=tuple(backends), network=network, timeout=timeout,
                       drain_timeout=drain_timeout)


def parse_drain(args: Dict[str, Any]) -> Tuple[str, str, str, float]:
    check_keys(args, ("project", "service", "server", "timeout"), "ingress_drain")
    project = check_project(require(args, "project", "ingress_drain"))
    service = check_name(require(args, "service", "ingress_drain"), "service")
    server = check_name(require(args, "server", "ingress_drain"), "server")
    timeout = check_number(args.get("timeout", DEFAULT_DRAIN_TIMEOUT), "timeout")
    if timeout > 3600:
        raise BadRequest("timeout must be at most 3600 seconds")
    return project, service, server, timeout


def parse_remove(args: Dict[str, Any]) -> Tuple[str, str]:
    check_keys(args, ("project", "service"), "ingress_remove")
    return (check_project(require(args, "project", "ingress_remove")),
            check_name(require(args, "service", "ingress_remove"), "service"))


@dataclass(frozen=True)
class IngressSettings:
    """What the controller sends for a service behind the node's ingress."""

    port: Dict[str, Any]  # {published (0: host names only), target, protocol, host_ip}
    health: Dict[str, Any]
    drain_timeout: float = ROLLOUT_DRAIN_TIMEOUT
    timeout: float = ROLLOUT_SYNC_TIMEOUT
    route: Route = field(default_factory=Route)  # ingress_sync's `route` (route.to_dict()) when routed

    @classmethod
    def parse(cls, value: Any) -> Optional["IngressSettings"]:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadRequest("ingress must be an object {port, health, drain_timeout, timeout, route}")
        check_keys(value, ("port", "health", "drain_timeout", "timeout", "route"), "ingress")
        route = Route.parse(value.get("route"), "ingress.route")
        port = parse_port(require(value, "port", "ingress"), "ingress.port", routed=route.routed)
        health = Health.from_dict(value.get("health") or {}).to_dict()
        return cls(port=port, health=health, route=route,
                   drain_timeout=check_number(value.get("drain_timeout", ROLLOUT_DRAIN_TIMEOUT), "drain_timeout"),
                   timeout=check_number(value.get("timeout", ROLLOUT_SYNC_TIMEOUT), "timeout"))

    def to_dict(self) -> Dict[str, Any]:
        out = {"port": dict(self.port), "health": dict(self.health), "drain_timeout": self.drain_timeout,
               "timeout": self.timeout}
        if self.route.routed:
            out["route"] = self.route.to_dict()
        return out

"""What `apply` is asked to converge to: ServiceSpec (one service on one node) and
ContainerSpec (the configuration shared by that service's replicas).

Both parse from plain JSON, validating every field, and serialise back to a canonical
dict. The controller builds them (from the Compose model), computes config_hash() over
the canonical ContainerSpec and sends both; the agent labels each container with that
hash and recreates a replica whose label differs. The hash lives here, in agent.wire
(the contract), so controller and agent share one definition; only the controller calls it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from agent.wire import labels as L
from agent.wire.protocol import (
    BadRequest,
    check_abs_path,
    check_bool,
    check_env_map,
    check_hash,
    check_image,
    check_int,
    check_keys,
    check_name,
    check_number,
    check_project,
    check_str,
    check_str_list,
    check_str_map,
    require,
)

RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
MOUNT_TYPES = ("volume", "bind", "tmpfs")
PROTOCOLS = ("tcp", "udp", "sctp")
DEFAULT_STOP_GRACE = 10.0
# Where the agent may write secret and config files inside a container.
SECRETS_DIR = "/run/secrets"
# Files the agent writes must stay small: they travel inside one JSON line.
MAX_FILE_BYTES = 1024 * 1024


def _opt(obj: Dict[str, Any], key: str, check, *a, **kw):
    value = obj.get(key)
    return None if value is None else check(value, *a, **kw)


@dataclass(frozen=True)
class Port:
    target: int
    published: Optional[int] = None  # None: the engine picks a free host port
    protocol: str = "tcp"
    host_ip: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Port":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("target", "published", "protocol", "host_ip"), where)
        protocol = d.get("protocol") or "tcp"
        if protocol not in PROTOCOLS:
            raise BadRequest("%s.protocol must be one of %s" % (where, ", ".join(PROTOCOLS)))
        return cls(
            target=check_int(require(d, "target", where), where + ".target", 1, 65535),
            published=_opt(d, "published", check_int, where + ".published", 1, 65535),
            protocol=protocol,
            host_ip=check_str(d.get("host_ip") or "", where + ".host_ip"),
        )


@dataclass(frozen=True)
class Mount:
    type: str
    target: str
    source: str = ""  # volume: Compose volume name ("" = anonymous); bind: absolute host path
    read_only: bool = False

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Mount":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("type", "source", "target", "read_only"), where)
        kind = d.get("type") or "volume"
        if kind not in MOUNT_TYPES:
            raise BadRequest("%s.type must be one of %s" % (where, ", ".join(MOUNT_TYPES)))
        source = d.get("source") or ""
        if kind == "bind":
            source = check_abs_path(source, where + ".source")
        elif kind == "volume" and source:
            source = check_name(source, where + ".source")
        elif kind == "tmpfs" and source:
            raise BadRequest("%s: a tmpfs mount has no source" % where)
        return cls(
            type=kind,
            source=source,
            target=check_abs_path(require(d, "target", where), where + ".target"),
            read_only=check_bool(d.get("read_only", False), where + ".read_only"),
        )


@dataclass(frozen=True)
class NetworkAttachment:
    name: str  # Compose network name in the project ("default")
    aliases: List[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "NetworkAttachment":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("name", "aliases"), where)
        aliases = check_str_list(d.get("aliases") or [], where + ".aliases")
        return cls(name=check_name(require(d, "name", where), where + ".name"), aliases=sorted(set(aliases)))


@dataclass(frozen=True)
class Healthcheck:
    test: List[str]  # ["CMD", ...] or ["CMD-SHELL", "..."] (run by the image's shell, in the container)
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Optional[Healthcheck]":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("test", "interval", "timeout", "retries", "start_period", "disable"), where)
        if d.get("disable"):
            return cls(test=["NONE"])
        test = check_str_list(require(d, "test", where), where + ".test")
        if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
            raise BadRequest("%s.test must start with CMD, CMD-SHELL or NONE" % where)
        return cls(
            test=test,
            interval=check_number(d.get("interval", 30.0), where + ".interval"),
            timeout=check_number(d.get("timeout", 30.0), where + ".timeout"),
            retries=check_int(d.get("retries", 3), where + ".retries", 0, 1000),
            start_period=check_number(d.get("start_period", 0.0), where + ".start_period"),
        )

    @property
    def disabled(self) -> bool:
        return self.test[:1] == ["NONE"]

    def budget(self, margin: float = 5.0) -> float:
        """Seconds to wait for 'healthy': start_period + (retries + 1) * interval + timeout + margin.

        Docker runs the first probe one interval after start and needs `retries`
        consecutive failures to call it unhealthy; we stop waiting once that is past.
        """
        return self.start_period + (self.retries + 1) * self.interval + self.timeout + margin


@dataclass(frozen=True)
class Resources:
    cpus: Optional[float] = None
    memory: Optional[int] = None  # bytes
    memory_reservation: Optional[int] = None
    pids_limit: Optional[int] = None
    shm_size: Optional[int] = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Resources":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("cpus", "memory", "memory_reservation", "pids_limit", "shm_size"), where)
        return cls(
            cpus=_opt(d, "cpus", check_number, where + ".cpus"),
            memory=_opt(d, "memory", check_int, where + ".memory", 0),
            memory_reservation=_opt(d, "memory_reservation", check_int, where + ".memory_reservation", 0),
            pids_limit=_opt(d, "pids_limit", check_int, where + ".pids_limit", -1),
            shm_size=_opt(d, "shm_size", check_int, where + ".shm_size", 0),
        )


@dataclass(frozen=True)
class FileSpec:
    """A secret or config: content written by the agent on the node, bind-mounted read-only."""

    name: str
    target: str
    content: str  # base64
    mode: int
    uid: int = 0
    gid: int = 0

    @classmethod
    def from_dict(cls, d: Any, where: str, default_target: str, default_mode: int) -> "FileSpec":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("name", "target", "content", "mode", "uid", "gid"), where)
        name = check_name(require(d, "name", where), where + ".name")
        content = check_str(require(d, "content", where), where + ".content")
        try:
            raw = base64.b64decode(content.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise BadRequest("%s.content must be base64" % where)
        if len(raw) > MAX_FILE_BYTES:
            raise BadRequest("%s is larger than %d bytes" % (where, MAX_FILE_BYTES))
        target = check_str(d.get("target") or default_target.replace("{name}", name), where + ".target")
        if not target.startswith("/"):  # Compose allows a relative target for secrets
            target = SECRETS_DIR + "/" + target
        return cls(
            name=name,
            target=check_abs_path(target, where + ".target"),
            content=content,
            mode=check_int(d.get("mode", default_mode), where + ".mode", 0, 0o777),
            uid=check_int(d.get("uid", 0), where + ".uid", 0),
            gid=check_int(d.get("gid", 0), where + ".gid", 0),
        )

    def data(self) -> bytes:
        return base64.b64decode(self.content.encode("ascii"))


_CONTAINER_KEYS = (
    "image", "command", "entrypoint", "environment", "ports", "volumes", "networks",
    "healthcheck", "restart", "resources", "labels", "user", "working_dir", "hostname",
    "extra_hosts", "cap_add", "cap_drop", "init", "stop_signal", "stop_grace_period",
    "read_only", "secrets", "configs", "dns", "dns_search", "dns_opt",
)


def stays_exited(restart: str) -> bool:
    """Does a container under this restart policy stay exited once it exited 0 (a job:
    `no`, `on-failure[:N]`)? The agent's readiness and the controller's deploy (which marks
    such replicas one-shot for the monitor) both ask."""
    return restart.partition(":")[0] in ("no", "on-failure")


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    command: Optional[List[str]] = None  # None: the image's CMD
    entrypoint: Optional[List[str]] = None  # None: the image's ENTRYPOINT
    environment: Dict[str, str] = field(default_factory=dict)  # env_file already merged in
    ports: List[Port] = field(default_factory=list)
    volumes: List[Mount] = field(default_factory=list)
    networks: List[NetworkAttachment] = field(default_factory=list)
    healthcheck: Optional[Healthcheck] = None  # None: the image's own, if any
    restart: str = "no"  # no | always | unless-stopped | on-failure[:N]
    resources: Resources = field(default_factory=Resources)
    labels: Dict[str, str] = field(default_factory=dict)
    user: str = ""
    working_dir: str = ""
    hostname: str = ""
    extra_hosts: List[str] = field(default_factory=list)  # "host:ip"
    cap_add: List[str] = field(default_factory=list)
    cap_drop: List[str] = field(default_factory=list)
    init: Optional[bool] = None
    stop_signal: str = ""
    stop_grace_period: float = DEFAULT_STOP_GRACE
    read_only: bool = False
    secrets: List[FileSpec] = field(default_factory=list)  # at /run/secrets/NAME, 0400
    configs: List[FileSpec] = field(default_factory=list)  # at /NAME, 0444
    # Set by orch for the mesh (agent.wire.mesh): the node's mesh DNS and the search
    # domains of the container's networks.
    dns: List[str] = field(default_factory=list)
    dns_search: List[str] = field(default_factory=list)
    dns_opt: List[str] = field(default_factory=list)  # resolv.conf options, e.g. ndots:1

    @classmethod
    def from_dict(cls, d: Any, where: str = "container") -> "ContainerSpec":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, _CONTAINER_KEYS, where)
        restart = check_str(d.get("restart") or "no", where + ".restart")
        base, _, count = restart.partition(":")
        if base not in RESTART_POLICIES or (count and (base != "on-failure" or not count.isdigit())):
            raise BadRequest("%s.restart %r must be no, always, unless-stopped or on-failure[:N]" % (where, restart))
        user_labels = check_str_map(d.get("labels") or {}, where + ".labels")
        for key in user_labels:
            if key.startswith(L.RESERVED_PREFIX):
                raise BadRequest("%s.labels: %r is reserved for orch" % (where, key))
        extra_hosts = check_str_list(d.get("extra_hosts") or [], where + ".extra_hosts")
        for i, entry in enumerate(extra_hosts):
            if ":" not in entry:
                raise BadRequest("%s.extra_hosts[%d] %r must be host:ip" % (where, i, entry))
        hc = d.get("healthcheck")
        spec = cls(
            image=check_image(require(d, "image", where), where + ".image"),
            command=_opt(d, "command", check_str_list, where + ".command"),
            entrypoint=_opt(d, "entrypoint", check_str_list, where + ".entrypoint"),
            environment=check_env_map(d.get("environment") or {}, where + ".environment"),
            ports=[Port.from_dict(p, "%s.ports[%d]" % (where, i)) for i, p in enumerate(_list(d, "ports", where))],
            volumes=[Mount.from_dict(m, "%s.volumes[%d]" % (where, i)) for i, m in enumerate(_list(d, "volumes", where))],
            networks=[
                NetworkAttachment.from_dict(n, "%s.networks[%d]" % (where, i))
                for i, n in enumerate(_list(d, "networks", where))
            ],
            healthcheck=None if hc is None else Healthcheck.from_dict(hc, where + ".healthcheck"),
            restart=restart,
            resources=Resources.from_dict(d.get("resources") or {}, where + ".resources"),
            labels=user_labels,
            user=check_str(d.get("user") or "", where + ".user"),
            working_dir=(
                check_abs_path(d["working_dir"], where + ".working_dir") if d.get("working_dir") else ""
            ),
            hostname=check_str(d.get("hostname") or "", where + ".hostname"),
            extra_hosts=extra_hosts,
            cap_add=sorted(set(check_str_list(d.get("cap_add") or [], where + ".cap_add"))),
            cap_drop=sorted(set(check_str_list(d.get("cap_drop") or [], where + ".cap_drop"))),
            init=_opt(d, "init", check_bool, where + ".init"),
            stop_signal=check_str(d.get("stop_signal") or "", where + ".stop_signal"),
            stop_grace_period=check_number(d.get("stop_grace_period", DEFAULT_STOP_GRACE), where + ".stop_grace_period"),
            read_only=check_bool(d.get("read_only", False), where + ".read_only"),
            secrets=[
                FileSpec.from_dict(s, "%s.secrets[%d]" % (where, i), SECRETS_DIR + "/{name}", 0o400)
                for i, s in enumerate(_list(d, "secrets", where))
            ],
            configs=[
                FileSpec.from_dict(c, "%s.configs[%d]" % (where, i), "/{name}", 0o444)
                for i, c in enumerate(_list(d, "configs", where))
            ],
            dns=_dns_servers(d.get("dns") or [], where + ".dns"),
            dns_search=check_str_list(d.get("dns_search") or [], where + ".dns_search"),
            dns_opt=_dns_options(d.get("dns_opt") or [], where + ".dns_opt"),
        )
        targets = [m.target for m in spec.volumes] + [f.target for f in spec.secrets + spec.configs]
        dupes = sorted(set(t for t in targets if targets.count(t) > 1))
        if dupes:
            raise BadRequest("%s: more than one mount at %s" % (where, ", ".join(dupes)))
        return spec

    def to_dict(self) -> Dict[str, Any]:
        """Canonical JSON form: every field present, defaults filled in, lists normalised.
        The mesh's dns fields only when set, so containers outside a mesh keep the config
        hash they had before those fields existed (no recreate on upgrade)."""
        import dataclasses

        out = dataclasses.asdict(self)
        for key in ("dns", "dns_search", "dns_opt"):
            if not out[key]:
                del out[key]
        return out


def _dns_servers(value: Any, where: str) -> List[str]:
    import ipaddress

    out = check_str_list(value, where)
    for i, s in enumerate(out):
        try:
            ipaddress.ip_address(s)
        except ValueError:
            raise BadRequest("%s[%d] %r must be an IP address" % (where, i, s))
    return out


def _dns_options(value: Any, where: str) -> List[str]:
    import re

    out = check_str_list(value, where)
    for i, s in enumerate(out):
        if not re.fullmatch(r"[a-z0-9-]{1,32}(:[0-9]{1,3})?", s):
            raise BadRequest("%s[%d] %r is not a resolver option (like ndots:1)" % (where, i, s))
    return out


def _list(d: Dict[str, Any], key: str, where: str) -> list:
    value = d.get(key) or []
    if not isinstance(value, list):
        raise BadRequest("%s.%s must be a list" % (where, key))
    return value


def config_hash(container: "ContainerSpec | Dict[str, Any]") -> str:
    """sha256 over the canonical JSON of a ContainerSpec (called by the controller).

    Parsing first means equivalent inputs ({"init": null} vs no "init") hash alike.
    Secret and config contents are part of it, so changing one recreates the container.
    Not hashed: the replica number, the release and registry credentials, which must
    not force a recreate.
    """
    spec = container if isinstance(container, ContainerSpec) else ContainerSpec.from_dict(container)
    canonical = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(b"orch-container-v1\n" + canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class NetworkDef:
    name: str  # Compose name inside the project
    external: bool = False  # external: must exist, used by its own name, never created/removed
    external_name: str = ""
    driver: str = "bridge"
    internal: bool = False
    attachable: bool = False
    labels: Dict[str, str] = field(default_factory=dict)
    # Part of the environment's mesh (agent.wire.mesh): its slot k (0: not in the mesh), and
    # this node's subnet of it, gateway and MTU.
    mesh_slot: int = 0
    subnet: str = ""
    gateway: str = ""
    mtu: int = 0

    @classmethod
    def from_dict(cls, name: str, d: Any, where: str) -> "NetworkDef":
        d = d or {}
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("external", "name", "driver", "internal", "attachable", "labels", "mesh_slot", "subnet",
                       "gateway", "mtu"), where)
        subnet = check_str(d.get("subnet") or "", where + ".subnet")
        gateway = check_str(d.get("gateway") or "", where + ".gateway")
        if subnet or gateway:
            import ipaddress

            try:
                net = ipaddress.IPv4Network(subnet)
                if ipaddress.IPv4Address(gateway) not in net:
                    raise ValueError("gateway outside the subnet")
            except ValueError as exc:
                raise BadRequest("%s.subnet/gateway %r/%r: %s" % (where, subnet, gateway, exc))
        return cls(
            mesh_slot=check_int(d.get("mesh_slot", 0), where + ".mesh_slot", 0, 4095),
            subnet=subnet, gateway=gateway, mtu=check_int(d.get("mtu", 0), where + ".mtu", 0, 9000),
            name=check_name(name, where),
            external=check_bool(d.get("external", False), where + ".external"),
            external_name=check_name(d["name"], where + ".name") if d.get("name") else "",
            driver=check_name(d.get("driver") or "bridge", where + ".driver"),
            internal=check_bool(d.get("internal", False), where + ".internal"),
            attachable=check_bool(d.get("attachable", False), where + ".attachable"),
            labels=check_str_map(d.get("labels") or {}, where + ".labels"),
        )

    def engine_name(self, project: str) -> str:
        if self.external_name:
            return self.external_name
        return self.name if self.external else L.network_name(project, self.name)


@dataclass(frozen=True)
class VolumeDef:
    name: str
    external: bool = False
    external_name: str = ""
    driver: str = "local"
    driver_opts: Dict[str, str] = field(default_factory=dict)
    labels: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, d: Any, where: str) -> "VolumeDef":
        d = d or {}
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(d, ("external", "name", "driver", "driver_opts", "labels"), where)
        return cls(
            name=check_name(name, where),
            external=check_bool(d.get("external", False), where + ".external"),
            external_name=check_name(d["name"], where + ".name") if d.get("name") else "",
            driver=check_name(d.get("driver") or "local", where + ".driver"),
            driver_opts=check_str_map(d.get("driver_opts") or {}, where + ".driver_opts"),
            labels=check_str_map(d.get("labels") or {}, where + ".labels"),
        )

    def engine_name(self, project: str) -> str:
        if self.external_name:
            return self.external_name
        return self.name if self.external else L.volume_name(project, self.name)


@dataclass(frozen=True)
class ServiceSpec:
    """One service's desired state on one node: which replicas run here, and how."""

    project: str
    service: str
    config_hash: str
    container: ContainerSpec
    replicas: List[int]  # replica numbers placed on this node; [] removes them all
    env: str = ""
    release: str = ""
    networks: Dict[str, NetworkDef] = field(default_factory=dict)
    volumes: Dict[str, VolumeDef] = field(default_factory=dict)
    pull: str = "missing"  # missing | always | never
    # {ContainerSpec field: short hash}, labelled on the containers so a later plan can
    # say which fields changed; optional, not part of config_hash.
    config_parts: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec") -> "ServiceSpec":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % where)
        check_keys(
            d,
            ("project", "service", "env", "release", "config_hash", "replicas", "container",
             "networks", "volumes", "pull", "config_parts"),
            where,
        )
        raw_replicas = require(d, "replicas", where)
        if not isinstance(raw_replicas, list):
            raise BadRequest("%s.replicas must be a list of replica numbers" % where)
        replicas = [check_int(r, "%s.replicas[%d]" % (where, i), 1, 10000) for i, r in enumerate(raw_replicas)]
        if len(set(replicas)) != len(replicas):
            raise BadRequest("%s.replicas has duplicates" % where)
        pull = d.get("pull") or "missing"
        if pull not in ("missing", "always", "never"):
            raise BadRequest("%s.pull must be missing, always or never" % where)
        nets = d.get("networks") or {}
        vols = d.get("volumes") or {}
        if not isinstance(nets, dict) or not isinstance(vols, dict):
            raise BadRequest("%s.networks and .volumes must be objects keyed by name" % where)
        env = check_str(d.get("env") or "", where + ".env")
        if env:
            check_name(env, where + ".env")
        spec = cls(
            project=check_project(require(d, "project", where), where + ".project"),
            service=check_name(require(d, "service", where), where + ".service"),
            env=env,
            release=check_name(d["release"], where + ".release") if d.get("release") else "",
            config_hash=check_hash(require(d, "config_hash", where), where + ".config_hash"),
            replicas=sorted(replicas),
            container=ContainerSpec.from_dict(require(d, "container", where), where + ".container"),
            networks={k: NetworkDef.from_dict(k, v, "%s.networks.%s" % (where, k)) for k, v in sorted(nets.items())},
            volumes={k: VolumeDef.from_dict(k, v, "%s.volumes.%s" % (where, k)) for k, v in sorted(vols.items())},
            pull=pull,
            config_parts=check_str_map(d.get("config_parts") or {}, where + ".config_parts"),
        )
        for att in spec.container.networks:
            if att.name not in spec.networks:
                raise BadRequest("%s.container.networks: %r is not defined in %s.networks" % (where, att.name, where))
        for m in spec.container.volumes:
            if m.type == "volume" and m.source and m.source not in spec.volumes:
                raise BadRequest("%s.container.volumes: %r is not defined in %s.volumes" % (where, m.source, where))
        return spec

    def container_name(self, replica: int) -> str:
        return L.container_name(self.project, self.service, replica)

    def config_parts_label(self) -> str:
        if not self.config_parts:
            return ""
        return json.dumps(self.config_parts, sort_keys=True, separators=(",", ":"))


def config_parts(container: "ContainerSpec | Dict[str, Any]") -> Dict[str, str]:
    """A short hash per top-level ContainerSpec field (controller side, like config_hash)."""
    return config_digest(container)[1]


def config_digest(container: "ContainerSpec | Dict[str, Any]") -> "Tuple[str, Dict[str, str]]":
    """(config_hash, config_parts) from one parse and one canonical form: the controller
    computes both for every unit of a plan."""
    spec = container if isinstance(container, ContainerSpec) else ContainerSpec.from_dict(container)
    canon = spec.to_dict()
    whole = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    parts = {}
    for key, value in sorted(canon.items()):
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        parts[key] = hashlib.sha256(b"orch-part-v1\n" + canonical.encode("ascii")).hexdigest()[:12]
    return hashlib.sha256(b"orch-container-v1\n" + whole.encode("ascii")).hexdigest(), parts

"""What a lab is, as plain data: its name, subnet, nodes and every derived name/path.

Pure: nothing here touches the machine, so unit tests can assert on all of it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import InputError, Problem

DEFAULT_NAME = "orch-lab"
DEFAULT_SUBNET = "10.250.0.0/24"
DEFAULT_NODES = "dev=1,test=1,prod=2"
REGISTRY_PORT = 5000  # authenticated, read-write
MIRROR_PORT = 5001  # anonymous, read-only view of the same storage (registry-mirrors)
SSH_PORT = 22
SSH_USER = "root"
# The lab's ACME server (Debian's pebble) and the resolver it validates through
# (dnsmasq), both on the bridge address: docs/lab.md "ACME".
ACME_PORT = 14000  # the ACME directory (RFC 8555), TLS with a lab-CA certificate
ACME_MANAGEMENT_PORT = 15000  # pebble's management API: /roots/0 is its issuing root
DNS_PORT = 53
ACME_DOMAIN = "lab.test"  # names tests add resolve under it; nothing else is answered

# Host offsets inside the subnet: dev-1 .11, test-1 .21, prod-1 .31, prod-2 .32.
# The committed environments/*.yaml rely on these, so they are fixed.
ENV_BASES = {"dev": 10, "test": 20, "prod": 30}
IN_DECADE = 9  # an environment's first nodes: base+1 .. base+9
# Environments beyond dev/test/prod get the next free decades, in the order given.
EXTRA_BASES = (40, 50, 60, 70, 80, 90)
# Nodes beyond IN_DECADE take the offsets from .100 on, environment after environment
# (a /24 holds 155 of them: .100-.254; a larger --subnet more); bounded by the engines' bridge
# ranges (bip) staying inside 172.28.0.0/14.
OVERFLOW_BASE = 100
MAX_OFFSET = 4 * 256 - 1
MAX_PER_ENV = 500

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_ENV_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True)
class NodeSpec:
    name: str  # e.g. prod-2
    env: str  # e.g. prod
    index: int  # 1-based within its environment
    address: str  # e.g. 10.250.0.32
    bip: str  # the node engine's own docker0 range, e.g. 172.28.32.1/24
    # A light node has no dockerd: its DOCKER_HOST is the lab's fake engine (fake_engine.py).
    light: bool = False

    @property
    def octet(self) -> int:
        return int(self.address.rsplit(".", 1)[1])


@dataclass(frozen=True)
class LabSpec:
    name: str
    subnet: str  # e.g. 10.250.0.0/24
    nodes: tuple[NodeSpec, ...]

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def host_address(self) -> str:
        """The bridge's address: where the controller, registry and mirror live."""
        return str(self.network.network_address + 1)

    @property
    def registry(self) -> str:
        return f"{self.host_address}:{REGISTRY_PORT}"

    @property
    def mirror(self) -> str:
        return f"{self.host_address}:{MIRROR_PORT}"

    @property
    def acme_directory(self) -> str:
        return f"https://{self.host_address}:{ACME_PORT}/dir"

    @property
    def acme_management(self) -> str:
        return f"https://{self.host_address}:{ACME_MANAGEMENT_PORT}"

    @property
    def dns_server(self) -> str:
        return f"{self.host_address}:{DNS_PORT}"

    @property
    def light_nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.light)

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_NAME

    @property
    def tag(self) -> str:
        """Short id in interface names (IFNAMSIZ is 16): '0' for the default lab."""
        return lab_tag(self.name)

    @property
    def bridge(self) -> str:
        return f"orchlab{self.tag}"

    def offset(self, node: NodeSpec) -> int:
        return int(ipaddress.IPv4Address(node.address)) - int(self.network.network_address)

    def veth(self, node: NodeSpec) -> str:
        """Host side of the node's veth pair (the node side is eth0 in its netns). IFNAMSIZ
        leaves two characters after the bridge's name: the offset below 100 (.11-.99), else
        a letter and a base-36 digit."""
        return f"{self.bridge}-{veth_suffix(self.offset(node))}"

    def netns(self, node: NodeSpec) -> str:
        # '.' cannot occur in a lab name, so one lab's prefix never matches another's.
        return f"{self.name}.{node.name}"

    @property
    def netns_prefix(self) -> str:
        return f"{self.name}."

    @property
    def iptables_comment(self) -> str:
        return f"orch-lab:{self.name}"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.name}"

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def paths(self) -> "LabPaths":
        return LabPaths.for_name(self.name)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "subnet": self.subnet,
            "nodes": [n.__dict__ for n in self.nodes],
        }

    @classmethod
    def from_json(cls, data: dict) -> "LabSpec":
        nodes = tuple(NodeSpec(**n) for n in data["nodes"])
        return cls(name=data["name"], subnet=data["subnet"], nodes=nodes)


def veth_suffix(offset: int) -> str:
    if offset < OVERFLOW_BASE:
        return str(offset)
    k = offset - OVERFLOW_BASE
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "abcdefghijklmnopqrstuvwxyz"[k // 36] + digits[k % 36]


def lab_tag(name: str) -> str:
    if name == DEFAULT_NAME:
        return "0"
    return hashlib.sha1(name.encode()).hexdigest()[:5]


@dataclass(frozen=True)
class LabPaths:
    """Where a lab keeps things. State survives reboots; run does not (tmpfs)."""

    state: Path  # /var/lib/orch-lab[-NAME]
    run: Path  # /run/orch-lab[-NAME] (short: unix socket paths must stay under 108 bytes)
    cache: Path = field(default=Path("/var/cache/orch-lab"))  # shared by all labs

    @classmethod
    def for_name(cls, name: str, root: Path = Path("/")) -> "LabPaths":
        """Paths of the lab with this canonical name (see validate_name)."""
        return cls(
            state=root / "var/lib" / name,
            run=root / "run" / name,
            cache=root / "var/cache/orch-lab",
        )

    # lab-wide files
    @property
    def spec_file(self) -> Path:
        return self.state / "lab.json"

    @property
    def lab_env(self) -> Path:
        return self.state / "lab.env"

    @property
    def registry_env(self) -> Path:
        return self.state / "registry.env"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def lock(self) -> Path:
        return self.run.parent / f"{self.run.name}.lock"

    # PKI and SSH client side
    @property
    def ca_dir(self) -> Path:
        return self.state / "ca"

    @property
    def ca_cert(self) -> Path:
        # Top-level, like the client key and known_hosts: environments/*.yaml name
        # these paths directly (/var/lib/orch-lab/{ca.crt,id_ed25519,known_hosts}).
        return self.state / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def client_key(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.state / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    # registry
    @property
    def registry_dir(self) -> Path:
        return self.state / "registry"

    @property
    def registry_storage(self) -> Path:
        return self.registry_dir / "storage"

    @property
    def registry_config(self) -> Path:
        return self.registry_dir / "registry.yml"

    @property
    def mirror_config(self) -> Path:
        return self.registry_dir / "mirror.yml"

    @property
    def htpasswd(self) -> Path:
        return self.registry_dir / "htpasswd"

    @property
    def registry_cert(self) -> Path:
        return self.registry_dir / "tls.crt"

    @property
    def registry_key(self) -> Path:
        return self.registry_dir / "tls.key"

    # ACME server (pebble) and its resolver (dnsmasq)
    @property
    def acme_dir(self) -> Path:
        return self.state / "acme"

    @property
    def acme_config(self) -> Path:
        return self.acme_dir / "pebble.json"

    @property
    def acme_cert(self) -> Path:
        """The directory's own TLS certificate, issued by the lab CA (ca.crt)."""
        return self.acme_dir / "tls.crt"

    @property
    def acme_key(self) -> Path:
        return self.acme_dir / "tls.key"

    @property
    def acme_ca(self) -> Path:
        """Pebble's issuing root, fetched after each start (it changes every start)."""
        return self.state / "acme-ca.crt"

    @property
    def dns_dir(self) -> Path:
        return self.state / "dns"

    @property
    def dns_hosts_dir(self) -> Path:
        """hosts-format files dnsmasq answers from (re-read on change): one per name."""
        return self.dns_dir / "hosts"

    @property
    def dns_pidfile(self) -> Path:
        return self.run / "dns.pid"

    @property
    def docker_client_config(self) -> Path:
        """A private `docker --config` dir: pushing never touches ~/.docker."""
        return self.state / "docker-client"

    # per node
    def node_dir(self, node: str) -> Path:
        return self.state / "nodes" / node

    def node_run(self, node: str) -> Path:
        return self.run / node

    def daemon_json(self, node: str) -> Path:
        return self.node_dir(node) / "daemon.json"

    def data_root(self, node: str) -> Path:
        return self.node_dir(node) / "docker"

    def exec_root(self, node: str) -> Path:
        return self.node_run(node) / "exec"

    def docker_socket(self, node: str) -> Path:
        return self.node_run(node) / "docker.sock"

    @property
    def fake_engine_config(self) -> Path:
        """The light nodes' fake engine: which sockets it serves (fake_engine.py)."""
        return self.state / "fake-engine.json"

    def docker_pidfile(self, node: str) -> Path:
        return self.node_run(node) / "docker.pid"

    def sshd_config(self, node: str) -> Path:
        return self.node_dir(node) / "sshd_config"

    def host_key(self, node: str) -> Path:
        return self.node_dir(node) / "ssh_host_ed25519_key"

    def sshd_pidfile(self, node: str) -> Path:
        return self.node_run(node) / "sshd.pid"

    def uts_ns(self, node: str) -> Path:
        """Persistent UTS namespace (bind-mounted nsfs file): the node's own hostname."""
        return self.run / "ns" / f"{node}.uts"

    def log(self, what: str) -> Path:
        return self.logs / f"{what}.log"

    # shared cache of base-image tarballs
    @property
    def image_cache(self) -> Path:
        return self.cache


def validate_name(name: str) -> str:
    """Check a lab name and return its canonical form: 'ci' -> 'orch-lab-ci'."""
    if name != DEFAULT_NAME and not name.startswith(DEFAULT_NAME + "-"):
        name = f"{DEFAULT_NAME}-{name}"
    if not _NAME_RE.match(name) or len(name) > 24:
        raise InputError(
            Problem(
                f"invalid lab name {name!r}",
                key="--name",
                fix="use lowercase letters, digits and single dashes, at most 24 "
                "characters with the orch-lab- prefix, starting with a letter (e.g. ci)",
            )
        )
    return name


LIGHT = "light"  # `--nodes prod=100:light`: nodes without dockerd, over the lab's fake engine


def parse_nodes(text: str) -> list[tuple[str, int]]:
    """'dev=1,test=1,prod=2' -> [('dev', 1), ('test', 1), ('prod', 2)]."""
    return [(env, count) for env, count, _ in parse_node_kinds(text)]


def parse_node_kinds(text: str) -> list[tuple[str, int, bool]]:
    """'dev=1,prod=100:light' -> [('dev', 1, False), ('prod', 100, True)]."""
    out: list[tuple[str, int, bool]] = []
    seen: set[str] = set()
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        env, sep, count = part.partition("=")
        env = env.strip()
        count, colon, kind = count.partition(":")
        problem = None
        if colon and kind.strip() != LIGHT:
            problem = f"{part!r}: the only node kind is {LIGHT!r} (ENV=COUNT:{LIGHT})"
        elif not sep or not count.strip().isdigit():
            problem = f"{part!r} is not ENV=COUNT or ENV=COUNT:{LIGHT}"
        elif not _ENV_RE.match(env):
            problem = f"environment name {env!r} must be 1-8 lowercase letters/digits"
        elif env in seen:
            problem = f"environment {env!r} is given twice"
        elif not 0 <= int(count) <= MAX_PER_ENV:
            problem = f"{env} has {count} nodes; between 0 and {MAX_PER_ENV} are allowed"
        if problem:
            raise InputError(
                Problem(problem, key="--nodes", fix="write it like dev=1,test=1,prod=2 (or prod=100:light)")
            )
        seen.add(env)
        out.append((env, int(count), bool(colon)))
    if not any(c for _, c, _ in out):
        raise InputError(
            Problem("the lab needs at least one node", key="--nodes", fix="e.g. --nodes dev=1")
        )
    return out


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as err:
        raise InputError(
            Problem(f"{text!r} is not an IPv4 subnet ({err})", key="--subnet",
                    fix="give it like 10.250.0.0/24")
        ) from None
    if not net.is_private or net.is_loopback or net.is_link_local:
        raise InputError(
            Problem(f"{net} is not a private range", key="--subnet",
                    fix="use a private range the machine does not route elsewhere, "
                    "e.g. 10.250.7.0/24")
        )
    if net.prefixlen > 25:
        raise InputError(
            Problem(f"{net} is too small: node addresses go up to .{max(EXTRA_BASES) + IN_DECADE}",
                    key="--subnet", fix="use a /24 (or larger) range")
        )
    return net


def env_bases(envs: list[str]) -> dict[str, int]:
    bases = {e: ENV_BASES[e] for e in envs if e in ENV_BASES}
    extra = iter(EXTRA_BASES)
    for e in envs:
        if e not in bases:
            try:
                bases[e] = next(extra)
            except StopIteration:
                raise InputError(
                    Problem("too many environments", key="--nodes",
                            fix=f"use at most {len(ENV_BASES) + len(EXTRA_BASES)}")
                ) from None
    return bases


def build_spec(name: str, subnet: str, nodes: str) -> LabSpec:
    """Derive every node's name and addresses from the options."""
    name = validate_name(name)
    net = parse_subnet(subnet)
    kinds = parse_node_kinds(nodes)
    counts = [(env, count) for env, count, _ in kinds]
    light = {env for env, _, is_light in kinds if is_light}
    bases = env_bases([e for e, _ in counts])
    specs = []
    overflow = OVERFLOW_BASE
    last = min(net.num_addresses - 2, MAX_OFFSET)  # not the broadcast address
    for env, count in counts:
        for i in range(1, count + 1):
            if i <= IN_DECADE:
                offset = bases[env] + i
            else:
                offset, overflow = overflow, overflow + 1
            if offset > last:
                total = sum(c for _, c in counts)
                raise InputError(Problem(
                    f"{total} nodes do not fit in {net}: the nodes past the 9th of an environment take "
                    f".{OVERFLOW_BASE} on, and this range ends at offset {last}", key="--subnet",
                    fix="give a larger --subnet (a /23 holds about 400 more nodes), or fewer --nodes"))
            address = net.network_address + offset
            specs.append(
                NodeSpec(
                    name=f"{env}-{i}",
                    env=env,
                    index=i,
                    address=str(address),
                    # Private to the node's netns, so only unique within a lab for clarity.
                    bip=f"172.{28 + offset // 256}.{offset % 256}.1/24",
                    light=env in light,
                )
            )
    return LabSpec(name=name, subnet=str(net), nodes=tuple(specs))


def default_subnet_for(name: str, taken: list[ipaddress.IPv4Network]) -> str:
    """The default lab owns 10.250.0.0/24; other labs take the first free 10.250.X.0/24."""
    if name == DEFAULT_NAME:
        return DEFAULT_SUBNET
    for x in range(1, 255):
        net = ipaddress.IPv4Network(f"10.250.{x}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise InputError(
        Problem("no free 10.250.X.0/24 range for the lab", key="--subnet",
                fix="give one with --subnet")
    )

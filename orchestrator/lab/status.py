"""`orch lab status`: what runs, what answers, and what is wrong with the fix for it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from orchestrator.lab import acme, dns, engine, images, light, netns, proc, registry, sshd, state
from orchestrator.lab.dockerd import find_dockerd
from orchestrator.lab.info import info_from_spec
from orchestrator.lab.model import LabPaths, LabSpec, NodeSpec, validate_name

FIX_UP = "run `orch lab up` (it repairs the lab in place)"


@dataclass
class NodeStatus:
    name: str
    env: str
    address: str
    sshd_up: bool
    engine_up: bool
    engine_version: str | None
    engine_id: str | None
    containers_running: int | None
    light: bool = False  # over the lab's fake engine (no dockerd)


@dataclass
class RegistryStatus:
    address: str
    up: bool
    mirror: str
    mirror_up: bool
    repositories: list[str] | None


@dataclass
class AcmeStatus:
    directory: str  # pebble's ACME directory URL
    up: bool
    ca_file: str  # acme-ca.crt, pebble's current root
    ca_current: bool  # the file holds the root of the pebble that runs now
    dns_server: str  # the resolver pebble validates through
    dns_up: bool
    names: list[str]  # lab names the resolver answers (files in its hosts dir)


@dataclass
class Issue:
    problem: str
    fix: str


@dataclass
class LabStatus:
    name: str
    exists: bool
    subnet: str | None = None
    bridge: str | None = None
    nodes: list[NodeStatus] = field(default_factory=list)
    registry: RegistryStatus | None = None
    acme: AcmeStatus | None = None
    host_engine_up: bool = False
    issues: list[Issue] = field(default_factory=list)
    facts: dict | None = None

    @property
    def healthy(self) -> bool:
        return self.exists and not self.issues

    def to_json(self) -> dict:
        out = asdict(self)
        out["healthy"] = self.healthy
        return out


def _node_status(spec: LabSpec, node: NodeSpec, procs, host_links) -> tuple[NodeStatus, list[Issue]]:
    p = spec.paths
    issues = []
    for problem in netns.node_net_ok(spec, node, host_links):
        issues.append(Issue(f"{node.name}: {problem}", FIX_UP))
    ver = engine.version(p.docker_socket(node.name))
    inf = engine.info(p.docker_socket(node.name)) if ver else None
    if ver is None:
        running = light.find(procs, spec) if node.light else find_dockerd(procs, spec, node.name)
        why = "not running" if not running else "not answering"
        issues.append(
            Issue(
                f"{node.name}: {'fake ' if node.light else ''}engine {why} (socket {p.docker_socket(node.name)})",
                f"{FIX_UP}; its log: {p.log(light.LOG if node.light else f'dockerd-{node.name}')}",
            )
        )
    ssh_up = sshd.answers(node.address, timeout=1.5)
    if not ssh_up:
        issues.append(
            Issue(
                f"{node.name}: sshd not answering at {node.address}:22",
                f"{FIX_UP}; its log: {p.log(f'sshd-{node.name}')}",
            )
        )
    return (
        NodeStatus(
            name=node.name,
            env=node.env,
            address=node.address,
            sshd_up=ssh_up,
            engine_up=ver is not None,
            engine_version=(ver or {}).get("Version"),
            engine_id=(inf or {}).get("ID"),
            containers_running=(inf or {}).get("ContainersRunning"),
            light=node.light,
        ),
        issues,
    )


def check(name: str) -> LabStatus:
    name = validate_name(name)
    paths = LabPaths.for_name(name)
    spec = state.load_spec(paths)
    if spec is None:
        leftovers = netns.lab_netns(f"{name}.")
        st = LabStatus(name=name, exists=False)
        if leftovers:
            st.issues.append(
                Issue(f"lab {name} has no state but namespaces remain: {', '.join(leftovers)}",
                      "run `orch lab down` to remove them, or `orch lab up`")
            )
        return st
    st = LabStatus(name=name, exists=True, subnet=spec.subnet, bridge=spec.bridge)
    st.facts = info_from_spec(spec).to_json()
    st.host_engine_up = engine.ping(engine.HOST_SOCKET)
    if not st.host_engine_up:
        st.issues.append(
            Issue("the host's Docker Engine is not running (builds and pushes need it)",
                  "start it: systemctl start docker, or `orch lab up` (starts it)")
        )
    host_links = netns.links()
    br = host_links.get(spec.bridge)
    want = f"{spec.host_address}/{spec.prefixlen}"
    if br is None or not br.up or want not in br.addresses:
        st.issues.append(Issue(f"bridge {spec.bridge} with {want} is missing or down", FIX_UP))
    for problem in netns.forwarding_problems(spec):
        st.issues.append(Issue(problem, FIX_UP))
    if not registry.ca_installed(spec):
        st.issues.append(
            Issue("engines do not trust the lab CA (missing /etc/docker/certs.d entries)", FIX_UP)
        )

    procs = proc.process_table()
    with ThreadPoolExecutor(max_workers=max(2, len(spec.nodes))) as pool:
        results = list(pool.map(lambda n: _node_status(spec, n, procs, host_links), spec.nodes))
    for ns, issues in results:
        st.nodes.append(ns)
        st.issues.extend(issues)

    reg_up = registry.answers(spec, f"https://{spec.registry}/v2/")
    mir_up = registry.answers(spec, f"https://{spec.mirror}/v2/")
    repos = None
    if reg_up:
        creds = registry.load_credentials(spec)
        repos = registry.catalog(spec, creds) if creds else None
    st.registry = RegistryStatus(spec.registry, reg_up, spec.mirror, mir_up, repos)
    if not reg_up:
        st.issues.append(Issue(f"registry https://{spec.registry} is not answering",
                               f"{FIX_UP}; its log: {paths.log('registry')}"))
    if not mir_up:
        st.issues.append(Issue(f"mirror https://{spec.mirror} is not answering",
                               f"{FIX_UP}; its log: {paths.log('mirror')}"))
    if repos is not None:
        for img in images.BASE_IMAGES:
            if img.repo not in repos:
                st.issues.append(Issue(f"base image {img.repo} is not in the registry", FIX_UP))
    st.acme = _acme_status(spec)
    st.issues += _acme_issues(spec, st.acme)
    return st


def _acme_status(spec: LabSpec) -> AcmeStatus:
    p = spec.paths
    up = acme.answers(spec)
    try:
        names = sorted(f.name[: -len(".hosts")] for f in p.dns_hosts_dir.glob("*.hosts"))
    except OSError:
        names = []
    return AcmeStatus(
        directory=spec.acme_directory,
        up=up,
        ca_file=str(p.acme_ca),
        ca_current=up and acme.root_current(spec),
        dns_server=spec.dns_server,
        dns_up=dns.answers(spec),
        names=names,
    )


def _acme_issues(spec: LabSpec, a: AcmeStatus) -> list[Issue]:
    p = spec.paths
    out = []
    if not a.up:
        out.append(Issue(f"ACME server {a.directory} is not answering",
                         f"{FIX_UP}; its log: {p.log('pebble')}"))
    elif not a.ca_current:
        out.append(Issue(f"{a.ca_file} is not the root of the running ACME server (it restarted)",
                         f"{FIX_UP} (fetches the new root)"))
    if not a.dns_up:
        out.append(Issue(f"lab resolver {a.dns_server} is not answering",
                         f"{FIX_UP}; its log: {p.log('dns')}"))
    return out

"""Compose service -> the shared part of its agent spec, pure: `compile_blueprint(project,
environment, services)` validates the project for deployment and turns every service into a
`ServiceBlueprint` (orchestrator.core.specs.blueprint): the ContainerSpec JSON of
agent.wire.spec, project-scoped networks and volumes, secret and config contents, its
readiness (what a rollout waits for) and its placement request. Compose keys that cannot be
honoured are refused (InputError) or ignored with one warning per key (specs/keys.py).

The contents of secret/config files and variables named in the Compose file come in through
`Sources` (orchestrator.io.files.local_sources reads the controller's).
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, Problem
from orchestrator.limits import SECRET_MAX_BYTES
from orchestrator.core.rollout import read_ingress, read_policy
from orchestrator.core.specs.blueprint import Blueprint, ServiceBlueprint, check_port_conflicts, place_services
from orchestrator.core.specs.keys import REFUSED, ignored_note, x_orch_warnings

# What `apply` waits for, per depends_on condition (agent.operations.WAIT_MODES).
READINESS = {
    "service_started": "running",
    "service_healthy": "healthy",
    "service_completed_successfully": "completed",
}
_STRENGTH = {"running": 0, "healthy": 1, "completed": 2}
MAX_FILE_BYTES = 1024 * 1024  # agent.wire.spec.MAX_FILE_BYTES: files travel inside one JSON line

# Keys read from Service.other and mapped onto the container.
_MAPPED_OTHER = {"cpus", "mem_limit", "mem_reservation", "pids_limit", "shm_size", "pull_policy", "tmpfs"}
_PULL_POLICIES = {"always": "always", "missing": "missing", "if_not_present": "missing", "never": "never",
                  "build": "missing", "daily": "missing", "weekly": "missing"}



@dataclass(frozen=True)
class Sources:
    """Where secret and config contents come from: read_file(path, max_bytes, what) for
    `file:` (a bounded read), environ for `environment:` (after the project's variables)."""

    read_file: Callable[[str, int, str], bytes]
    environ: Mapping[str, str]


def compile_blueprint(project: Any, environment: Any, services: Iterable[str] = (),
                      images: Mapping[str, str] | None = None, *, sources: Sources) -> Blueprint:
    """Validate the project for deployment to `environment`; the shared part of every spec.

    `services` limits the deployment to those services and their dependencies; `images`
    overrides a service's image reference (pinned digests, from the build step); `sources`
    gives the contents of secret and config files and variables.
    Raises InputError listing every problem found.
    """
    from orchestrator.core import graph as graphs
    from orchestrator.core.placement import PlacementRequest, parse_constraint

    g = graphs.build_graph(project)
    selected = list(services)
    if selected:
        g = graphs.subgraph(g, graphs.with_dependencies(g, selected))
    waves = graphs.waves(g)
    names = [n for wave in waves for n in wave]
    problems: list[Problem] = []
    warnings: list[str] = x_orch_warnings(project.extensions["x-orch"]) if "x-orch" in (
        getattr(project, "extensions", None) or {}) else []
    ignored: dict[str, list[str]] = {}
    images = dict(images or {})

    wait = {n: "running" for n in names}
    for n in names:
        for dep, d in project.services[n].dependencies().items():
            if dep in wait:
                mode = READINESS.get(d.condition, "running")
                if _STRENGTH[mode] > _STRENGTH[wait[dep]]:
                    wait[dep] = mode

    out: dict[str, ServiceBlueprint] = {}
    for n in names:
        s = project.services[n]
        c = _Compiler(project, s, problems, ignored, environment.name if environment else "", sources)
        bp = c.compile(images.get(n), wait[n])
        warnings.extend(x_orch_warnings(s.extensions.get("x-orch"), n) if "x-orch" in s.extensions else [])
        if bp is None:
            continue
        if bp.policy.order == "start-first" and bp.published:
            warnings.append(f"{n}: update_config.order is start-first, but its replicas publish host ports "
                            f"({', '.join(str(p[1]) for p in bp.published)}) that an old and a new container cannot "
                            "hold at once: they are replaced stop-first (x-orch.ingress lets HTTP ports switch "
                            "without a gap)")
        if bp.wait == "completed" and bp.restart.partition(":")[0] in ("always", "unless-stopped"):
            problems.append(_problem(project, s, "restart",
                                     f"service {n} must complete (a dependent waits for "
                                     f"service_completed_successfully) but restart: {bp.restart} restarts it",
                                     "use restart: \"no\" or on-failure for a one-shot job"))
        if bp.wait == "healthy" and not bp.healthcheck:
            warnings.append(f"{n}: a dependent waits for it to be healthy, but the Compose file defines no "
                            "healthcheck; the image must define one (else the deploy fails)")
        req_loc = project.locate(f"services.{n}.deploy.placement.constraints")
        constraints = []
        placement = s.deploy.placement if s.deploy else None
        for text in (placement.constraints if placement else []):
            try:
                constraints.append(parse_constraint(text, file=getattr(req_loc, "file", None),
                                                    line=getattr(req_loc, "line", None),
                                                    key=f"services.{n}.deploy.placement.constraints"))
            except InputError as err:
                problems.extend(err.problems)
        bp.request = PlacementRequest(
            service=n, replicas=s.replicas, constraints=tuple(constraints),
            global_mode=bool(s.deploy and s.deploy.mode == "global"),
            file=getattr(req_loc, "file", None), line=getattr(req_loc, "line", None),
        )
        out[n] = bp
    for key, who in sorted(ignored.items()):
        warnings.append(f"ignored {key} (services: {', '.join(sorted(set(who)))}): {ignored_note(key)}")
    if problems:
        raise InputError(problems)
    blueprint = Blueprint(project=project.name, env=environment.name if environment else "",
                          services=out, project_services=set(project.services), waves=waves, warnings=warnings)
    # A fresh placement finds impossible constraints and port clashes before any connection.
    nodes = node_infos(environment) if environment else []
    if nodes:
        fresh = place_services(blueprint.requests(), nodes)
        check_port_conflicts(blueprint, {s: _by_node(sl) for s, sl in fresh.items()})
    return blueprint



def node_infos(environment: Any) -> list:
    from orchestrator.core.placement import NodeInfo

    return [NodeInfo(n.name, dict(n.labels)) for n in environment.nodes]


def node_addresses(environment: Any, resolve: Any = None) -> dict[str, str]:
    """Node name -> IP address (resolving host names with `resolve`, e.g. socket.gethostbyname)."""
    out = {}
    for n in environment.nodes:
        try:
            ipaddress.ip_address(n.host)
            out[n.name] = n.host
        except ValueError:
            if resolve is not None:
                try:
                    out[n.name] = resolve(n.host)
                except OSError:
                    pass
    return out


def _by_node(slots) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for s in slots:
        out.setdefault(s.node, []).append(s.replica)
    return out



def _problem(project: Any, service: Any, key: str, message: str, fix: str | None = None) -> Problem:
    return project.problem(message, f"services.{service.name}.{key}" if key else f"services.{service.name}", fix=fix)



class _Compiler:
    """One Compose service -> ServiceBlueprint, collecting problems and ignored keys."""

    def __init__(self, project: Any, service: Any, problems: list[Problem], ignored: dict[str, list[str]],
                 env: str = "", sources: Sources | None = None):
        self.project = project
        self.sources = sources
        self.env = env
        self.s = service
        self.problems = problems
        self.ignored = ignored

    def refuse(self, key: str, message: str, fix: str | None = None) -> None:
        self.problems.append(_problem(self.project, self.s, key, message, fix))

    def ignore(self, key: str) -> None:
        self.ignored.setdefault(key, []).append(self.s.name)

    def compile(self, image_override: str | None, wait: str) -> ServiceBlueprint | None:
        s = self.s
        start = len(self.problems)
        image = image_override or s.image
        if not image and s.build is not None:
            # `orch up` builds it and passes the pinned reference in (images.prepare_images);
            # reaching here means the caller skipped the build step.
            self.refuse("image", f"service {s.name} has no image: it has build:, but no image was built for "
                        "it (the build step did not run)",
                        f"deploy with `orch up --env {self.env or 'ENV'}`, which builds services with build:, "
                        "pushes them to the environment's registry and deploys them by digest; or set image: to "
                        "an image in a registry")
        elif not image:
            self.refuse("image", f"service {s.name} has no image:",
                        "set image: NAME[:TAG] to run an existing image, or build: ./DIR (orch up builds it and "
                        "pushes it to the environment's registry)")
        self._refuse_keys()
        container: dict[str, Any] = {"image": image or "invalid"}
        if s.command is not None:
            container["command"] = list(s.command)
        if s.entrypoint is not None:
            container["entrypoint"] = list(s.entrypoint)
        container["environment"] = {k: v for k, v in s.environment.items() if v is not None}
        ports, published = self._ports()
        ingress = read_ingress(s, published, self.refuse)
        if ingress is not None:
            # The node's HAProxy publishes that port; the containers only expose it on their network.
            ports = [p for p in ports if not (p.get("published") == ingress.published and p["protocol"] == "tcp")]
            published = [p for p in published if not (p[1] == ingress.published and p[2] == "tcp")]
        policy = read_policy(s, ingress is not None, self.refuse)
        container["ports"] = ports
        volumes_used: dict[str, dict] = {}
        container["volumes"] = self._volumes(volumes_used)
        networks_used: dict[str, dict] = {}
        container["networks"] = self._networks(networks_used)
        hc = self._healthcheck()
        if hc is not None:
            container["healthcheck"] = hc
        restart = self._restart()
        container["restart"] = restart
        container["resources"] = self._resources()
        labels = dict(s.labels)
        bad = sorted(k for k in labels if k.startswith("io.orch."))
        if bad:
            self.refuse("labels", f"labels {', '.join(bad)} use the io.orch. prefix, which orch reserves",
                        "rename them")
        container["labels"] = labels
        for key in ("user", "working_dir", "hostname", "stop_signal"):
            value = getattr(s, key)
            if value:
                container[key] = str(value)
        if s.working_dir and not str(s.working_dir).startswith("/"):
            self.refuse("working_dir", f"working_dir {s.working_dir!r} must be an absolute path")
        container["extra_hosts"] = [self._host(h) for h in s.extra_hosts]
        container["cap_add"] = sorted(set(s.cap_add))
        container["cap_drop"] = sorted(set(s.cap_drop))
        if s.init is not None:
            container["init"] = bool(s.init)
        if s.stop_grace_period is not None:
            container["stop_grace_period"] = float(s.stop_grace_period)
        if s.read_only:
            container["read_only"] = True
        container["secrets"] = self._files("secrets", s.secrets, self.project.secrets, 0o400)
        container["configs"] = self._files("configs", s.configs, self.project.configs, 0o444)
        for key in ("container_name", "domainname", "logging"):
            if getattr(s, key):
                self.ignore(key)
        for key in ("tty", "stdin_open"):
            if getattr(s, key):
                self.ignore(key)
        self._deploy_keys()
        if len(self.problems) > start:
            return None
        # Validate with the agent's own parser, so a bad value is bad input here, not on a node.
        from agent.wire.protocol import AgentError as _AgentError
        from agent.wire.spec import ContainerSpec

        try:
            ContainerSpec.from_dict(container, f"services.{s.name}")
        except _AgentError as err:
            self.refuse("", f"service {s.name}: {err.message}")
            return None
        deps = {d: dep for d, dep in s.dependencies().items() if d in self.project.services}
        return ServiceBlueprint(
            name=s.name, image=image, container=container, networks=networks_used, volumes=volumes_used,
            restart=restart, wait=wait, dependencies=deps, published=published, pull=self._pull(),
            request=None, healthcheck=bool(s.healthcheck and s.healthcheck.test and not s.healthcheck.disable
                                           and s.healthcheck.test[:1] != ["NONE"]),
            policy=policy, ingress=ingress,
        )

    # -- pieces ------------------------------------------------------------------------

    def _refuse_keys(self) -> None:
        s = self.s
        for attr in ("network_mode", "ipc", "pid"):
            value = getattr(s, attr)
            if value:
                self.refuse(attr, f"{attr}: {value} is not supported: {REFUSED[attr]}",
                            f"remove {attr} (see docs/compose-support.md)")
        if s.volumes_from:
            self.refuse("volumes_from", f"volumes_from is not supported: {REFUSED['volumes_from']}",
                        "mount the same named volume in both services")
        if s.privileged:
            self.refuse("privileged", "privileged: true is not supported", "grant specific capabilities with cap_add")
        for key, value in s.other.items():
            if key in _MAPPED_OTHER:
                continue
            if key in REFUSED:
                self.refuse(key, f"{key} is not supported: {REFUSED[key]}", f"remove {key} (see docs/compose-support.md)")
            elif value not in (None, [], {}, False):
                self.ignore(key)

    def _ports(self) -> tuple[list[dict], list[tuple[str, int, str, int]]]:
        out, published = [], []
        for i, p in enumerate(self.s.ports):
            pub = None
            if p.published not in (None, ""):
                text = str(p.published)
                if "-" in text:
                    lo, _, hi = text.partition("-")
                    if lo != hi:
                        self.refuse(f"ports[{i}]", f"published port range {text} is not supported",
                                    "publish one host port per container port")
                        continue
                    text = lo
                pub = int(text)
            if p.mode and p.mode != "ingress":
                pass  # host mode is what orch does anyway
            entry: dict[str, Any] = {"target": p.target, "protocol": p.protocol or "tcp"}
            if pub is not None:
                entry["published"] = pub
                published.append((p.host_ip or "", pub, p.protocol or "tcp", p.target))
            if p.host_ip:
                entry["host_ip"] = p.host_ip
            out.append(entry)
        return out, published

    def _volumes(self, used: dict[str, dict]) -> list[dict]:
        out = []
        project_dir = str(Path(self.project.working_dir).resolve())
        for i, v in enumerate(self.s.volumes):
            key = f"volumes[{i}]"
            if v.type == "volume":
                entry = {"type": "volume", "target": v.target, "read_only": bool(v.read_only)}
                if v.source:
                    decl = self.project.volumes.get(v.source)
                    if decl is None:
                        self.refuse(key, f"volume {v.source} is not declared", "declare it under top-level volumes:")
                        continue
                    entry["source"] = v.source
                    used[v.source] = _volume_def(self.project.name, v.source, decl)
                if v.nocopy:
                    self.ignore("volumes.nocopy")
                if v.subpath:
                    self.refuse(key, "volume subpath is not supported", "mount the whole volume")
                out.append(entry)
            elif v.type == "bind":
                src = v.source or ""
                if src == project_dir or src.startswith(project_dir + os.sep):
                    self.refuse(key, f"bind mount of {src} (a path on this machine) cannot work on remote nodes",
                                "ship files with configs: (or secrets:), or bind an absolute path that exists "
                                "on every node")
                    continue
                if v.propagation:
                    self.ignore("volumes.bind.propagation")
                if v.selinux:
                    self.ignore("volumes.bind.selinux")
                out.append({"type": "bind", "source": src, "target": v.target, "read_only": bool(v.read_only)})
            elif v.type == "tmpfs":
                if v.tmpfs_size or v.tmpfs_mode:
                    self.ignore("volumes.tmpfs.size")
                out.append({"type": "tmpfs", "target": v.target})
            else:
                self.refuse(key, f"volume type {v.type} is not supported", "use volume, bind or tmpfs")
        for item in _as_list(self.s.other.get("tmpfs")):
            path, _, opts = str(item).partition(":")
            if opts:
                self.ignore("tmpfs.options")
            if path and path not in {m["target"] for m in out}:
                out.append({"type": "tmpfs", "target": path})
        return out

    def _networks(self, used: dict[str, dict]) -> list[dict]:
        entries = []
        for name, cfg in self.s.networks.items():
            decl = self.project.networks.get(name)
            if decl is None:
                self.refuse("networks", f"network {name} is not declared", "declare it under top-level networks:")
                continue
            net = _network_def(self.project.name, name, decl)
            if net is None:
                self.refuse("networks", f"network {name}: driver {decl.driver} is not supported",
                            "use the bridge driver (each node has its own project networks)")
                continue
            for attr in ("driver_opts", "ipam", "enable_ipv6"):
                if getattr(decl, attr):
                    self.ignore(f"networks.{attr}")
            used[name] = net
            aliases, priority = [], 0
            if cfg is not None:
                aliases = list(cfg.aliases)
                priority = cfg.priority or 0
                if cfg.ipv4_address:
                    self.ignore("networks.ipv4_address")
                if cfg.ipv6_address:
                    self.ignore("networks.ipv6_address")
                for k in cfg.other:
                    self.ignore(f"networks.{k}")
            entries.append((-priority, name, {"name": name, "aliases": aliases}))
        for link in self.s.links:
            if ":" in link:
                self.ignore("links.alias")
        return [e for _, _, e in sorted(entries, key=lambda t: (t[0], t[1]))]

    def _healthcheck(self) -> dict | None:
        hc = self.s.healthcheck
        if hc is None:
            return None
        if hc.disable or (hc.test and hc.test[:1] == ["NONE"]):
            return {"disable": True}
        if not hc.test:
            # Only timings: Compose would apply them to the image's healthcheck; orch cannot.
            self.ignore("healthcheck (timings without test)")
            return None
        if hc.start_interval is not None:
            self.ignore("healthcheck.start_interval")
        out: dict[str, Any] = {"test": list(hc.test)}
        for key in ("interval", "timeout", "start_period"):
            value = getattr(hc, key)
            if value is not None:
                out[key] = float(value)
        if hc.retries is not None:
            out["retries"] = int(hc.retries)
        return out

    def _restart(self) -> str:
        s = self.s
        if s.restart:
            return s.restart
        rp = s.deploy.restart_policy if s.deploy else None
        if rp is None:
            return "no"
        if rp.delay is not None:
            self.ignore("deploy.restart_policy.delay")
        if rp.window is not None:
            self.ignore("deploy.restart_policy.window")
        cond = rp.condition or "any"
        if cond == "none":
            return "no"
        if cond == "on-failure":
            return f"on-failure:{rp.max_attempts}" if rp.max_attempts else "on-failure"
        return "always" if not rp.max_attempts else f"on-failure:{rp.max_attempts}"

    def _resources(self) -> dict:
        from orchestrator.core.compose.units import parse_bytes

        s = self.s
        out: dict[str, Any] = {}
        res = s.deploy.resources if s.deploy else {}
        limits = res.get("limits")
        reservations = res.get("reservations")
        if limits is not None:
            if limits.cpus is not None:
                out["cpus"] = float(limits.cpus)
            if limits.memory is not None:
                out["memory"] = int(limits.memory)
            if limits.pids is not None:
                out["pids_limit"] = int(limits.pids)
            if limits.devices or limits.generic_resources:
                self.refuse("deploy.resources.limits", "device and generic resources are not supported")
        if reservations is not None:
            if reservations.memory is not None:
                out["memory_reservation"] = int(reservations.memory)
            if reservations.cpus is not None:
                self.ignore("deploy.resources.reservations.cpus")
            if reservations.devices or reservations.generic_resources:
                self.refuse("deploy.resources.reservations", "device and generic resources are not supported")
        other = s.other
        try:
            if other.get("cpus") is not None and "cpus" not in out:
                out["cpus"] = float(other["cpus"])
            if other.get("mem_limit") is not None and "memory" not in out:
                out["memory"] = parse_bytes(other["mem_limit"])
            if other.get("mem_reservation") is not None and "memory_reservation" not in out:
                out["memory_reservation"] = parse_bytes(other["mem_reservation"])
            if other.get("pids_limit") is not None and "pids_limit" not in out:
                out["pids_limit"] = int(other["pids_limit"])
            if other.get("shm_size") is not None:
                out["shm_size"] = parse_bytes(other["shm_size"])
        except (TypeError, ValueError) as err:
            self.refuse("", f"invalid resource value: {err}")
        return out

    def _host(self, entry: str) -> str:
        host, _, ip = entry.partition("=")
        return f"{host}:{ip}"

    def _files(self, section: str, refs: list, declared: Mapping[str, Any], default_mode: int) -> list[dict]:
        out = []
        for i, ref in enumerate(refs):
            key = f"{section}[{i}]"
            decl = declared.get(ref.source)
            if decl is None:
                self.refuse(key, f"{section[:-1]} {ref.source} is not declared", f"declare it under top-level {section}:")
                continue
            if decl.external:
                self.refuse(key, f"external {section[:-1]} {ref.source} is not supported (it needs Swarm)",
                            "use file: (or environment:) instead of external: true")
                continue
            try:
                data = self._content(section, ref.source, decl)
            except OSError as err:
                self.refuse(key, f"cannot read {section[:-1]} {ref.source} from {decl.file}: {err.strerror or err}",
                            "create the file or fix file: under top-level " + section)
                continue
            if data is None:
                continue
            if len(data) > MAX_FILE_BYTES:
                self.refuse(key, f"{section[:-1]} {ref.source} is larger than {MAX_FILE_BYTES} bytes")
                continue
            entry: dict[str, Any] = {"name": ref.source, "target": ref.target,
                                     "content": base64.b64encode(data).decode("ascii"),
                                     "mode": ref.mode if ref.mode is not None else default_mode}
            for attr in ("uid", "gid"):
                value = getattr(ref, attr)
                if value not in (None, ""):
                    if not str(value).isdigit():
                        self.refuse(f"{key}.{attr}", f"{attr} {value!r} must be a number")
                        continue
                    entry[attr] = int(value)
            out.append(entry)
        return out

    def _content(self, section: str, name: str, decl: Any) -> bytes | None:
        if decl.file:
            return self.sources.read_file(decl.file, SECRET_MAX_BYTES, f"a {section[:-1]} file")
        if decl.environment:
            value = self.project.variables.get(decl.environment)
            if value is None:
                value = self.sources.environ.get(decl.environment)
            if value is None:
                self.refuse(section, f"{section[:-1]} {name} reads the variable {decl.environment}, which is not set",
                            f"export {decl.environment}")
                return None
            return value.encode("utf-8")
        if decl.content is not None:
            return decl.content.encode("utf-8")
        self.refuse(section, f"{section[:-1]} {name} has no file:, environment: or content:")
        return None

    def _pull(self) -> str:
        policy = self.s.other.get("pull_policy")
        if policy is None:
            return "missing"
        mapped = _PULL_POLICIES.get(str(policy))
        if mapped is None:
            self.refuse("pull_policy", f"pull_policy {policy!r} is not supported", "use always, missing or never")
            return "missing"
        return mapped

    def _deploy_keys(self) -> None:
        d = self.s.deploy
        if d is None:
            return
        if d.rollback_config is not None:
            self.ignore("deploy.rollback_config")
        if d.labels:
            self.ignore("deploy.labels")
        if d.endpoint_mode:
            self.ignore("deploy.endpoint_mode")
        if d.placement is not None:
            if d.placement.preferences:
                self.ignore("deploy.placement.preferences")
            if d.placement.max_replicas_per_node:
                self.ignore("deploy.placement.max_replicas_per_node")
        if d.mode not in (None, "replicated", "global"):
            self.refuse("deploy.mode", f"deploy.mode {d.mode} is not supported", "use replicated or global")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _network_def(project: str, name: str, decl: Any) -> dict | None:
    driver = decl.driver or "bridge"
    if driver != "bridge" and not decl.external:
        return None
    out: dict[str, Any] = {}
    if decl.external:
        out["external"] = True
        if decl.name and decl.name != name:
            out["name"] = decl.name
        return out
    if decl.name and decl.name != f"{project}_{name}":
        out["name"] = decl.name
    out["driver"] = driver
    if decl.internal:
        out["internal"] = True
    if decl.attachable:
        out["attachable"] = True
    if decl.labels:
        out["labels"] = dict(decl.labels)
    return out


def _volume_def(project: str, name: str, decl: Any) -> dict:
    out: dict[str, Any] = {}
    if decl.external:
        out["external"] = True
        if decl.name and decl.name != name:
            out["name"] = decl.name
        return out
    if decl.name and decl.name != f"{project}_{name}":
        out["name"] = decl.name
    if decl.driver:
        out["driver"] = decl.driver
    if decl.driver_opts:
        out["driver_opts"] = dict(decl.driver_opts)
    if decl.labels:
        out["labels"] = dict(decl.labels)
    return out


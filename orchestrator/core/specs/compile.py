"""Compose service -> the shared part of its agent spec, pure: `compile_blueprint(project,
environment, services)` validates the project for deployment and turns every service into a
`ServiceBlueprint` (orchestrator.core.specs.blueprint): the ContainerSpec JSON of
agent.wire.spec, project-scoped networks and volumes, secret and config contents, its
readiness (what a rollout waits for) and its placement request. Compose keys that cannot be
honoured are refused (InputError) or ignored with one warning per key (specs/keys.py).
`_Compiler` does one service, with one mixin per Compose area: ports_volumes_networks.py,
secrets_configs.py, readiness.py (healthcheck, restart, what dependents wait for), and the
refused and ignored keys (keys.py's ServiceChecks, which every mixin extends).

The contents of secret/config files and variables named in the Compose file come in through
`Sources` (orchestrator.io.files.local_sources reads the controller's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import InputError, Problem
from orchestrator.core.rollout import read_ingress, read_policy
from orchestrator.core.specs.blueprint import Blueprint, ServiceBlueprint, check_port_conflicts, place_services
from orchestrator.core.specs.keys import ignored_note, service_problem, x_orch_warnings
from orchestrator.core.specs.ports_volumes_networks import PortsVolumesNetworks
from orchestrator.core.specs.readiness import Readiness, wait_modes
from orchestrator.core.specs.secrets_configs import Sources, SecretsConfigs
from orchestrator.core.specs.tls_files import TlsFiles

_PULL_POLICIES = {"always": "always", "missing": "missing", "if_not_present": "missing", "never": "never",
                  "build": "missing", "daily": "missing", "weekly": "missing"}


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

    wait = wait_modes(project, names)

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
            problems.append(service_problem(project, s, "restart",
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
    _edge(project, blueprint, environment)
    # A fresh placement finds impossible constraints and port clashes before any connection.
    nodes = node_infos(environment) if environment else []
    if nodes:
        fresh = place_services(blueprint.requests(), nodes)
        check_port_conflicts(blueprint, {s: _by_node(sl) for s, sl in fresh.items()})
    return blueprint



def _edge(project: Any, blueprint: Blueprint, environment: Any) -> None:
    """Host routes take the environment's edge ports; a host claimed twice, or `tls: auto`
    the environment cannot serve, is bad input (orchestrator.core.edge)."""
    from dataclasses import replace

    from orchestrator.core.edge import check_project_routes, with_edge_ports

    settings = getattr(environment, "ingress", None)
    for bp in blueprint.services.values():
        if bp.ingress is not None and bp.ingress.route is not None and settings is not None:
            bp.ingress = replace(bp.ingress, route=with_edge_ports(bp.ingress.route, settings.ports))
    check_project_routes(project, blueprint, environment)


def node_infos(environment: Any) -> list:
    from orchestrator.core.placement import NodeInfo

    return [NodeInfo(n.name, dict(n.labels)) for n in environment.nodes]


def _by_node(slots) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for s in slots:
        out.setdefault(s.node, []).append(s.replica)
    return out




class _Compiler(PortsVolumesNetworks, SecretsConfigs, Readiness, TlsFiles):
    """One Compose service -> ServiceBlueprint, collecting problems and ignored keys: one
    mixin per Compose area (ports_volumes_networks, secrets_configs, readiness; the refused
    and ignored keys in keys.ServiceChecks)."""

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
        if ingress is not None and ingress.tls_source is not None:
            ingress = self._with_certificate(ingress)
        if ingress is not None and ingress.published:
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

    def _pull(self) -> str:
        policy = self.s.other.get("pull_policy")
        if policy is None:
            return "missing"
        mapped = _PULL_POLICIES.get(str(policy))
        if mapped is None:
            self.refuse("pull_policy", f"pull_policy {policy!r} is not supported", "use always, missing or never")
            return "missing"
        return mapped

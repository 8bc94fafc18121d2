"""The Compose keys orch cannot honour on remote nodes: refused (`REFUSED`: running without
them would run something else, or less safely) or ignored with one warning per key
(`IGNORED`, and the notes of ignored sub-keys); and the warnings for `x-orch` keys orch does
not read. docs/compose-support.md lists them (a unit test keeps it in step).

`ServiceChecks` is one service being compiled: where its refused keys (problems) and
ignored ones go; the compiler's mixin of every Compose area extends it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.errors import Problem

if TYPE_CHECKING:
    from orchestrator.core.specs.secrets_configs import Sources

# Keys orch refuses: running without them would run something else, or less safely.
REFUSED: dict[str, str] = {
    "network_mode": "containers always join the project's networks",
    "ipc": "sharing IPC namespaces is not supported",
    "pid": "sharing PID namespaces is not supported",
    "uts": "sharing the UTS namespace is not supported",
    "userns_mode": "user namespace modes are not supported",
    "cgroup": "cgroup namespace modes are not supported",
    "cgroup_parent": "cgroup parents are not supported",
    "volumes_from": "containers may run on different nodes; use a named volume",
    "privileged": "privileged containers are not supported",
    "devices": "device mappings are not supported",
    "device_cgroup_rules": "device cgroup rules are not supported",
    "gpus": "GPUs are not supported",
    "group_add": "supplementary groups are not supported",
    "security_opt": "security options are not supported (ignoring them would weaken the container)",
    "runtime": "alternative runtimes are not supported",
    "use_api_socket": "mounting the Docker API socket is not supported",
    "provider": "provider services are not supported",
    "models": "models are not supported",
    "post_start": "lifecycle hooks are not supported",
    "pre_stop": "lifecycle hooks are not supported",
    "credential_spec": "credential specs (Windows) are not supported",
    "isolation": "isolation modes (Windows) are not supported",
}
# Keys orch ignores with one warning: tuning or cosmetics whose absence still runs the app.
IGNORED: dict[str, str] = {
    "container_name": "orch names containers PROJECT-SERVICE-REPLICA",
    "domainname": "not set",
    "tty": "no TTY is allocated",
    "stdin_open": "stdin is not kept open",
    "logging": "the node engine's default log driver is used",
    "attach": "not applicable",
    "develop": "not applicable",
    "annotations": "not set",
    "dns": "the node engine's DNS settings are used",
    "dns_opt": "the node engine's DNS settings are used",
    "dns_search": "the node engine's DNS settings are used",
    "external_links": "not supported",
    "label_file": "not read",
    "mac_address": "not set",
    "mem_swappiness": "not set",
    "memswap_limit": "not set",
    "oom_kill_disable": "not set",
    "oom_score_adj": "not set",
    "cpu_count": "not set",
    "cpu_percent": "not set",
    "cpu_period": "not set",
    "cpu_quota": "not set",
    "cpu_rt_period": "not set",
    "cpu_rt_runtime": "not set",
    "cpu_shares": "not set",
    "cpuset": "not set",
    "blkio_config": "not set",
    "platform": "each node pulls its own platform",
    "pull_refresh_after": "not supported",
    "storage_opt": "not set",
    "sysctls": "not set",
    "ulimits": "the engine's defaults are used",
}


def ignored_note(key: str) -> str:
    return IGNORED.get(key) or _EXTRA_IGNORED.get(key, "not supported")


_EXTRA_IGNORED = {
    "deploy.rollback_config": "a rollback puts back the previous release's kept containers, all of a "
                              "service's replicas at once on each node",
    "deploy.labels": "service labels (Swarm) have no meaning here; use labels:",
    "deploy.endpoint_mode": "not applicable",
    "deploy.placement.preferences": "replicas are spread evenly",
    "deploy.placement.max_replicas_per_node": "not enforced",
    "deploy.restart_policy.delay": "the engine's restart back-off is used",
    "deploy.restart_policy.window": "not supported",
    "deploy.resources.reservations.cpus": "not set",
    "healthcheck.start_interval": "not supported by the node engines",
    "networks.ipv4_address": "addresses are assigned by the engine",
    "networks.ipv6_address": "addresses are assigned by the engine",
    "networks.link_local_ips": "not set",
    "networks.mac_address": "not set",
    "networks.driver_opts": "not set",
    "networks.ipam": "the engine assigns the subnet",
    "networks.enable_ipv6": "not set",
    "volumes.nocopy": "not set",
    "volumes.subpath": "not supported",
    "volumes.bind.propagation": "not set",
    "volumes.bind.selinux": "not set",
    "volumes.tmpfs.size": "not set",
    "ports.mode": "ports are bound on the node that runs the replica",
    "links.alias": "the service name resolves; link aliases do not",
    "tmpfs.options": "mount options are not set",
}


def x_orch_warnings(value: Any, service: str | None = None) -> list[str]:
    """Warnings for x-orch keys orch does not read: at the top level (settings belong in
    a service), and unknown keys of a service (with the nearest known one)."""
    import difflib

    from orchestrator.core.rollout import X_ORCH_KEYS

    if service is None:
        return ["x-orch at the top level is not read by orch (x-orch settings belong in a service); it is ignored"]
    if not isinstance(value, dict) or not value:
        return [f"{service}: x-orch is not read by orch unless it is a mapping of known settings ("
                f"{', '.join('x-orch.' + k for k in X_ORCH_KEYS)}); it is ignored"]
    out = []
    for key in sorted(value, key=str):
        if key in X_ORCH_KEYS:
            continue
        near = difflib.get_close_matches(str(key), list(X_ORCH_KEYS), n=1, cutoff=0.6)
        hint = f" (did you mean x-orch.{near[0]}?)" if near else ""
        out.append(f"{service}: x-orch.{key} is not a setting orch knows{hint}; it is ignored")
    return out


# Keys read from Service.other and mapped onto the container.
_MAPPED_OTHER = {"cpus", "mem_limit", "mem_reservation", "pids_limit", "shm_size", "pull_policy", "tmpfs"}


def service_problem(project: Any, service: Any, key: str, message: str, fix: str | None = None) -> Problem:
    return project.problem(message, f"services.{service.name}.{key}" if key else f"services.{service.name}", fix=fix)


class ServiceChecks:
    """One Compose service being compiled (orchestrator.core.specs.compile._Compiler, made of
    one mixin per Compose area): the service, its project, and where refused keys (problems)
    and ignored ones go."""

    def __init__(self, project: Any, service: Any, problems: list[Problem], ignored: dict[str, list[str]],
                 env: str = "", sources: Sources | None = None):
        self.project = project
        self.sources = sources
        self.env = env
        self.s = service
        self.problems = problems
        self.ignored = ignored

    def refuse(self, key: str, message: str, fix: str | None = None) -> None:
        self.problems.append(service_problem(self.project, self.s, key, message, fix))

    def ignore(self, key: str) -> None:
        self.ignored.setdefault(key, []).append(self.s.name)

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

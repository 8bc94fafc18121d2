"""The Compose keys orch cannot honour on remote nodes: refused (`REFUSED`: running without
them would run something else, or less safely) or ignored with one warning per key
(`IGNORED`, and the notes of ignored sub-keys); and the warnings for `x-orch` keys orch does
not read. docs/compose-support.md lists them (a unit test keeps it in step).
"""

from __future__ import annotations

from typing import Any

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


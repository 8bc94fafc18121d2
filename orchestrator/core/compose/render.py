"""The project as plain data (to_dict, JSON-able) and YAML (to_yaml), like
`docker compose config`.

Shape: top-level name, services (sorted by name), networks, volumes, secrets, configs
(always present, possibly empty), then x-* extensions. Inside, a key that is absent
means "unset"; entries of ports, volumes, depends_on, secrets and configs always carry
their main keys (ports: target, published, protocol, host_ip, mode; volumes: type,
source, target, read_only; depends_on: condition, required, restart; secrets/configs:
source, target). Durations are rendered the way Compose prints them ("1m30s"), sizes
as integer bytes.
"""

from __future__ import annotations

from typing import Any

import yaml

from .model import (
    BuildConfig,
    Deploy,
    FileRef,
    Healthcheck,
    Network,
    PortMapping,
    Project,
    ResourceSpec,
    Secret,
    Service,
    ServiceNetwork,
    UpdateConfig,
    Volume,
    VolumeMount,
)
from .units import format_duration


def _set(d: dict, key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (dict, list)) and not value:
        return
    d[key] = value


def port_to_dict(p: PortMapping) -> dict:
    d = {"target": p.target, "published": p.published, "protocol": p.protocol,
         "host_ip": p.host_ip, "mode": p.mode}
    _set(d, "name", p.name)
    _set(d, "app_protocol", p.app_protocol)
    return d


def volume_to_dict(v: VolumeMount) -> dict:
    d: dict = {"type": v.type, "source": v.source, "target": v.target, "read_only": v.read_only}
    _set(d, "consistency", v.consistency)
    bind: dict = {}
    _set(bind, "propagation", v.propagation)
    _set(bind, "create_host_path", v.create_host_path)
    _set(bind, "selinux", v.selinux)
    _set(d, "bind", bind)
    vol: dict = {}
    _set(vol, "nocopy", v.nocopy)
    _set(vol, "subpath", v.subpath)
    _set(d, "volume", vol)
    tmpfs: dict = {}
    _set(tmpfs, "size", v.tmpfs_size)
    _set(tmpfs, "mode", v.tmpfs_mode)
    _set(d, "tmpfs", tmpfs)
    return d


def ref_to_dict(r: FileRef) -> dict:
    d: dict = {"source": r.source, "target": r.target}
    _set(d, "uid", r.uid)
    _set(d, "gid", r.gid)
    _set(d, "mode", r.mode)
    return d


def build_to_dict(b: BuildConfig) -> dict:
    d: dict = {"context": b.context}
    _set(d, "dockerfile", b.dockerfile)
    _set(d, "dockerfile_inline", b.dockerfile_inline)
    _set(d, "target", b.target)
    _set(d, "args", dict(b.args))
    _set(d, "labels", dict(b.labels))
    _set(d, "cache_from", list(b.cache_from))
    _set(d, "cache_to", list(b.cache_to))
    _set(d, "network", b.network)
    _set(d, "shm_size", b.shm_size)
    _set(d, "platforms", list(b.platforms))
    _set(d, "tags", list(b.tags))
    _set(d, "secrets", [ref_to_dict(r) for r in b.secrets])
    _set(d, "pull", b.pull)
    _set(d, "no_cache", b.no_cache)
    _set(d, "additional_contexts", dict(b.additional_contexts))
    for k, v in b.other.items():
        _set(d, k, v)
    return d


def healthcheck_to_dict(h: Healthcheck) -> dict:
    d: dict = {}
    _set(d, "test", list(h.test) if h.test is not None else None)
    _set(d, "interval", format_duration(h.interval))
    _set(d, "timeout", format_duration(h.timeout))
    _set(d, "retries", h.retries)
    _set(d, "start_period", format_duration(h.start_period))
    _set(d, "start_interval", format_duration(h.start_interval))
    if h.disable:
        d["disable"] = True
    return d


def _resources(r: ResourceSpec) -> dict:
    d: dict = {}
    _set(d, "cpus", r.cpus)
    _set(d, "memory", r.memory)
    _set(d, "pids", r.pids)
    _set(d, "devices", r.devices)
    _set(d, "generic_resources", r.generic_resources)
    return d


def _update(u: UpdateConfig) -> dict:
    d: dict = {}
    _set(d, "parallelism", u.parallelism)
    _set(d, "delay", format_duration(u.delay))
    _set(d, "failure_action", u.failure_action)
    _set(d, "monitor", format_duration(u.monitor))
    _set(d, "max_failure_ratio", u.max_failure_ratio)
    _set(d, "order", u.order)
    return d


def deploy_to_dict(dep: Deploy) -> dict:
    d: dict = {}
    _set(d, "mode", dep.mode)
    _set(d, "replicas", dep.replicas)
    _set(d, "labels", dict(dep.labels))
    res = {k: _resources(v) for k, v in dep.resources.items()}
    _set(d, "resources", res)
    if dep.restart_policy is not None:
        rp = dep.restart_policy
        rd: dict = {}
        _set(rd, "condition", rp.condition)
        _set(rd, "delay", format_duration(rp.delay))
        _set(rd, "max_attempts", rp.max_attempts)
        _set(rd, "window", format_duration(rp.window))
        d["restart_policy"] = rd
    if dep.update_config is not None:
        d["update_config"] = _update(dep.update_config)
    if dep.rollback_config is not None:
        d["rollback_config"] = _update(dep.rollback_config)
    if dep.placement is not None:
        pd: dict = {}
        _set(pd, "constraints", list(dep.placement.constraints))
        _set(pd, "preferences", list(dep.placement.preferences))
        _set(pd, "max_replicas_per_node", dep.placement.max_replicas_per_node)
        d["placement"] = pd
    _set(d, "endpoint_mode", dep.endpoint_mode)
    return d


def _service_network(n: ServiceNetwork | None) -> dict | None:
    if n is None:
        return None
    d: dict = {}
    _set(d, "aliases", list(n.aliases))
    _set(d, "ipv4_address", n.ipv4_address)
    _set(d, "ipv6_address", n.ipv6_address)
    _set(d, "priority", n.priority)
    for k, v in n.other.items():
        _set(d, k, v)
    return d or None


def service_to_dict(s: Service) -> dict:
    d: dict = {}
    if s.build is not None:
        d["build"] = build_to_dict(s.build)
    _set(d, "cap_add", list(s.cap_add))
    _set(d, "cap_drop", list(s.cap_drop))
    if s.command is not None:
        d["command"] = list(s.command)
    _set(d, "configs", [ref_to_dict(r) for r in s.configs])
    _set(d, "container_name", s.container_name)
    if s.depends_on:
        d["depends_on"] = {
            k: {"condition": v.condition, "required": v.required, "restart": v.restart}
            for k, v in s.depends_on.items()
        }
    if s.deploy is not None:
        d["deploy"] = deploy_to_dict(s.deploy)
    _set(d, "domainname", s.domainname)
    if s.entrypoint is not None:
        d["entrypoint"] = list(s.entrypoint)
    _set(d, "env_file", [{"path": e.path, "required": e.required} for e in s.env_file])
    _set(d, "environment", dict(s.environment))
    _set(d, "expose", list(s.expose))
    _set(d, "extra_hosts", list(s.extra_hosts))
    if s.healthcheck is not None:
        d["healthcheck"] = healthcheck_to_dict(s.healthcheck)
    _set(d, "hostname", s.hostname)
    _set(d, "image", s.image)
    _set(d, "init", s.init)
    _set(d, "ipc", s.ipc)
    _set(d, "labels", dict(s.labels))
    _set(d, "links", list(s.links))
    if s.logging is not None:
        lg: dict = {}
        _set(lg, "driver", s.logging.driver)
        _set(lg, "options", dict(s.logging.options))
        d["logging"] = lg
    _set(d, "network_mode", s.network_mode)
    if s.networks:
        d["networks"] = {k: _service_network(v) for k, v in s.networks.items()}
    _set(d, "pid", s.pid)
    _set(d, "ports", [port_to_dict(p) for p in s.ports])
    _set(d, "privileged", s.privileged)
    _set(d, "profiles", list(s.profiles))
    _set(d, "read_only", s.read_only)
    _set(d, "restart", s.restart)
    _set(d, "scale", s.scale)
    _set(d, "secrets", [ref_to_dict(r) for r in s.secrets])
    _set(d, "stdin_open", s.stdin_open)
    _set(d, "stop_grace_period", format_duration(s.stop_grace_period))
    _set(d, "stop_signal", s.stop_signal)
    _set(d, "tty", s.tty)
    _set(d, "user", s.user)
    _set(d, "volumes", [volume_to_dict(v) for v in s.volumes])
    _set(d, "volumes_from", list(s.volumes_from))
    _set(d, "working_dir", s.working_dir)
    for k, v in s.other.items():
        d[k] = v
    out = dict(sorted(d.items()))
    for k, v in s.extensions.items():
        out[k] = v
    return out


def network_to_dict(n: Network) -> dict:
    d: dict = {"name": n.name}
    _set(d, "driver", n.driver)
    _set(d, "driver_opts", dict(n.driver_opts))
    if n.external:
        d["external"] = True
    _set(d, "internal", n.internal)
    _set(d, "attachable", n.attachable)
    _set(d, "enable_ipv6", n.enable_ipv6)
    _set(d, "ipam", n.ipam)
    _set(d, "labels", dict(n.labels))
    for k, v in n.other.items():
        d[k] = v
    return d


def volume_def_to_dict(v: Volume) -> dict:
    d: dict = {"name": v.name}
    _set(d, "driver", v.driver)
    _set(d, "driver_opts", dict(v.driver_opts))
    if v.external:
        d["external"] = True
    _set(d, "labels", dict(v.labels))
    for k, val in v.other.items():
        d[k] = val
    return d


def secret_to_dict(s: Secret) -> dict:
    d: dict = {"name": s.name}
    _set(d, "file", s.file)
    _set(d, "environment", s.environment)
    _set(d, "content", s.content)
    if s.external:
        d["external"] = True
    _set(d, "labels", dict(s.labels))
    for k, v in s.other.items():
        d[k] = v
    return d


def project_to_dict(p: Project) -> dict:
    out: dict = {
        "name": p.name,
        "services": {k: service_to_dict(p.services[k]) for k in sorted(p.services)},
        "networks": {k: network_to_dict(p.networks[k]) for k in sorted(p.networks)},
        "volumes": {k: volume_def_to_dict(p.volumes[k]) for k in sorted(p.volumes)},
        "secrets": {k: secret_to_dict(p.secrets[k]) for k in sorted(p.secrets)},
        "configs": {k: secret_to_dict(p.configs[k]) for k in sorted(p.configs)},
    }
    for k, v in p.extensions.items():
        out[k] = v
    return out


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def escape_dollars(value: Any) -> Any:
    """'$' -> '$$' in every string value, so the YAML is a Compose file that
    interpolates back to the same values (as `docker compose config` does)."""
    if isinstance(value, str):
        return value.replace("$", "$$") if "$" in value else value
    if isinstance(value, dict):
        return {k: escape_dollars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_dollars(v) for v in value]
    return value


def project_to_yaml(p: Project) -> str:
    """The resolved project as a Compose file (literal `$` written as `$$`)."""
    return dict_to_yaml(project_to_dict(p))


def dict_to_yaml(tree: dict) -> str:
    """A project_to_dict() tree (e.g. with its secrets masked) as a Compose file."""
    return yaml.dump(escape_dollars(tree), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=1000)

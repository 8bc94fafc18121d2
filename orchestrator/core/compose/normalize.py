"""Raw (merged, validated) tree -> typed model in canonical form.

Also the semantic checks the schema cannot express: port and volume syntax,
durations, sizes, healthcheck test forms, restart policies, scale vs replicas. Cross
references between services and top-level resources are checked in checks.py.

    normalize.py          Normalizer: a service as a whole, networks, volumes, secrets, configs
    normalize_service.py  ServiceKeys: the per-key normalizers of a service
    ports_volumes.py      ports and volumes, short syntax (parse_port, parse_volume) and long
    coerce.py             lenient scalar and list coercions (as_str, as_bool, kv, ...)
"""

from __future__ import annotations

from typing import Any, Mapping

from orchestrator.limits import SECRET_MAX_BYTES, check_file
from orchestrator.core.yamlsrc import Loc, YMap, to_plain

from .coerce import as_bool, as_int, as_str, kv, str_list, unique
from .model import Logging, Network, Secret, Service, Volume
from .normalize_service import ServiceKeys
from .problems import Collector


class Normalizer(ServiceKeys):
    """Raw (merged, validated) tree -> model, collecting problems; one per project load."""

    def __init__(self, project_name: str, variables: Mapping[str, str], problems: Collector,
                 working_dir=None):
        self.project = project_name
        self.variables = variables
        self.problems = problems
        self._display = working_dir  # env files are named relative to it in messages

    # -- services ---------------------------------------------------------------------
    def service(self, name: str, raw: Any, loc: Loc | None, enabled: bool) -> Service:
        s = Service(name=name, loc=loc)
        if not isinstance(raw, YMap):
            return s
        path = ("services", name)
        get = raw.get
        s.image = as_str(get("image"))
        if "build" in raw:
            s.build = self.build(raw, path)
        s.command = self.command(raw, "command", path)
        s.entrypoint = self.command(raw, "entrypoint", path)
        if "env_file" in raw:
            s.env_file = self.env_files(raw, path)
        env: dict[str, str | None] = {}
        if enabled and s.env_file:
            env.update(self.read_env_files(s.env_file, raw, path))
        for k, v in kv(get("environment")).items():
            if v is None:
                found = self.variables.get(k)
                if found is not None:
                    v = found
                elif k in env:
                    continue
            env[k] = v
        s.environment = env
        if "ports" in raw:
            s.ports = self.ports(raw["ports"], path + ("ports",))
        s.expose = unique(str_list(get("expose")))
        if "volumes" in raw:
            s.volumes = self.volumes(raw["volumes"], path + ("volumes",))
        s.volumes_from = str_list(get("volumes_from"))
        s.network_mode = as_str(get("network_mode"))
        s.ipc = as_str(get("ipc"))
        s.pid = as_str(get("pid"))
        s.links = unique(str_list(get("links")))
        s.networks = self.service_networks(raw, path, s.network_mode)
        if "depends_on" in raw:
            s.depends_on = self.depends_on(raw["depends_on"], path + ("depends_on",))
        if isinstance(get("healthcheck"), YMap):
            s.healthcheck = self.healthcheck(raw["healthcheck"], path + ("healthcheck",))
        s.restart = self.restart(raw, path)
        if isinstance(get("deploy"), YMap):
            s.deploy = self.deploy(raw["deploy"], path + ("deploy",))
        s.scale = as_int(get("scale"))
        if s.scale is not None and s.scale < 0:
            self.err(raw, "scale", path + ("scale",), "scale must not be negative",
                     fix="write scale: 0 or more")
        if (s.scale is not None and s.deploy is not None and s.deploy.replicas is not None
                and s.scale != s.deploy.replicas):
            self.err(raw, "scale", path + ("scale",),
                     f"scale ({s.scale}) and deploy.replicas ({s.deploy.replicas}) disagree",
                     fix="set only one of them")
        s.labels = {k: ("" if v is None else v) for k, v in kv(get("labels")).items()}
        s.profiles = unique(str_list(get("profiles")))
        if "secrets" in raw:
            s.secrets = self.file_refs(raw["secrets"], path + ("secrets",), "/run/secrets/")
        if "configs" in raw:
            s.configs = self.file_refs(raw["configs"], path + ("configs",), "/")
        s.container_name = as_str(get("container_name"))
        s.hostname = as_str(get("hostname"))
        s.domainname = as_str(get("domainname"))
        s.user = as_str(get("user"))
        s.working_dir = as_str(get("working_dir"))
        if "extra_hosts" in raw:
            s.extra_hosts = self.extra_hosts(raw["extra_hosts"])
        s.cap_add = unique(str_list(get("cap_add")))
        s.cap_drop = unique(str_list(get("cap_drop")))
        s.stop_signal = as_str(get("stop_signal"))
        s.stop_grace_period = self.duration(raw, "stop_grace_period", path)
        if isinstance(get("logging"), YMap):
            lg = raw["logging"]
            opts = lg.get("options")
            s.logging = Logging(
                driver=as_str(lg.get("driver")),
                options={str(k): as_str(v) for k, v in opts.items()} if isinstance(opts, dict) else {},
            )
        for flag in ("init", "tty", "stdin_open", "privileged", "read_only"):
            if flag in raw:
                setattr(s, flag, as_bool(raw[flag]))
        for k, v in raw.items():
            if k in _MODELLED:
                continue
            if isinstance(k, str) and k.startswith("x-"):
                s.extensions[k] = to_plain(v)
            else:
                s.other[k] = self.other_value(k, v)
        return s

    def other_value(self, key: str, v: Any) -> Any:
        if key in ("dns", "dns_search", "tmpfs", "security_opt", "dns_opt", "external_links",
                   "device_cgroup_rules"):
            return unique(str_list(v))
        if key in ("sysctls", "annotations"):
            return kv(v, none_as="")
        return to_plain(v)

    # -- top level ----------------------------------------------------------------------
    def network(self, key: str, raw: Any, loc: Loc | None) -> Network:
        cfg = raw if isinstance(raw, dict) else {}
        external, ext_name = _external(cfg.get("external"))
        name = as_str(cfg.get("name")) or ext_name or (key if external else f"{self.project}_{key}")
        net = Network(name=name, driver=as_str(cfg.get("driver")), external=external, loc=loc)
        opts = cfg.get("driver_opts")
        if isinstance(opts, dict):
            net.driver_opts = {str(k): as_str(v) for k, v in opts.items()}
        for flag in ("internal", "attachable", "enable_ipv6"):
            if flag in cfg:
                setattr(net, flag, as_bool(cfg[flag]))
        if isinstance(cfg.get("ipam"), dict):
            net.ipam = to_plain(cfg["ipam"])
        net.labels = {k: ("" if v is None else v) for k, v in kv(cfg.get("labels")).items()}
        for k, v in cfg.items():
            if k not in ("name", "driver", "driver_opts", "external", "internal", "attachable",
                         "enable_ipv6", "ipam", "labels"):
                net.other[k] = to_plain(v)
        return net

    def volume(self, key: str, raw: Any, loc: Loc | None) -> Volume:
        cfg = raw if isinstance(raw, dict) else {}
        external, ext_name = _external(cfg.get("external"))
        name = as_str(cfg.get("name")) or ext_name or (key if external else f"{self.project}_{key}")
        vol = Volume(name=name, driver=as_str(cfg.get("driver")), external=external, loc=loc)
        opts = cfg.get("driver_opts")
        if isinstance(opts, dict):
            vol.driver_opts = {str(k): as_str(v) for k, v in opts.items()}
        vol.labels = {k: ("" if v is None else v) for k, v in kv(cfg.get("labels")).items()}
        for k, v in cfg.items():
            if k not in ("name", "driver", "driver_opts", "external", "labels"):
                vol.other[k] = to_plain(v)
        return vol

    def secret(self, section: str, key: str, raw: Any, loc: Loc | None) -> Secret:
        cfg = raw if isinstance(raw, dict) else {}
        external, ext_name = _external(cfg.get("external"))
        name = as_str(cfg.get("name")) or ext_name or (key if external else f"{self.project}_{key}")
        sec = Secret(name=name, file=as_str(cfg.get("file")),
                     environment=as_str(cfg.get("environment")),
                     content=as_str(cfg.get("content")), external=external, loc=loc)
        sec.labels = {k: ("" if v is None else v) for k, v in kv(cfg.get("labels")).items()}
        for k, v in cfg.items():
            if k not in ("name", "file", "environment", "content", "external", "labels"):
                sec.other[k] = to_plain(v)
        sources = [x for x in (sec.file, sec.environment, sec.content) if x is not None]
        singular = section[:-1]
        if not sources and not external:
            self.problems.error(
                f"{singular} {key!r} has no source", loc=loc, path=(section, key),
                fix="set file: PATH, environment: VARIABLE" + (", content: TEXT" if section == "configs" else "")
                    + " or external: true",
            )
        elif len(sources) > 1:
            self.problems.error(
                f"{singular} {key!r} has more than one source", loc=loc, path=(section, key),
                fix="keep only one of file:, environment:" + (", content:" if section == "configs" else ""),
            )
        elif sec.file is not None and (refused := check_file(sec.file, SECRET_MAX_BYTES, f"a {singular} file")):
            floc = raw.value_loc("file") if isinstance(raw, YMap) else loc
            self.problems.error(f"{singular} {key!r} cannot use {sec.file}: {refused.strerror}", loc=floc,
                                path=(section, key, "file"), fix=refused.fix)
        elif sec.environment is not None and sec.environment not in self.variables:
            self.problems.warn(
                f"{singular} {key!r} reads the variable {sec.environment}, which is not set",
                loc=loc, path=(section, key), fix=f"set {sec.environment} in the environment",
            )
        return sec


def _external(v: Any) -> tuple[bool, str | None]:
    if isinstance(v, dict):
        return True, as_str(v.get("name"))
    b = as_bool(v) if v is not None else False
    return bool(b), None


_MODELLED = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose",
    "volumes", "volumes_from", "networks", "network_mode", "ipc", "pid", "links", "depends_on",
    "healthcheck", "restart", "deploy", "scale", "labels", "profiles", "secrets", "configs",
    "container_name", "hostname", "domainname", "user", "working_dir", "extra_hosts", "cap_add",
    "cap_drop", "stop_signal", "stop_grace_period", "logging", "init", "tty", "stdin_open",
    "privileged", "read_only", "extends",
}

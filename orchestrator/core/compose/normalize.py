"""Raw (merged, validated) tree -> typed model in canonical form.

Also the semantic checks the schema cannot express: port and volume syntax,
durations, sizes, healthcheck test forms, restart policies, scale vs replicas. Cross
references between services and top-level resources are checked in checks.py.
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Mapping

from orchestrator.limits import SECRET_MAX_BYTES, check_file, present
from orchestrator.core.yamlsrc import Loc, YList, YMap, to_plain

from .envfile import read_dotenv
from .model import (
    BuildConfig,
    Deploy,
    DependsOn,
    EnvFile,
    FileRef,
    Healthcheck,
    Logging,
    Network,
    Placement,
    PortMapping,
    ResourceSpec,
    RestartPolicy,
    Secret,
    Service,
    ServiceNetwork,
    UpdateConfig,
    Volume,
    VolumeMount,
)
from .paths import is_host_path, split_volume_spec
from .problems import Collector, did_you_mean
from .schema import FALSE_WORDS, INT_RE, NUM_RE, TRUE_WORDS
from .units import parse_bytes, parse_duration

PROTOCOLS = ("tcp", "udp", "sctp")
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
PROPAGATIONS = ("shared", "rshared", "slave", "rslave", "private", "rprivate")
CONSISTENCY = ("consistent", "cached", "delegated", "default")


# --------------------------------------------------------------------------- scalars
def as_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, (str, int)):
        return str(v)
    return None


def as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and INT_RE.match(v.strip()):
        return int(v.strip())
    return None


def as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and NUM_RE.match(v.strip()):
        return float(v.strip())
    return None


def as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.strip().lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
    if isinstance(v, int):
        return bool(v)
    return None


def str_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return [as_str(v)]  # type: ignore[list-item]
    if isinstance(v, list):
        return [s for s in (as_str(x) for x in v) if s is not None]
    return []


def unique(items: list) -> list:
    seen = set()
    out = []
    for i in items:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def kv(v: Any, *, none_as: str | None = None) -> dict[str, str | None]:
    """A map or a KEY=VALUE list as {key: string or None}; later keys win."""
    out: dict[str, str | None] = {}
    if isinstance(v, dict):
        for k, val in v.items():
            s = as_str(val)
            out[str(k)] = none_as if s is None else s
    elif isinstance(v, list):
        for item in v:
            if isinstance(item, str):
                k, sep, val = item.partition("=")
                out[k] = val if sep else none_as
    return out


def dedupe_by(items: list, key) -> list:
    """Keep the first position and the last value for each key (Compose's unicity)."""
    index: dict = {}
    out: list = []
    for item in items:
        k = key(item)
        if k in index:
            out[index[k]] = item
        else:
            index[k] = len(out)
            out.append(item)
    return out


# --------------------------------------------------------------------------- ports
class SyntaxProblem(ValueError):
    pass


def _port_range(text: str, what: str, spec: str) -> tuple[int, int]:
    a, sep, b = text.partition("-")
    if not a.isdigit() or (sep and not b.isdigit()):
        raise SyntaxProblem(f"{what} port {text!r} is not a number or a range like 8000-8010")
    lo, hi = int(a), int(b) if sep else int(a)
    for p in (lo, hi):
        if not 1 <= p <= 65535:
            raise SyntaxProblem(f"port {p} is out of range 1-65535")
    if hi < lo:
        raise SyntaxProblem(f"port range {text!r} ends before it starts")
    return lo, hi


def parse_port(spec: Any) -> list[PortMapping]:
    """Short syntax `[[IP:]PUBLISHED:]TARGET[/PROTOCOL]` (ranges allowed) -> long form."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= 65535:
            raise SyntaxProblem(f"port {spec} is out of range 1-65535")
        return [PortMapping(target=spec)]
    text = str(spec).strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
        protocol = protocol.lower()
        if protocol not in PROTOCOLS:
            raise SyntaxProblem(f"unknown protocol {protocol!r} (use tcp, udp or sctp)")
    host_ip = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise SyntaxProblem("an IPv6 address must be written [ADDRESS]:PUBLISHED:TARGET")
        host_ip = text[1:end]
        rest = text[end + 2:].split(":")
        if len(rest) != 2:
            raise SyntaxProblem("expected [ADDRESS]:PUBLISHED:TARGET")
        published, target = rest
    else:
        parts = text.split(":")
        target = parts[-1]
        published = parts[-2] if len(parts) >= 2 else ""
        if len(parts) >= 3:
            host_ip = ":".join(parts[:-2]).strip("[]")
    if not target:
        raise SyntaxProblem("the container port is missing")
    t_lo, t_hi = _port_range(target, "container", str(spec))
    if published:
        p_lo, p_hi = _port_range(published, "published", str(spec))
    else:
        p_lo = p_hi = None
    host_ip = host_ip or None
    if t_lo == t_hi:
        pub = None if p_lo is None else (str(p_lo) if p_lo == p_hi else f"{p_lo}-{p_hi}")
        return [PortMapping(target=t_lo, published=pub, protocol=protocol, host_ip=host_ip)]
    count = t_hi - t_lo + 1
    if p_lo is not None and p_hi - p_lo + 1 != count:
        raise SyntaxProblem(
            f"the published range {published} and the container range {target} differ in length")
    return [
        PortMapping(target=t_lo + i, published=None if p_lo is None else str(p_lo + i),
                    protocol=protocol, host_ip=host_ip)
        for i in range(count)
    ]


def port_key(p: PortMapping) -> tuple:
    return (p.host_ip or "", p.published or "", p.target, p.protocol)


# --------------------------------------------------------------------------- volumes
def parse_volume(spec: str) -> VolumeMount:
    """Short syntax `[SOURCE:]TARGET[:OPTIONS]` -> long form."""
    source, target, mode = split_volume_spec(spec)
    if source == "":
        raise SyntaxProblem("the source before ':' is empty")
    if not target:
        raise SyntaxProblem("the container path is missing")
    if source is None:
        vm = VolumeMount(type="volume", source=None, target=target)
    elif is_host_path(source):
        vm = VolumeMount(type="bind", source=source, target=target, create_host_path=True)
    else:
        vm = VolumeMount(type="volume", source=source, target=target)
    if mode:
        for opt in mode.split(","):
            if opt == "ro":
                vm.read_only = True
            elif opt == "rw":
                vm.read_only = False
            elif opt in ("z", "Z"):
                vm.selinux = opt
            elif opt == "nocopy":
                vm.nocopy = True
            elif opt in PROPAGATIONS:
                vm.propagation = opt
            elif opt in CONSISTENCY:
                vm.consistency = opt
            else:
                near = did_you_mean(opt, ("ro", "rw", "z", "Z", "nocopy") + PROPAGATIONS)
                hint = f" (did you mean {near!r}?)" if near else ""
                raise SyntaxProblem(f"unknown volume option {opt!r}{hint}")
    _check_target(target)
    return vm


def _check_target(target: str) -> None:
    if not target.startswith("/"):
        raise SyntaxProblem(f"the container path {target!r} must be absolute (start with /)")


# --------------------------------------------------------------------------- normalizer
class Normalizer:
    def __init__(self, project_name: str, variables: Mapping[str, str], problems: Collector,
                 working_dir=None):
        self.project = project_name
        self.variables = variables
        self.problems = problems
        self._display = working_dir  # env files are named relative to it in messages

    # -- helpers ----------------------------------------------------------------------
    def err(self, node: Any, key: Any, path: tuple, message: str, fix: str | None = None,
            value: bool = True) -> None:
        loc = None
        if isinstance(node, (YMap, YList)):
            loc = node.value_loc(key) if value else node.loc_of(key)
        self.problems.error(message, loc=loc, path=path, fix=fix)

    def duration(self, node: YMap, key: str, path: tuple) -> float | None:
        v = node.get(key)
        if v is None:
            return None
        try:
            return parse_duration(v)
        except ValueError as e:
            self.err(node, key, path + (key,), f"invalid duration {v!r}: {e}",
                     fix=f"write a duration with a unit, e.g. {key}: 30s (units: ms, s, m, h)")
            return None

    def size(self, node: YMap, key: str, path: tuple) -> int | None:
        v = node.get(key)
        if v is None:
            return None
        try:
            return parse_bytes(v)
        except ValueError:
            self.err(node, key, path + (key,), f"invalid size {v!r}",
                     fix=f"write a size like {key}: 512m (units: b, k, m, g)")
            return None

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

    def build(self, raw: YMap, path: tuple) -> BuildConfig | None:
        b = raw["build"]
        path = path + ("build",)
        if isinstance(b, str):
            return BuildConfig(context=b)
        if not isinstance(b, YMap):
            return None
        out = BuildConfig(context=as_str(b.get("context")) or ".")
        if "dockerfile_inline" in b:
            out.dockerfile_inline = as_str(b["dockerfile_inline"])
            out.dockerfile = as_str(b.get("dockerfile"))
        elif b.get("dockerfile") is not None:
            out.dockerfile = as_str(b["dockerfile"])
        out.target = as_str(b.get("target"))
        args = {}
        for k, v in kv(b.get("args")).items():
            if v is None:
                v = self.variables.get(k)
            args[k] = v
        out.args = args
        out.labels = {k: ("" if v is None else v) for k, v in kv(b.get("labels")).items()}
        out.cache_from = str_list(b.get("cache_from"))
        out.cache_to = str_list(b.get("cache_to"))
        out.network = as_str(b.get("network"))
        out.shm_size = self.size(b, "shm_size", path) if "shm_size" in b else None
        out.platforms = unique(str_list(b.get("platforms")))
        out.tags = unique(str_list(b.get("tags")))
        if "secrets" in b:
            out.secrets = self.file_refs(b["secrets"], path + ("secrets",), "/run/secrets/")
        out.pull = as_bool(b["pull"]) if "pull" in b else None
        out.no_cache = as_bool(b["no_cache"]) if "no_cache" in b else None
        out.additional_contexts = {k: v for k, v in kv(b.get("additional_contexts")).items()
                                   if v is not None}
        for k, v in b.items():
            if k not in _BUILD_MODELLED:
                out.other[k] = to_plain(v)
        return out

    def command(self, raw: YMap, key: str, path: tuple) -> list[str] | None:
        if key not in raw:
            return None
        v = raw[key]
        if v is None:
            return None
        if isinstance(v, list):
            return [as_str(x) or "" for x in v]
        text = as_str(v)
        if text is None:
            return None
        try:
            return shlex.split(text)
        except ValueError as e:
            self.err(raw, key, path + (key,), f"cannot split the {key} into words: {e}",
                     fix="close the quote, or write the command as a list: [\"prog\", \"arg\"]")
            return [text]

    def env_files(self, raw: YMap, path: tuple) -> list[EnvFile]:
        v = raw["env_file"]
        out: list[EnvFile] = []
        items = [v] if isinstance(v, str) else (v if isinstance(v, list) else [])
        for item in items:
            if isinstance(item, str):
                out.append(EnvFile(path=item))
            elif isinstance(item, dict) and isinstance(item.get("path"), str):
                req = as_bool(item.get("required")) if "required" in item else True
                out.append(EnvFile(path=item["path"], required=True if req is None else req,
                                   format=as_str(item.get("format"))))
        return dedupe_by(out, lambda e: e.path)

    def read_env_files(self, files: list[EnvFile], raw: YMap, path: tuple) -> dict[str, str]:
        values: dict[str, str] = {}
        loc = raw.value_loc("env_file")
        for ef in files:
            if not present(ef.path):
                if ef.required:
                    self.problems.error(
                        f"env file {ef.path} not found", loc=loc, path=path + ("env_file",),
                        fix="create it, correct the path, or mark it optional: "
                            "env_file: [{path: ..., required: false}]",
                    )
                continue
            try:
                values.update(read_dotenv(ef.path, self._shown(ef.path), self.variables.get))
            except Exception as err:  # InputError
                for p in getattr(err, "problems", []):
                    self.problems.add(p)
        return values

    def _shown(self, path: str) -> str:
        if self._display is not None and path.startswith(str(self._display) + os.sep):
            return os.path.relpath(path, self._display)
        return path

    def ports(self, v: Any, path: tuple) -> list[PortMapping]:
        if not isinstance(v, list):
            return []
        out: list[PortMapping] = []
        for i, item in enumerate(v):
            if isinstance(item, dict):
                pm = self.port_long(item, path + (i,))
                if pm is not None:
                    out.append(pm)
                continue
            if item is None or isinstance(item, (bool, list)):
                continue
            try:
                out.extend(parse_port(item))
            except SyntaxProblem as e:
                self.problems.error(
                    f"invalid port {str(item)!r}: {e}", loc=v.loc_of(i) if isinstance(v, YList) else None,
                    path=path + (i,),
                    fix='write [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL] with ports 1-65535, '
                        'e.g. "8080:80" or "127.0.0.1:8080:80/tcp"',
                )
        return dedupe_by(out, port_key)

    def port_long(self, item: dict, path: tuple) -> PortMapping | None:
        target = as_int(item.get("target"))
        if target is None or not 1 <= target <= 65535:
            if item.get("target") is not None:
                self.err(item, "target", path + ("target",),
                         f"invalid container port {item.get('target')!r}", fix="use a port 1-65535")
            return None
        published = item.get("published")
        pub = as_str(published) if published not in (None, "") else None
        if pub is not None:
            try:
                _port_range(pub, "published", pub)
            except SyntaxProblem as e:
                self.err(item, "published", path + ("published",), f"invalid published port: {e}",
                         fix="use a port 1-65535 or a range like 8000-8010")
        protocol = (as_str(item.get("protocol")) or "tcp").lower()
        if protocol not in PROTOCOLS:
            self.err(item, "protocol", path + ("protocol",), f"unknown protocol {protocol!r}",
                     fix="use tcp, udp or sctp")
        return PortMapping(target=target, published=pub, protocol=protocol,
                           host_ip=as_str(item.get("host_ip")) or None,
                           mode=as_str(item.get("mode")) or "ingress",
                           name=as_str(item.get("name")), app_protocol=as_str(item.get("app_protocol")))

    def volumes(self, v: Any, path: tuple) -> list[VolumeMount]:
        if not isinstance(v, list):
            return []
        out: list[VolumeMount] = []
        for i, item in enumerate(v):
            try:
                if isinstance(item, str):
                    out.append(parse_volume(item))
                elif isinstance(item, dict):
                    vm = self.volume_long(item, path + (i,))
                    if vm is not None:
                        out.append(vm)
            except SyntaxProblem as e:
                self.problems.error(
                    f"invalid volume {item if isinstance(item, str) else 'entry'!r}: {e}",
                    loc=v.loc_of(i) if isinstance(v, YList) else None, path=path + (i,),
                    fix='write SOURCE:TARGET[:ro], e.g. "data:/var/lib/data" or "./conf:/etc/app:ro"',
                )
        return dedupe_by(out, lambda m: m.target)

    def volume_long(self, item: dict, path: tuple) -> VolumeMount | None:
        vtype = as_str(item.get("type"))
        target = as_str(item.get("target"))
        if vtype is None:
            return None
        if not target:
            self.err(item, "target", path, "a volume needs a target (the path in the container)",
                     fix="add target: /path/in/container", value=False)
            return None
        if vtype != "npipe":
            _check_target(target)
        source = as_str(item.get("source")) or None
        vm = VolumeMount(type=vtype, source=source, target=target,
                         read_only=bool(as_bool(item.get("read_only")) or False),
                         consistency=as_str(item.get("consistency")))
        bind = item.get("bind")
        if isinstance(bind, dict):
            vm.propagation = as_str(bind.get("propagation"))
            if "create_host_path" in bind:
                vm.create_host_path = as_bool(bind["create_host_path"])
            vm.selinux = as_str(bind.get("selinux"))
        vol = item.get("volume")
        if isinstance(vol, dict):
            if "nocopy" in vol:
                vm.nocopy = as_bool(vol["nocopy"])
            vm.subpath = as_str(vol.get("subpath"))
        tmpfs = item.get("tmpfs")
        if isinstance(tmpfs, dict):
            if "size" in tmpfs:
                vm.tmpfs_size = self.size(tmpfs, "size", path + ("tmpfs",))
            if "mode" in tmpfs:
                m = tmpfs["mode"]
                vm.tmpfs_mode = m if isinstance(m, int) else (int(m, 8) if isinstance(m, str) and m.isdigit() else None)
        if vtype == "bind" and not source:
            self.err(item, "type", path, "a bind mount needs a source (a host path)",
                     fix="add source: ./path/on/host")
        if vtype == "tmpfs" and source:
            self.err(item, "source", path + ("source",), "a tmpfs mount takes no source",
                     fix="remove source:")
        return vm

    def service_networks(self, raw: YMap, path: tuple, network_mode: str | None) -> dict:
        v = raw.get("networks")
        if v is None:
            return {} if network_mode else {"default": None}
        out: dict[str, ServiceNetwork | None] = {}
        if isinstance(v, list):
            for n in v:
                if isinstance(n, str):
                    out[n] = None
        elif isinstance(v, dict):
            for n, cfg in v.items():
                if isinstance(cfg, dict):
                    sn = ServiceNetwork(
                        aliases=unique(str_list(cfg.get("aliases"))),
                        ipv4_address=as_str(cfg.get("ipv4_address")),
                        ipv6_address=as_str(cfg.get("ipv6_address")),
                        priority=as_int(cfg.get("priority")),
                    )
                    for k, val in cfg.items():
                        if k not in ("aliases", "ipv4_address", "ipv6_address", "priority"):
                            sn.other[k] = to_plain(val)
                    out[str(n)] = sn
                else:
                    out[str(n)] = None
        return out

    def depends_on(self, v: Any, path: tuple) -> dict[str, DependsOn]:
        out: dict[str, DependsOn] = {}
        if isinstance(v, list):
            for name in v:
                if isinstance(name, str):
                    out[name] = DependsOn()
            return out
        if not isinstance(v, dict):
            return out
        for name, cfg in v.items():
            dep = DependsOn()
            if isinstance(cfg, dict):
                cond = cfg.get("condition")
                if cond is not None:
                    dep.condition = as_str(cond) or dep.condition
                if "required" in cfg:
                    r = as_bool(cfg["required"])
                    dep.required = True if r is None else r
                if "restart" in cfg:
                    r = as_bool(cfg["restart"])
                    dep.restart = bool(r)
            out[str(name)] = dep
        return out

    def healthcheck(self, h: YMap, path: tuple) -> Healthcheck:
        hc = Healthcheck()
        test = h.get("test")
        if isinstance(test, str):
            hc.test = ["CMD-SHELL", test]
        elif isinstance(test, list):
            items = [as_str(x) or "" for x in test]
            if items and items[0] not in ("NONE", "CMD", "CMD-SHELL"):
                self.err(h, "test", path + ("test",),
                         f"a healthcheck test list must start with CMD, CMD-SHELL or NONE, not {items[0]!r}",
                         fix='write test: ["CMD", "curl", "-f", "http://localhost"] or test: "curl -f http://localhost"')
            elif items == ["CMD"] or items == ["CMD-SHELL"]:
                self.err(h, "test", path + ("test",), "the healthcheck test has no command",
                         fix='add the command after CMD, e.g. ["CMD", "true"]')
            hc.test = items
        hc.interval = self.duration(h, "interval", path)
        hc.timeout = self.duration(h, "timeout", path)
        hc.start_period = self.duration(h, "start_period", path)
        hc.start_interval = self.duration(h, "start_interval", path)
        if "retries" in h and h["retries"] is not None:
            hc.retries = as_int(h["retries"])
            if hc.retries is None or hc.retries < 0:
                self.err(h, "retries", path + ("retries",), f"invalid retries {h['retries']!r}",
                         fix="write a whole number, e.g. retries: 3")
                hc.retries = None
        hc.disable = bool(as_bool(h.get("disable")) or False)
        if hc.test == ["NONE"]:
            hc.disable = True
        return hc

    def restart(self, raw: YMap, path: tuple) -> str | None:
        v = raw.get("restart")
        if v is None:
            return None
        if v is False:
            return "no"
        text = as_str(v) or ""
        base, _, count = text.partition(":")
        if base not in RESTART_POLICIES or (count and (base != "on-failure" or not count.isdigit())):
            near = did_you_mean(base, RESTART_POLICIES)
            msg = f"invalid restart policy {text!r}"
            fix = "use no, always, on-failure[:N] or unless-stopped"
            if near and near != base:
                msg += f"; did you mean {near!r}?"
            self.err(raw, "restart", path + ("restart",), msg, fix=fix)
        return text

    def deploy(self, d: YMap, path: tuple) -> Deploy:
        out = Deploy(mode=as_str(d.get("mode")), endpoint_mode=as_str(d.get("endpoint_mode")))
        if d.get("replicas") is not None:
            out.replicas = as_int(d["replicas"])
            if out.replicas is not None and out.replicas < 0:
                self.err(d, "replicas", path + ("replicas",), "replicas must not be negative",
                         fix="write replicas: 0 or more")
        out.labels = {k: ("" if v is None else v) for k, v in kv(d.get("labels")).items()}
        res = d.get("resources")
        if isinstance(res, dict):
            for kind in ("limits", "reservations"):
                spec = res.get(kind)
                if isinstance(spec, YMap):
                    p = path + ("resources", kind)
                    rs = ResourceSpec(cpus=as_float(spec.get("cpus")), pids=as_int(spec.get("pids")))
                    rs.memory = self.size(spec, "memory", p) if spec.get("memory") is not None else None
                    if isinstance(spec.get("devices"), list):
                        rs.devices = to_plain(spec["devices"])
                    if isinstance(spec.get("generic_resources"), list):
                        rs.generic_resources = to_plain(spec["generic_resources"])
                    out.resources[kind] = rs
        rp = d.get("restart_policy")
        if isinstance(rp, YMap):
            p = path + ("restart_policy",)
            out.restart_policy = RestartPolicy(
                condition=as_str(rp.get("condition")), delay=self.duration(rp, "delay", p),
                max_attempts=as_int(rp.get("max_attempts")), window=self.duration(rp, "window", p),
            )
        for key in ("update_config", "rollback_config"):
            uc = d.get(key)
            if isinstance(uc, YMap):
                p = path + (key,)
                cfg = UpdateConfig(
                    parallelism=as_int(uc.get("parallelism")), delay=self.duration(uc, "delay", p),
                    failure_action=as_str(uc.get("failure_action")),
                    monitor=self.duration(uc, "monitor", p),
                    max_failure_ratio=as_float(uc.get("max_failure_ratio")),
                    order=as_str(uc.get("order")),
                )
                if cfg.parallelism is not None and cfg.parallelism < 0:
                    self.err(uc, "parallelism", p + ("parallelism",), "parallelism must not be negative",
                             fix="write parallelism: 1 or more (0 = all at once)")
                setattr(out, key, cfg)
        pl = d.get("placement")
        if isinstance(pl, YMap):
            out.placement = Placement(
                constraints=str_list(pl.get("constraints")),
                preferences=to_plain(pl.get("preferences")) or [],
                max_replicas_per_node=as_int(pl.get("max_replicas_per_node")),
            )
            cons = pl.get("constraints")
            if isinstance(cons, YList):
                for i, c in enumerate(cons):
                    if isinstance(c, str) and "==" not in c and "!=" not in c:
                        self.problems.error(
                            f"invalid placement constraint {c!r}", loc=cons.loc_of(i),
                            path=path + ("placement", "constraints", i),
                            fix="write NAME==VALUE or NAME!=VALUE, e.g. node.labels.zone==a",
                        )
        return out

    def file_refs(self, v: Any, path: tuple, prefix: str) -> list[FileRef]:
        out: list[FileRef] = []
        if not isinstance(v, list):
            return out
        for i, item in enumerate(v):
            if isinstance(item, str):
                out.append(FileRef(source=item, target=prefix + item))
            elif isinstance(item, dict) and isinstance(item.get("source"), str):
                src = item["source"]
                target = as_str(item.get("target")) or src
                if not target.startswith("/"):
                    target = prefix + target
                mode = item.get("mode")
                if isinstance(mode, str):
                    try:
                        mode = int(mode, 8)
                    except ValueError:
                        self.err(item, "mode", path + (i, "mode"), f"invalid file mode {mode!r}",
                                 fix="write an octal mode, e.g. mode: 0440")
                        mode = None
                elif isinstance(mode, float):
                    mode = int(mode)
                out.append(FileRef(source=src, target=target, uid=as_str(item.get("uid")),
                                   gid=as_str(item.get("gid")), mode=mode))
        return dedupe_by(out, lambda r: r.target)

    def extra_hosts(self, v: Any) -> list[str]:
        out: list[str] = []
        if isinstance(v, dict):
            for host, ips in v.items():
                for ip in (ips if isinstance(ips, list) else [ips]):
                    out.append(f"{host}={as_str(ip)}")
        elif isinstance(v, list):
            for item in v:
                text = as_str(item) or ""
                if "=" in text:
                    out.append(text)
                else:
                    host, _, ip = text.partition(":")
                    out.append(f"{host}={ip}")
        return unique(out)

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
_BUILD_MODELLED = {
    "context", "dockerfile", "dockerfile_inline", "target", "args", "labels", "cache_from",
    "cache_to", "network", "shm_size", "platforms", "tags", "secrets", "pull", "no_cache",
    "additional_contexts",
}

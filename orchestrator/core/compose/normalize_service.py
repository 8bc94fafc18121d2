"""The per-key normalizers of a service (`ServiceKeys`, the base of normalize.Normalizer):
build, command, env files, networks, depends_on, healthcheck, restart, deploy, secrets and
configs, extra_hosts; ports and volumes come from ports_volumes.PortsVolumes."""

from __future__ import annotations

import os
import shlex
from typing import Any

from orchestrator.limits import present
from orchestrator.core.yamlsrc import YList, YMap, to_plain

from .coerce import as_bool, as_float, as_int, as_str, dedupe_by, kv, str_list, unique
from .envfile import read_dotenv
from .model import (
    BuildConfig, Deploy, DependsOn, EnvFile, FileRef, Healthcheck, Placement, ResourceSpec,
    RestartPolicy, ServiceNetwork, UpdateConfig,
)
from .ports_volumes import PortsVolumes
from .problems import did_you_mean
from .units import parse_bytes, parse_duration

RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")


class ServiceKeys(PortsVolumes):
    """Normalizers of one key each, over the raw (merged, validated) service mapping."""

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


_BUILD_MODELLED = {
    "context", "dockerfile", "dockerfile_inline", "target", "args", "labels", "cache_from",
    "cache_to", "network", "shm_size", "platforms", "tags", "secrets", "pull", "no_cache",
    "additional_contexts",
}

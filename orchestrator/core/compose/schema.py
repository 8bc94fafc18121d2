"""What a Compose file may contain: known keys and expected types (the Compose spec).

A small declarative schema, checked against the merged, interpolated located tree:
unknown keys (with "did you mean"), wrong types, invalid names. Values coming from
interpolation are strings, so integer, number and boolean fields also accept strings
that read as such ("3", "0.5", "true"), like Compose. Semantic checks (port syntax,
durations, references between services) happen in normalize.py.

Leniencies (documented): null is accepted for any optional key and means "unset";
numbers are accepted where a string is expected (user: 1000).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orchestrator.core.yamlsrc import YList, YMap

from .problems import Collector, describe, did_you_mean

NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")
INT_RE = re.compile(r"^[-+]?\d+$")
NUM_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
TRUE_WORDS = {"true", "yes", "y", "on", "1"}
FALSE_WORDS = {"false", "no", "n", "off", "0"}


@dataclass
class Spec:
    kind: str  # string integer number boolean null any map list oneof
    fields: dict[str, "Spec"] | None = None  # map: known keys
    values: "Spec | None" = None  # map: spec of every value of an open map (patternProperties)
    item: "Spec | None" = None  # list
    options: tuple = ()  # oneof
    required: tuple = ()
    enum: tuple = ()
    names: bool = False  # map keys are resource names (checked against NAME_RE)
    what: str = ""  # how the map's keys are called in messages, e.g. "service"
    example: str = ""  # shown in type errors: e.g. "replicas: 2"


def S(kind: str, *, enum: tuple = (), example: str = "") -> Spec:
    return Spec(kind, enum=enum, example=example)


def M(fields: dict | None = None, *, values: Spec | None = None, required: tuple = (),
      names: bool = False, what: str = "", example: str = "") -> Spec:
    return Spec("map", fields=fields, values=values, required=required, names=names, what=what,
                example=example)


def L(item: Spec | None = None, example: str = "") -> Spec:
    return Spec("list", item=item or ANY, example=example)


def Or(*options: Spec, example: str = "") -> Spec:
    return Spec("oneof", options=options, example=example)


ANY = Spec("any")
STR = S("string")
INT = S("integer")
NUM = S("number")
BOOL = S("boolean")
DURATION = S("string", example="10s")
STRINGS = L(STR)
SCALAR = Or(STR, NUM, BOOL, S("null"))
LIST_OR_DICT = Or(M(values=SCALAR), L(STR), example="KEY: value")
STRING_OR_LIST = Or(STR, L(STR))
OPEN_MAP = M(values=ANY)

BUILD = M({
    "context": STR, "dockerfile": STR, "dockerfile_inline": STR, "entitlements": STRINGS,
    "args": LIST_OR_DICT, "ssh": LIST_OR_DICT, "labels": LIST_OR_DICT, "cache_from": STRINGS,
    "cache_to": STRINGS, "no_cache": BOOL, "additional_contexts": LIST_OR_DICT, "network": STR,
    "pull": BOOL, "target": STR, "shm_size": Or(INT, STR), "extra_hosts": Or(M(values=ANY), L(STR)),
    "isolation": STR, "privileged": BOOL, "secrets": ANY, "tags": STRINGS, "ulimits": ANY,
    "platforms": STRINGS,
}, example="build: {context: ., target: prod}")

HEALTHCHECK = M({
    "disable": BOOL, "interval": DURATION, "retries": NUM, "test": STRING_OR_LIST,
    "timeout": DURATION, "start_period": DURATION, "start_interval": DURATION,
}, example='healthcheck: {test: ["CMD", "true"], interval: 10s}')

UPDATE_CONFIG = M({
    "parallelism": INT, "delay": DURATION,
    "failure_action": S("string", enum=("continue", "pause", "rollback")),
    "monitor": DURATION, "max_failure_ratio": NUM,
    "order": S("string", enum=("start-first", "stop-first")),
})

RESOURCE = M({
    "cpus": NUM, "memory": Or(STR, INT), "pids": INT, "generic_resources": ANY, "devices": ANY,
})

DEPLOY = M({
    "mode": S("string", enum=("replicated", "global", "replicated-job", "global-job")),
    "endpoint_mode": STR,
    "replicas": S("integer", example="replicas: 2"),
    "labels": LIST_OR_DICT,
    "rollback_config": UPDATE_CONFIG,
    "update_config": UPDATE_CONFIG,
    "resources": M({"limits": RESOURCE, "reservations": RESOURCE}),
    "restart_policy": M({
        "condition": S("string", enum=("none", "on-failure", "any")),
        "delay": DURATION, "max_attempts": INT, "window": DURATION,
    }),
    "placement": M({
        "constraints": STRINGS, "preferences": L(M({"spread": STR})),
        "max_replicas_per_node": INT,
    }),
})

PORT_LONG = M({
    "name": STR, "mode": S("string", enum=("host", "ingress")), "host_ip": STR,
    "target": Or(INT, STR), "published": Or(STR, INT), "protocol": STR, "app_protocol": STR,
}, required=("target",))

VOLUME_LONG = M({
    "type": S("string", enum=("bind", "volume", "tmpfs", "cluster", "npipe", "image")),
    "source": STR, "target": STR, "read_only": BOOL, "consistency": STR,
    "bind": M({"propagation": STR, "create_host_path": BOOL,
               "recursive": S("string", enum=("enabled", "disabled", "writable", "readonly")),
               "selinux": S("string", enum=("z", "Z"))}),
    "volume": M({"labels": LIST_OR_DICT, "nocopy": BOOL, "subpath": STR}),
    "tmpfs": M({"size": Or(INT, STR), "mode": Or(NUM, STR)}),
    "image": M({"subpath": STR}),
}, required=("type",))

FILE_REF = Or(STR, M({"source": STR, "target": STR, "uid": STR, "gid": STR, "mode": Or(NUM, STR)},
                     required=("source",)))

DEPENDS_ON = Or(
    L(STR),
    M(values=Or(M({
        "restart": BOOL, "required": BOOL,
        "condition": S("string", enum=("service_started", "service_healthy",
                                       "service_completed_successfully")),
    }), S("null")), names=True, what="dependency"),
    example="depends_on: {db: {condition: service_healthy}}",
)

SERVICE_NETWORK = M({
    "aliases": STRINGS, "interface_name": STR, "ipv4_address": STR, "ipv6_address": STR,
    "link_local_ips": STRINGS, "mac_address": STR, "driver_opts": OPEN_MAP, "priority": NUM,
    "gw_priority": NUM,
})

ENV_FILE = Or(STR, L(Or(STR, M({"path": STR, "format": STR, "required": BOOL},
                                required=("path",)))))

SERVICE_FIELDS: dict[str, Spec] = {
    "develop": ANY, "deploy": DEPLOY, "annotations": LIST_OR_DICT, "attach": BOOL,
    "build": Or(STR, BUILD), "blkio_config": OPEN_MAP, "cap_add": STRINGS, "cap_drop": STRINGS,
    "cgroup": S("string", enum=("host", "private")), "cgroup_parent": STR,
    "command": Or(STR, L(STR), S("null")), "configs": L(FILE_REF), "container_name": STR,
    "cpu_count": Or(INT, STR), "cpu_percent": Or(INT, STR), "cpu_shares": Or(NUM, STR),
    "cpu_quota": Or(NUM, STR), "cpu_period": Or(NUM, STR), "cpu_rt_period": Or(NUM, STR),
    "cpu_rt_runtime": Or(NUM, STR), "cpus": NUM, "cpuset": STR, "credential_spec": OPEN_MAP,
    "depends_on": DEPENDS_ON, "device_cgroup_rules": STRINGS, "devices": L(ANY),
    "dns": STRING_OR_LIST, "dns_opt": STRINGS, "dns_search": STRING_OR_LIST, "domainname": STR,
    "entrypoint": Or(STR, L(STR), S("null")), "env_file": ENV_FILE, "label_file": STRING_OR_LIST,
    "environment": LIST_OR_DICT, "expose": L(Or(STR, INT)),
    "extends": Or(STR, M({"service": STR, "file": STR}, required=("service",))),
    "provider": OPEN_MAP, "external_links": STRINGS,
    "extra_hosts": Or(M(values=Or(STR, L(STR))), L(STR)), "gpus": ANY, "group_add": L(Or(STR, INT)),
    "healthcheck": HEALTHCHECK, "hostname": STR, "image": STR, "init": BOOL, "ipc": STR,
    "isolation": STR, "labels": LIST_OR_DICT, "links": STRINGS,
    "logging": M({"driver": STR, "options": M(values=Or(STR, NUM, S("null")))}),
    "mac_address": STR, "mem_limit": Or(NUM, STR), "mem_reservation": Or(STR, INT),
    "mem_swappiness": Or(INT, STR), "memswap_limit": Or(NUM, STR), "network_mode": STR,
    "models": ANY, "networks": Or(L(STR), M(values=Or(SERVICE_NETWORK, S("null")), names=True,
                                           what="network")),
    "oom_kill_disable": BOOL, "oom_score_adj": Or(INT, STR), "pid": Or(STR, S("null")),
    "pids_limit": Or(NUM, STR), "platform": STR,
    "ports": L(Or(NUM, STR, PORT_LONG), example='ports: ["8080:80"]'),
    "post_start": L(ANY), "pre_stop": L(ANY), "privileged": BOOL, "profiles": STRINGS,
    "pull_policy": STR, "pull_refresh_after": STR, "read_only": BOOL, "restart": STR,
    "runtime": STR, "scale": S("integer", example="scale: 2"), "security_opt": STRINGS,
    "shm_size": Or(NUM, STR), "secrets": L(FILE_REF), "sysctls": LIST_OR_DICT,
    "stdin_open": BOOL, "stop_grace_period": DURATION, "stop_signal": STR, "storage_opt": OPEN_MAP,
    "tmpfs": STRING_OR_LIST, "tty": BOOL, "ulimits": OPEN_MAP, "use_api_socket": BOOL,
    "user": STR, "uts": STR, "userns_mode": STR, "volumes": L(Or(STR, VOLUME_LONG)),
    "volumes_from": STRINGS, "working_dir": STR,
}
SERVICE = M(SERVICE_FIELDS, example="web: {image: nginx}")

EXTERNAL = Or(BOOL, M({"name": STR}))
NETWORK = Or(M({
    "name": STR, "driver": STR, "driver_opts": M(values=Or(STR, NUM)),
    "ipam": M({"driver": STR, "config": L(M({"subnet": STR, "ip_range": STR, "gateway": STR,
                                                "aux_addresses": M(values=STR)})),
               "options": M(values=STR)}),
    "external": EXTERNAL, "internal": BOOL, "enable_ipv4": BOOL, "enable_ipv6": BOOL,
    "attachable": BOOL, "labels": LIST_OR_DICT,
}), S("null"))
VOLUME = Or(M({
    "name": STR, "driver": STR, "driver_opts": M(values=Or(STR, NUM)), "external": EXTERNAL,
    "labels": LIST_OR_DICT,
}), S("null"))
SECRET = M({
    "name": STR, "environment": STR, "file": STR, "external": EXTERNAL, "labels": LIST_OR_DICT,
    "driver": STR, "driver_opts": M(values=Or(STR, NUM)), "template_driver": STR,
})
CONFIG = M({
    "name": STR, "content": STR, "environment": STR, "file": STR, "external": EXTERNAL,
    "labels": LIST_OR_DICT, "template_driver": STR,
})
INCLUDE = Or(STR, M({"path": STRING_OR_LIST, "env_file": STRING_OR_LIST,
                     "project_directory": STR}, required=("path",)))

TOP_FIELDS: dict[str, Spec] = {
    "version": Or(STR, NUM),
    "name": STR,
    "include": L(INCLUDE),
    "services": M(values=SERVICE, names=True, what="service"),
    "models": ANY,
    "networks": M(values=NETWORK, names=True, what="network"),
    "volumes": M(values=VOLUME, names=True, what="volume"),
    "secrets": M(values=SECRET, names=True, what="secret"),
    "configs": M(values=CONFIG, names=True, what="config"),
}
TOP = M(TOP_FIELDS)

_SCALAR_TYPES = (str, int, float, bool)
_ARTICLE = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
    "null": "null", "map": "a mapping", "list": "a list",
}
_EXAMPLES = {
    "string": '"text"', "integer": "2", "number": "0.5", "boolean": "true",
    "map": "{key: value}", "list": "[a, b]",
}


def is_int_like(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(INT_RE.match(v.strip())))


def is_num_like(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, str) and bool(NUM_RE.match(v.strip())))


def is_bool_like(v: Any) -> bool:
    return isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in TRUE_WORDS | FALSE_WORDS)


def _kind_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, list):
        return "list"
    return "any"


def _accepts(spec: Spec, v: Any) -> bool:
    """Whether `spec` is the right alternative for the value's type (not its content)."""
    k = spec.kind
    vk = _kind_of(v)
    if k == "any":
        return True
    if k == "oneof":
        return any(_accepts(o, v) for o in spec.options)
    if k == "string":
        return vk in ("string", "number")
    if k == "integer":
        return (vk == "number" and isinstance(v, int)) or (vk == "string" and is_int_like(v))
    if k == "number":
        return vk == "number" or (vk == "string" and is_num_like(v))
    if k == "boolean":
        return vk == "boolean" or (vk == "string" and is_bool_like(v))
    return k == vk


def _expected(spec: Spec) -> str:
    if spec.kind == "oneof":
        kinds = []
        for o in spec.options:
            e = _expected(o)
            if e not in kinds and e != "null":
                kinds.append(e)
        return " or ".join(kinds)
    if spec.kind == "string" and spec.enum:
        return "one of " + ", ".join(spec.enum)
    return _ARTICLE.get(spec.kind, spec.kind)


class Validator:
    def __init__(self, problems: Collector):
        self.problems = problems

    def check(self, value: Any, spec: Spec, path: tuple, parent: Any, key: Any) -> bool:
        """Check `value` (= parent[key]) against `spec`; report problems; True if usable."""
        kind = spec.kind
        if kind == "any":
            return True
        if value is None and kind != "null":
            return True  # null = unset (leniency, see module docstring)
        if kind == "oneof":
            for option in spec.options:
                if _accepts(option, value):
                    return self.check(value, option, path, parent, key)
            self.type_error(value, spec, path, parent, key)
            return False
        if kind == "map":
            if not isinstance(value, dict):
                self.type_error(value, spec, path, parent, key)
                return False
            self.check_map(value, spec, path)
            return True
        if kind == "list":
            if not isinstance(value, list):
                self.type_error(value, spec, path, parent, key)
                return False
            item = spec.item
            if item is not None and item.kind != "any":
                for i, v in enumerate(value):
                    self.check(v, item, path + (i,), value, i)
            return True
        if not _accepts(spec, value):
            self.type_error(value, spec, path, parent, key)
            return False
        if spec.enum and value not in spec.enum:
            loc = _vloc(parent, key)
            near = did_you_mean(str(value), spec.enum)
            fix = f"use one of: {', '.join(spec.enum)}"
            if near:
                fix = f"did you mean {near!r}? ({fix})"
            what = f" for {path[-1]}" if path and isinstance(path[-1], str) else ""
            self.problems.error(f"invalid value {value!r}{what}", loc=loc, path=path, fix=fix)
            return False
        return True

    def check_map(self, value: dict, spec: Spec, path: tuple) -> None:
        fields = spec.fields
        for req in spec.required:
            if req not in value:
                loc = value.loc if isinstance(value, YMap) else None
                self.problems.error(f"missing required key {req!r}", loc=loc, path=path,
                                    fix=f"add {req}: ... here")
        for k, v in value.items():
            sub = fields.get(k) if fields is not None else None
            if sub is not None:
                # fast paths for the common cases
                skind = sub.kind
                if skind == "any" or (skind == "string" and type(v) is str and not sub.enum):
                    continue
                if skind == "list" and type(v) is YList and sub.item is STR:
                    if all(type(x) is str for x in v):
                        continue
            if sub is None:
                if isinstance(k, str) and k.startswith("x-"):
                    continue
                if spec.values is not None:
                    if spec.values is SCALAR and (v is None or type(v) in _SCALAR_TYPES):
                        continue
                    if spec.names and not NAME_RE.match(str(k)):
                        self.problems.error(
                            f"invalid {spec.what or 'resource'} name {k!r}",
                            loc=_kloc(value, k), path=path + (k,),
                            fix="use only letters, digits, '.', '_' and '-'",
                        )
                    self.check(v, spec.values, path + (k,), value, k)
                    continue
                if fields is None:
                    continue
                self.unknown_key(value, k, fields, path)
                continue
            self.check(v, sub, path + (k,), value, k)

    def unknown_key(self, node: dict, key: Any, fields: dict, path: tuple) -> None:
        near = did_you_mean(str(key), fields)
        msg = f"unknown key {key!r}"
        if len(path) == 2 and path[0] == "services":
            msg += f" in service {path[1]!r}"
        elif path:
            msg += f" in {path[-1]!r}"
        else:
            msg += " at the top level"
        if near:
            msg += f"; did you mean {near!r}?"
            fix = f"rename it to {near!r}"
            self.problems.near_misses.add(path + (near,))
        else:
            fix = "remove it, or name custom keys with an x- prefix (x-" + str(key) + ")"
        self.problems.error(msg, loc=_kloc(node, key), path=path + (key,), fix=fix)

    def type_error(self, value: Any, spec: Spec, path: tuple, parent: Any, key: Any) -> None:
        expected = _expected(spec)
        msg = f"expected {expected}, got {describe(value)}"
        name = path[-1] if path and isinstance(path[-1], str) else None
        if spec.example:
            fix = f"write it like: {spec.example}"
        elif spec.kind in _EXAMPLES and name:
            fix = f"write {_ARTICLE[spec.kind]}, e.g. {name}: {_EXAMPLES[spec.kind]}"
        else:
            fix = f"write {expected}"
        self.problems.error(msg, loc=_vloc(parent, key), path=path, fix=fix)


def _kloc(node: Any, key: Any):
    return node.loc_of(key) if isinstance(node, (YMap, YList)) else None


def _vloc(node: Any, key: Any):
    return node.value_loc(key) if isinstance(node, (YMap, YList)) else None


def validate(tree: YMap, problems: Collector) -> None:
    """Check a whole (merged) Compose tree against the schema."""
    Validator(problems).check_map(tree, TOP, ())


def validate_service(service: Any, name: str, problems: Collector) -> bool:
    return Validator(problems).check(service, SERVICE, ("services", name), None, None)


def service_keys() -> list[str]:
    return list(SERVICE_FIELDS)

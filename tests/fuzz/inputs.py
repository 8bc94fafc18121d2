"""Hypothesis strategies for the fuzz targets: Compose-shaped documents, templates, lines.

Structured inputs (dumped with PyYAML) reach deep into the loader; raw text made of
YAML's syntax characters, anchors and aliases exercises the parser and its limits.
"""

from __future__ import annotations

import json

import yaml
from hypothesis import strategies as st

SERVICE_KEYS = [
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes",
    "networks", "network_mode", "depends_on", "healthcheck", "restart", "deploy", "labels", "profiles",
    "secrets", "configs", "extends", "links", "volumes_from", "x-orch", "user", "init", "ipc", "pid",
    "extra_hosts", "logging", "stop_grace_period", "scale", "container_name", "working_dir",
]
SUB_KEYS = [
    "context", "dockerfile", "args", "test", "interval", "retries", "replicas", "resources", "limits",
    "cpus", "memory", "placement", "constraints", "update_config", "parallelism", "order", "condition",
    "required", "target", "published", "protocol", "source", "type", "file", "service", "path",
    "ingress", "host", "port", "mode", "uid", "name", "external", "driver", "ipv4_address", "aliases",
]
TOP_KEYS = ["services", "networks", "volumes", "secrets", "configs", "name", "include", "version", "x-a"]
NAMES = ["web", "api", "db", "a", "b", "default", "front", "s1"]

# Strings that mean something to some part of the loader.
SPECIAL = [
    "${A}", "${A:-x}", "${B:?need B}", "${A:+y}", "$$", "$", "${", "${A", "${A:-${B:-${C}}}", "$A$B",
    "80:80", "127.0.0.1:8080:80/tcp", "8080-8090:80", "./data:/data:ro", "vol:/x", "/abs", "~/x",
    "service:web", "host", "none", "1.5", "512m", "10s", "1h2m", "-1", "0x1F", "0o17", "1e3", ".inf",
    "web", "db", "nginx:latest", "busybox@sha256:" + "a" * 64, "UPPER", "a=b", "KEY", "node.labels.x == y",
    "true", "yes", "null", "", " ", "\t", "\n", "é", "\x00", "\ud800",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 40), 2 ** 40), st.floats(allow_nan=True),
    st.sampled_from(SPECIAL), st.text(max_size=20),
    st.builds(lambda a, b: a + b, st.sampled_from(SPECIAL), st.sampled_from(SPECIAL)),
)
keys = st.one_of(st.sampled_from(SERVICE_KEYS + SUB_KEYS + NAMES), st.text(min_size=1, max_size=8))


def _tree(depth: int = 3) -> st.SearchStrategy:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
        max_leaves=12,
    )


# Values of the right shape for each key (mostly valid, so inputs get past the schema
# into normalisation, checks and the graph), with random ones mixed in.
names = st.sampled_from(NAMES)
durations = st.sampled_from(["1s", "500ms", "1m30s", "10", "0s", "-1s", "1x"])
PLAUSIBLE = {
    "image": st.sampled_from(["busybox", "nginx:1.25", "${A:-busybox}", "reg:5000/a/b@sha256:" + "a" * 64, "Bad"]),
    "build": st.one_of(st.just("."), st.fixed_dictionaries({"context": st.just(".")},
                                                           optional={"args": st.dictionaries(keys, scalars)})),
    "command": st.one_of(st.text(max_size=20), st.lists(st.text(max_size=8), max_size=3)),
    "environment": st.one_of(st.dictionaries(st.sampled_from(["A", "B", "X_1"]), scalars, max_size=3),
                             st.lists(st.sampled_from(["A=1", "B", "C=${A}", "=x"]), max_size=3)),
    "ports": st.lists(st.one_of(st.sampled_from(SPECIAL[10:14] + ["80", "8080:80", "53:53/udp"]),
                                st.integers(0, 70000),
                                st.fixed_dictionaries({"target": st.integers(0, 70000)},
                                                      optional={"published": scalars, "protocol": scalars})),
                      max_size=3),
    "depends_on": st.one_of(st.lists(names, max_size=3),
                            st.dictionaries(names, st.fixed_dictionaries(
                                {}, optional={"condition": st.sampled_from(["service_started", "service_healthy",
                                                                            "service_completed_successfully", "x"]),
                                              "required": st.booleans()}), max_size=3)),
    "links": st.lists(st.one_of(names, names.map(lambda n: n + ":alias")), max_size=2),
    "volumes_from": st.lists(names, max_size=2),
    "network_mode": st.sampled_from(["bridge", "service:web", "service:db", "none", "host"]),
    "volumes": st.lists(st.sampled_from(["./data:/data", "vol:/x", "/abs:/abs:ro", "vol:/y:rw,z", ":", "x"]),
                        max_size=3),
    "networks": st.one_of(st.lists(st.sampled_from(["front", "default", "back"]), max_size=2),
                          st.dictionaries(st.sampled_from(["front", "default"]),
                                          st.one_of(st.none(), st.fixed_dictionaries(
                                              {}, optional={"aliases": st.lists(names, max_size=2)}))), ),
    "healthcheck": st.fixed_dictionaries({}, optional={
        "test": st.one_of(st.sampled_from(["true", "NONE"]), st.lists(st.sampled_from(["CMD", "CMD-SHELL", "x"]))),
        "interval": durations, "timeout": durations, "retries": scalars, "disable": st.booleans()}),
    "restart": st.sampled_from(["always", "no", "on-failure:3", "unless-stopped", "sometimes"]),
    "deploy": st.fixed_dictionaries({}, optional={
        "replicas": st.one_of(st.integers(-2, 20), scalars),
        "resources": st.fixed_dictionaries({}, optional={"limits": st.fixed_dictionaries(
            {}, optional={"cpus": st.sampled_from(["0.5", "2", "x", "-1"]),
                          "memory": st.sampled_from(["512m", "1g", "12", "lots"])})}),
        "placement": st.fixed_dictionaries({}, optional={"constraints": st.lists(
            st.sampled_from(["node.labels.role == web", "node.hostname != x", "bad"]), max_size=2)}),
        "update_config": st.fixed_dictionaries({}, optional={
            "parallelism": st.integers(-1, 5), "order": st.sampled_from(["start-first", "stop-first", "x"]),
            "failure_action": st.sampled_from(["rollback", "pause", "continue", "x"]), "delay": durations,
            "monitor": durations, "max_failure_ratio": st.floats(-1, 2)})}),
    "labels": st.one_of(st.dictionaries(st.sampled_from(["a", "b.c", "io.orch.x"]), scalars, max_size=3),
                        st.lists(st.sampled_from(["a=1", "b", "=c"]), max_size=3)),
    "profiles": st.lists(st.sampled_from(["dev", "debug", ""]), max_size=2),
    "secrets": st.lists(st.sampled_from(["s", "t", "missing"]), max_size=2),
    "configs": st.lists(st.sampled_from(["c", "missing"]), max_size=2),
    "extends": st.one_of(names, st.fixed_dictionaries({"service": names})),
    "x-orch": st.fixed_dictionaries({}, optional={
        "ingress": st.fixed_dictionaries({}, optional={"host": scalars, "port": scalars, "path": scalars}),
        "min_healthy_time": durations, "healthy_deadline": durations}),
    "stop_grace_period": durations,
    "scale": st.integers(-1, 5),
}
service = st.fixed_dictionaries(
    {"image": PLAUSIBLE["image"]},
    optional={k: st.one_of(PLAUSIBLE.get(k, _tree()), PLAUSIBLE.get(k, _tree()), _tree()) for k in SERVICE_KEYS
              if k != "image"},
)
TOP_PLAUSIBLE = {
    "networks": st.dictionaries(st.sampled_from(["front", "back", "default"]),
                                st.one_of(st.none(), st.fixed_dictionaries({}, optional={
                                    "driver": st.sampled_from(["bridge", "overlay"]), "external": st.booleans()}))),
    "volumes": st.dictionaries(st.sampled_from(["vol", "data"]), st.one_of(st.none(), _tree())),
    "secrets": st.dictionaries(st.sampled_from(["s", "t"]), st.fixed_dictionaries({}, optional={
        "file": st.sampled_from(["./compose.yaml", "/dev/null", "/nonexistent", "."]),
        "environment": st.sampled_from(["A", "NOPE"])})),
    "configs": st.dictionaries(st.sampled_from(["c"]), st.fixed_dictionaries({}, optional={
        "content": scalars, "file": st.sampled_from(["./.env", "/dev/zero"])})),
    "name": st.sampled_from(["demo", "Bad Name", "${NAME}", "a" * 70]),
}
compose_doc = st.fixed_dictionaries(
    {"services": st.dictionaries(st.sampled_from(NAMES), service, min_size=1, max_size=4)},
    optional={k: st.one_of(TOP_PLAUSIBLE.get(k, _tree()), _tree()) for k in TOP_KEYS if k != "services"},
)


def _dump(doc) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, UnicodeEncodeError, ValueError):
        return "services: {}\n"


# Raw text: YAML syntax, anchors/aliases, tags, merge keys, interpolation.
TOKENS = [
    "services:", "\n", "\n  ", "\n    ", "  ", "- ", ": ", "web:", "image: busybox", "{", "}", "[", "]", ",",
    "&a ", "*a", "&b ", "*b", "<<: *a", "<<: ", "!reset ", "!override ", "!!str ", "!!int ", "!!binary ",
    "!foo ", "'", '"', "#", "|", ">", "---", "...", "? ", "%YAML 1.2\n", "${A:-", "}", "$$", "x-", "1", "0",
    "ports: [", "depends_on: [", "environment: {", "\t", "\\", "\x85", "\ufeff", "~",
]
raw_text = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)


def _nested(n: int) -> str:
    return "[" * n + "]" * n


def _alias_bomb(width: int, depth: int) -> str:
    lines = ["x-0: &a0 [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, depth):
        lines.append(f"x-{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _deep_interpolation(n: int, op: str) -> str:
    return "${A" + op + "" + ("${B" + op) * n + "x" + "}" * (n + 1)


# Inputs at scale: the shapes of known hostile files, at random sizes.
big_nesting = st.integers(1, 1200).map(_nested)
alias_bombs = st.builds(_alias_bomb, st.integers(1, 12), st.integers(1, 10))
deep_templates = st.builds(_deep_interpolation, st.integers(1, 3000), st.sampled_from([":-", "-", ":+", "+", ":?"]))


def _splice(base: str, cut: int, extra: str) -> str:
    cut = cut % (len(base) + 1)
    return base[:cut] + extra + base[cut:]


def compose_text() -> st.SearchStrategy[str]:
    structured = compose_doc.map(_dump)
    hostile = st.one_of(big_nesting.map(lambda t: f"x-n: {t}\n"), alias_bombs,
                        deep_templates.map(lambda t: f"x-t: '{t}'\n"))
    return st.one_of(structured, raw_text,
                     st.builds(_splice, structured, st.integers(0, 10_000), raw_text),
                     st.builds(lambda doc, bad: doc + bad, structured, hostile))


def template_text() -> st.SearchStrategy[str]:
    parts = ["$", "{", "}", ":", "-", "?", "+", "A", "B", "LONG", "_", "x", " ", "$$", "${", "${A", ":-", ":?"]
    return st.one_of(st.lists(st.sampled_from(parts), max_size=80).map("".join), st.text(max_size=40), deep_templates)


def dotenv_text() -> st.SearchStrategy[str]:
    parts = ["A", "=", "B", "export ", "'", '"', "\\n", "\\", "#", " ", "\n", "${A}", "${A:-x}", "${", ":", "\t",
             "KEY", "=value", "\r\n"]
    return st.one_of(st.lists(st.sampled_from(parts), max_size=60).map("".join), st.text(max_size=60),
                     deep_templates.map(lambda t: f"X={t}\n"))


NODE = {"name": "dev-1", "host": "127.0.0.1"}
ENV_TEMPLATES = ["{{ env.name }}", "{{ vars.x }}", "{{ nodes[0].host }}", "{{ x }}", "{{", "{% for n in nodes %}",
                 "{{ 1/0 }}", "{{ ''.__class__ }}", "{{ 'a' * 3 }}", "{{ vars | tojson }}", "{# c #}", "{{ node.host }}",
                 "{{ service.port }}", "{{ release.id }}", "http://{{ node.host }}:8080/"]
env_scalars = st.one_of(scalars, st.sampled_from(ENV_TEMPLATES))
env_tree = st.recursive(env_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(keys, inner, max_size=3)), max_leaves=10)
ENV_KEYS = ["name", "nodes", "ssh", "registry", "vars", "overlay", "verify", "gates", "promote_from", "prune",
            "checks", "http", "command", "on_deploy", "service", "status", "contains", "timeout", "retries",
            "address", "labels", "port", "user", "python", "jump", "approval", "verification"]
environment_doc = st.fixed_dictionaries(
    {"name": st.just("dev"), "nodes": st.one_of(st.just([NODE]), env_tree)},
    optional={k: st.one_of(env_tree, st.dictionaries(st.sampled_from(ENV_KEYS), env_tree, max_size=4))
              for k in ("registry", "vars", "overlay", "verify", "gates", "ssh", "promote_from")},
)


def environment_text() -> st.SearchStrategy[str]:
    structured = environment_doc.map(_dump)
    return st.one_of(structured, st.builds(_splice, structured, st.integers(0, 10_000), raw_text),
                     st.builds(lambda doc, bad: doc + bad, structured, alias_bombs))


def json_value() -> st.SearchStrategy:
    return st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                  st.sampled_from(SPECIAL + ["a" * 64, "/var/lib/x", "/etc/../x", "ab" * 40])),
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.one_of(st.sampled_from(SUB_KEYS + ["name", "image", "env",
                                                                                      "project", "containers"]),
                                                          st.text(max_size=8)), inner, max_size=5)),
        max_leaves=15,
    )


def _request(obj) -> bytes:
    try:
        return json.dumps(obj).encode()
    except (ValueError, TypeError):
        return b"{}"


def request_line() -> st.SearchStrategy[bytes]:
    req = st.fixed_dictionaries({"v": st.one_of(st.just(1), json_value()), "id": json_value(),
                                 "op": st.one_of(st.sampled_from(["state", "apply", "cancel", "hello"]), json_value())},
                                optional={"args": json_value()})
    return st.one_of(req.map(_request), st.binary(max_size=60), json_value().map(_request))

"""The public API others code against: LoadOptions, Project, Service, to_dict shape."""

from __future__ import annotations

import json
import os
import random
import sys
import textwrap
from pathlib import Path

from orchestrator.core.compose import DependsOn, LoadOptions, Project, Service, load_project
from orchestrator.errors import Problem
from orchestrator.core.yamlsrc import Loc

APP = """
name: demo
services:
  web:
    build: {context: ./web, target: prod, args: {A: "1"}}
    ports: ["8080:80"]
    volumes: ["data:/data"]
    depends_on:
      api: {condition: service_healthy}
    healthcheck: {test: "curl -f localhost", interval: 10s, timeout: 2s, retries: 3, start_period: 5s}
    deploy: {replicas: 2}
    labels: {a: b}
    profiles: [web]
    environment: {X: "1"}
    command: run --fast
    entrypoint: ["/init"]
    networks: [front]
  api:
    image: api:1
    links: [cache]
  cache:
    image: redis
networks: {front: {}}
volumes: {data: {}}
x-meta: {owner: team}
"""


def load(tmp_path, text=APP, **kw):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(text))
    kw.setdefault("environ", {})
    return load_project(LoadOptions(working_dir=tmp_path, **kw))


def test_load_options_defaults():
    opts = LoadOptions()
    assert opts.files == [] and opts.env_files == [] and opts.profiles == []
    assert opts.services == [] and opts.overlays == [] and opts.project_name is None
    assert opts.working_dir == Path.cwd() and opts.environ is os.environ


def test_project_basics(tmp_path):
    p = load(tmp_path, profiles=["web"])
    assert isinstance(p, Project) and p.name == "demo"
    assert p.working_dir == tmp_path and p.files == [tmp_path / "compose.yaml"]
    assert list(p.services) == ["web", "api", "cache"]  # file order
    assert all(isinstance(s, Service) for s in p.services.values())
    assert p.extensions == {"x-meta": {"owner": "team"}}
    assert p.warnings == []
    (tmp_path / "w").mkdir()
    (warning,) = load(tmp_path / "w", "services:\n  a: {image: \"busybox:${TAG}\"}\n").warnings
    assert isinstance(warning, Problem) and (warning.file, warning.line, warning.key) == (
        "compose.yaml", 2, "services.a.image")
    assert p.variables["COMPOSE_PROJECT_NAME"] == "demo"


def test_service_loc_and_locate(tmp_path):
    p = load(tmp_path, profiles=["web"])
    assert p.services["web"].loc == Loc("compose.yaml", 4, 3)
    assert p.locate("services.web.depends_on") == Loc("compose.yaml", 8, 5)
    assert p.locate("services.web.ports[0]") == Loc("compose.yaml", 6, 13)
    assert p.locate("services.web.nope") == Loc("compose.yaml", 4, 3)  # deepest existing part
    prob = p.problem("dependency cycle", "services.web.depends_on", fix="break it")
    assert (prob.file, prob.line, prob.key, prob.fix) == (
        "compose.yaml", 8, "services.web.depends_on", "break it")


def test_dependencies_include_implicit_ones(tmp_path):
    p = load(tmp_path, profiles=["web"])
    assert p.services["web"].dependencies() == {"api": DependsOn("service_healthy", True, False)}
    assert p.services["api"].dependencies() == {"cache": DependsOn("service_started", True, True)}
    assert p.services["api"].depends_on == {}  # explicit only
    deps = p.services["web"].dependencies()
    deps["x"] = DependsOn()
    assert "x" not in p.services["web"].depends_on  # a copy


def test_to_dict_shape_for_json(tmp_path):
    p = load(tmp_path, profiles=["web"])
    d = p.to_dict()
    json.dumps(d)  # JSON-able
    assert list(d)[:6] == ["name", "services", "networks", "volumes", "secrets", "configs"]
    web = d["services"]["web"]
    assert web["build"] == {"context": str(tmp_path / "web"), "dockerfile": "Dockerfile",
                            "target": "prod", "args": {"A": "1"}}
    assert web["command"] == ["run", "--fast"] and web["entrypoint"] == ["/init"]
    assert web["environment"] == {"X": "1"}
    assert web["ports"] == [{"target": 80, "published": "8080", "protocol": "tcp",
                             "host_ip": None, "mode": "ingress"}]
    assert web["volumes"] == [{"type": "volume", "source": "data", "target": "/data",
                               "read_only": False}]
    assert web["networks"] == {"front": None}
    assert web["depends_on"] == {"api": {"condition": "service_healthy", "required": True,
                                         "restart": False}}
    assert web["healthcheck"] == {"test": ["CMD-SHELL", "curl -f localhost"], "interval": "10s",
                                  "timeout": "2s", "retries": 3, "start_period": "5s"}
    assert web["deploy"] == {"replicas": 2}
    assert web["labels"] == {"a": "b"} and web["profiles"] == ["web"]
    assert d["services"]["api"]["image"] == "api:1"
    assert d["services"]["api"]["networks"] == {"default": None}
    assert d["networks"] == {"default": {"name": "demo_default"}, "front": {"name": "demo_front"}}
    assert d["volumes"] == {"data": {"name": "demo_data"}}
    assert d["x-meta"] == {"owner": "team"}


def test_disabled_services_are_kept_aside(tmp_path):
    p = load(tmp_path)
    assert "web" not in p.services and "web" in p.disabled_services
    assert "front" not in p.networks and "data" not in p.volumes  # only what enabled services use


def test_to_yaml_is_compose_like(tmp_path):
    text = load(tmp_path, profiles=["web"]).to_yaml()
    assert text.startswith("name: demo\nservices:\n  api:\n")
    assert "published: '8080'" in text


def _write_large_project(directory, n):
    rng = random.Random(7)
    lines = ["services:"]
    for i in range(n):
        lines += [f"  s{i}:", f"    image: registry.local/s{i}:1", "    environment: {A: '1'}",
                  f"    ports: ['{10000 + i}:80']", "    healthcheck: {test: [CMD, 'true'], interval: 5s}"]
        deps = sorted({rng.randrange(i) for _ in range(4)}) if i else []
        if deps:
            lines.append("    depends_on:")
            lines += [f"      s{d}: {{condition: service_started}}" for d in deps]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "compose.yaml").write_text("\n".join(lines) + "\n")
    return directory


def _calls_to_load(directory):
    """(project, number of function calls, Python and builtin, made while loading it)."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        project = load_project(LoadOptions(working_dir=directory, environ={}))
    finally:
        sys.setprofile(None)
    return project, calls


def test_large_project_loads_in_linear_work(tmp_path):
    """A smoke test against accidental quadratic behaviour, by the work done rather than
    the time taken (speed is measured in bench/, never asserted by a timed test): twice
    the services (with their dependencies) must take about twice the function calls,
    where a loop over all services per service would take four times as many."""
    _calls_to_load(_write_large_project(tmp_path / "warm-up", 50))  # lazy imports, caches
    n = 1000
    small, small_calls = _calls_to_load(_write_large_project(tmp_path / "small", n))
    large, large_calls = _calls_to_load(_write_large_project(tmp_path / "large", 2 * n))
    assert len(small.services) == n and len(large.services) == 2 * n
    assert small_calls > 100 * n  # the count does see the loader's work
    ratio = large_calls / small_calls
    assert ratio < 2.5, f"{n} services: {small_calls} calls, {2 * n}: {large_calls} ({ratio:.2f} x, linear: 2 x)"

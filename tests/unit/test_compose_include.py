"""include: short and long form, own project directory and env, conflicts, loops."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.core.compose import LoadOptions, load_project
from orchestrator.errors import InputError


def write(root, files):
    for name, text in files.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))


def load(root, files, **kw):
    write(root, files)
    kw.setdefault("environ", {})
    return load_project(LoadOptions(working_dir=root, **kw))


def errors(root, files, **kw):
    with pytest.raises(InputError) as info:
        load(root, files, **kw)
    return info.value.problems


def test_include_short_form(tmp_path):
    p = load(tmp_path, {
        "compose.yaml": """
            include:
              - db/compose.yaml
            services:
              web: {image: nginx, depends_on: [db]}
        """,
        "db/compose.yaml": """
            services:
              db:
                image: postgres
                volumes: [data:/var/lib/postgresql/data, ./init:/docker-entrypoint-initdb.d]
            volumes:
              data: {}
        """,
    })
    assert set(p.services) == {"web", "db"}
    db = p.services["db"]
    assert db.volumes[1].source == str(tmp_path / "db" / "init")  # relative to its own folder
    assert "data" in p.volumes and p.volumes["data"].name == f"{p.name}_data"
    assert p.locate("services.db").file == "db/compose.yaml"


def test_include_long_form_with_env_file(tmp_path):
    p = load(tmp_path, {
        "compose.yaml": """
            include:
              - path: [lib/a.yaml, lib/b.yaml]
                env_file: lib/lib.env
            services:
              web: {image: "nginx:${TAG:-top}"}
        """,
        "lib/a.yaml": "services: {cache: {image: 'redis:${REDIS_TAG}'}}\n",
        "lib/b.yaml": "services: {cache: {environment: {TAG: '${TAG:-none}'}}}\n",
        "lib/lib.env": "REDIS_TAG=7\nTAG=from-lib\n",
    }, environ={"TAG": "shell"})
    cache = p.services["cache"]
    assert cache.image == "redis:7"
    assert cache.environment == {"TAG": "shell"}  # the including project's variables win
    assert p.services["web"].image == "nginx:shell"


def test_included_dotenv_is_read(tmp_path):
    p = load(tmp_path, {
        "compose.yaml": "include: [sub/compose.yaml]\nservices: {web: {image: nginx}}\n",
        "sub/compose.yaml": "services: {api: {image: 'api:${API_TAG}'}}\n",
        "sub/.env": "API_TAG=3\n",
    })
    assert p.services["api"].image == "api:3"


def test_include_conflict(tmp_path):
    problems = errors(tmp_path, {
        "compose.yaml": "include: [other.yaml]\nservices:\n  web: {image: nginx}\n",
        "other.yaml": "services:\n  web: {image: httpd}\n",
    })
    (p,) = problems
    assert p.message == "service 'web' is defined both here and in the included file other.yaml (line 2)"
    assert (p.file, p.line, p.key) == ("compose.yaml", 3, "services.web")


def test_identical_definitions_do_not_conflict(tmp_path):
    p = load(tmp_path, {
        "compose.yaml": "include: [other.yaml]\nnetworks: {shared: {}}\nservices: {web: {image: nginx, networks: [shared]}}\n",
        "other.yaml": "networks: {shared: {}}\nservices: {api: {image: a, networks: [shared]}}\n",
    })
    assert set(p.services) == {"web", "api"}


def test_include_loop(tmp_path):
    problems = errors(tmp_path, {
        "compose.yaml": "include: [a.yaml]\nservices: {web: {image: nginx}}\n",
        "a.yaml": "include: [b.yaml]\nservices: {a: {image: x}}\n",
        "b.yaml": "include: [a.yaml]\nservices: {b: {image: x}}\n",
    })
    (p,) = problems
    assert p.message == "include loop: a.yaml -> b.yaml -> a.yaml"
    assert (p.file, p.line, p.key) == ("b.yaml", 1, "include[0]")


def test_include_missing_file(tmp_path):
    (p,) = errors(tmp_path, {"compose.yaml": "include: [nope.yaml]\nservices: {web: {image: x}}\n"})
    assert p.message == "included file not found: nope.yaml"
    assert (p.line, p.key) == (1, "include[0]")

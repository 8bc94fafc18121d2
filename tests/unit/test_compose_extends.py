"""extends: same file, other file, chains, paths, loops, errors."""

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


def load(root, tree, **kw):
    write(root, tree)
    kw.setdefault("environ", {})
    return load_project(LoadOptions(working_dir=root, **kw))


def errors(root, tree, **kw):
    with pytest.raises(InputError) as info:
        load(root, tree, **kw)
    return info.value.problems


def test_extends_in_the_same_file(tmp_path):
    p = load(tmp_path, {"compose.yaml": """
        services:
          base:
            image: python:3.11
            environment: {A: "1", B: "2"}
            command: ["python", "base.py"]
            ports: ["8000:8000"]
          web:
            extends: base
            environment: {B: "two"}
            command: ["python", "web.py"]
            ports: ["9000:9000"]
          worker:
            extends: {service: web}
            environment: {C: "3"}
    """})
    web, worker = p.services["web"], p.services["worker"]
    assert web.image == "python:3.11"
    assert web.environment == {"A": "1", "B": "two"}
    assert web.command == ["python", "web.py"]
    assert [x.published for x in web.ports] == ["8000", "9000"]
    assert worker.environment == {"A": "1", "B": "two", "C": "3"}
    assert worker.command == ["python", "web.py"]


def test_extends_from_another_file_resolves_its_paths_there(tmp_path):
    p = load(tmp_path, {
        "common/base.yaml": """
            services:
              svc:
                build: ./ctx
                env_file: base.env
                volumes: ["./shared:/shared"]
        """,
        "common/base.env": "FROM_BASE=1\n",
        "app/compose.yaml": """
            services:
              app:
                extends: {file: ../common/base.yaml, service: svc}
                volumes: ["./local:/local"]
        """,
    }, files=[tmp_path / "app" / "compose.yaml"])
    app = p.services["app"]
    assert app.build.context == str(tmp_path / "common" / "ctx")
    assert [v.source for v in app.volumes] == [str(tmp_path / "common" / "shared"),
                                               str(tmp_path / "app" / "local")]
    assert app.environment == {"FROM_BASE": "1"}
    assert app.env_file[0].path == str(tmp_path / "common" / "base.env")
    # inherited keys keep the location of the file they came from
    assert p.locate("services.app.build").file == "common/base.yaml"


def test_extends_chain_across_files(tmp_path):
    p = load(tmp_path, {
        "a.yaml": "services: {a: {image: alpine, labels: {from: a}}}\n",
        "b.yaml": "services: {b: {extends: {file: a.yaml, service: a}, labels: {b: 'yes'}}}\n",
        "compose.yaml": "services: {c: {extends: {file: b.yaml, service: b}, labels: {c: 'yes'}}}\n",
    })
    assert p.services["c"].image == "alpine"
    assert p.services["c"].labels == {"from": "a", "b": "yes", "c": "yes"}


def test_extends_base_is_not_modified(tmp_path):
    p = load(tmp_path, {"compose.yaml": """
        services:
          base: {image: alpine, environment: {A: "1"}}
          one: {extends: base, environment: {B: "1"}}
          two: {extends: base, environment: {C: "1"}}
    """})
    assert p.services["base"].environment == {"A": "1"}
    assert p.services["one"].environment == {"A": "1", "B": "1"}
    assert p.services["two"].environment == {"A": "1", "C": "1"}


def test_extends_loop(tmp_path):
    problems = errors(tmp_path, {"compose.yaml": """
        services:
          a: {extends: b, image: x}
          b: {extends: c, image: x}
          c: {extends: a, image: x}
    """})
    assert len(problems) == 1
    p = problems[0]
    assert p.message == "extends loop: a -> b -> c -> a"
    assert p.file == "compose.yaml" and p.line == 5 and p.key == "services.c.extends"
    assert "loop" in p.fix


def test_extends_self(tmp_path):
    (p,) = errors(tmp_path, {"compose.yaml": "services: {a: {extends: a, image: x}}\n"})
    assert p.message == "extends loop: a -> a"


def test_extends_undefined_service(tmp_path):
    (p,) = errors(tmp_path, {"compose.yaml": """
        services:
          base: {image: x}
          web: {extends: bsae}
    """})
    assert p.message == "service 'web' extends 'bsae', which is not defined in compose.yaml; did you mean 'base'?"
    assert (p.line, p.key) == (4, "services.web.extends")


def test_extends_missing_file(tmp_path):
    (p,) = errors(tmp_path, {"compose.yaml": "services: {web: {extends: {file: nope.yaml, service: x}}}\n"})
    assert p.message == "extends file not found: nope.yaml"

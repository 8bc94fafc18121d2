"""Which files are loaded, the project name, and .env / env files."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.compose import LoadOptions, load_project
from orchestrator.core.compose.discovery import normalize_project_name
from orchestrator.core.compose.envfile import parse_dotenv
from orchestrator.errors import InputError

SIMPLE = "services: {web: {image: nginx}}\n"


def load(wd: Path, **kw):
    kw.setdefault("environ", {})
    return load_project(LoadOptions(working_dir=wd, **kw))


def problems(wd: Path, **kw):
    with pytest.raises(InputError) as info:
        load(wd, **kw)
    return info.value.problems


@pytest.mark.parametrize("name", ["compose.yaml", "compose.yml", "docker-compose.yaml",
                                  "docker-compose.yml"])
def test_default_file_names(tmp_path, name):
    (tmp_path / name).write_text(SIMPLE)
    p = load(tmp_path)
    assert p.files == [tmp_path / name]


def test_compose_yaml_is_preferred_and_several_warn(tmp_path):
    (tmp_path / "compose.yaml").write_text(SIMPLE)
    (tmp_path / "docker-compose.yml").write_text("services: {other: {image: x}}\n")
    p = load(tmp_path)
    assert p.files == [tmp_path / "compose.yaml"] and list(p.services) == ["web"]
    assert any("found several Compose files" in w.message for w in p.warnings)


def test_override_file_is_added(tmp_path):
    (tmp_path / "compose.yaml").write_text(SIMPLE)
    (tmp_path / "compose.override.yaml").write_text("services: {web: {image: nginx:2}}\n")
    p = load(tmp_path)
    assert p.files == [tmp_path / "compose.yaml", tmp_path / "compose.override.yaml"]
    assert p.services["web"].image == "nginx:2"


def test_override_not_added_with_explicit_files(tmp_path):
    (tmp_path / "compose.yaml").write_text(SIMPLE)
    (tmp_path / "compose.override.yaml").write_text("services: {web: {image: nginx:2}}\n")
    p = load(tmp_path, files=[Path("compose.yaml")])
    assert p.services["web"].image == "nginx"


def test_parent_folder_is_searched(tmp_path):
    (tmp_path / "compose.yaml").write_text(SIMPLE)
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    p = load(sub)
    assert p.working_dir == tmp_path and p.name == normalize_project_name(tmp_path.name)


def test_compose_file_variable(tmp_path):
    (tmp_path / "a.yaml").write_text(SIMPLE)
    (tmp_path / "b.yaml").write_text("services: {web: {image: nginx:b}}\n")
    p = load(tmp_path, environ={"COMPOSE_FILE": "a.yaml:b.yaml"})
    assert p.services["web"].image == "nginx:b"


def test_no_file_found(tmp_path):
    (p,) = problems(tmp_path)
    assert p.message.startswith("no Compose file found in")
    assert "compose.yaml" in p.fix and "-f" in p.fix


def test_missing_explicit_file(tmp_path):
    (p,) = problems(tmp_path, files=[Path("nope.yaml")])
    assert p.message == "Compose file not found: nope.yaml" and p.file == "nope.yaml"


def test_files_are_shown_relative_to_the_working_dir(tmp_path):
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "c.yaml").write_text("services: {web: {imag: x}}\n")
    found = problems(tmp_path, files=[Path("deploy/c.yaml")])
    assert {p.file for p in found} == {"deploy/c.yaml"}


# --------------------------------------------------------------------------- project name
def test_name_precedence(tmp_path):
    (tmp_path / "compose.yaml").write_text("name: from-file\n" + SIMPLE)
    assert load(tmp_path, project_name="flag").name == "flag"
    assert load(tmp_path, environ={"COMPOSE_PROJECT_NAME": "shell"}).name == "shell"
    (tmp_path / ".env").write_text("COMPOSE_PROJECT_NAME=dotenv\n")
    assert load(tmp_path).name == "dotenv"
    (tmp_path / ".env").unlink()
    assert load(tmp_path).name == "from-file"
    (tmp_path / "compose.yaml").write_text(SIMPLE)
    assert load(tmp_path).name == normalize_project_name(tmp_path.name)


def test_name_key_is_interpolated(tmp_path):
    (tmp_path / "compose.yaml").write_text("name: shop-${STAGE:-dev}\n" + SIMPLE)
    assert load(tmp_path).name == "shop-dev"


@pytest.mark.parametrize("raw,normal", [("My App", "myapp"), ("_x.Y-z", "xy-z"),
                                        ("shop", "shop"), ("--9", "9")])
def test_folder_name_is_normalised(raw, normal):
    assert normalize_project_name(raw) == normal


def test_folder_name_used(tmp_path):
    folder = tmp_path / "My.Shop_App"
    folder.mkdir()
    (folder / "compose.yaml").write_text(SIMPLE)
    p = load(folder)
    assert p.name == "myshop_app"
    assert p.networks["default"].name == "myshop_app_default"


def test_invalid_explicit_name(tmp_path):
    (tmp_path / "compose.yaml").write_text(SIMPLE)
    (p,) = problems(tmp_path, project_name="My App")
    assert p.message == "invalid project name 'My App' (from -p)"
    assert "'myapp'" in p.fix


def test_invalid_name_key_is_located(tmp_path):
    (tmp_path / "compose.yaml").write_text(SIMPLE + "name: Shop\n")
    (p,) = problems(tmp_path)
    assert (p.file, p.line, p.key) == ("compose.yaml", 2, "name")
    assert p.message == "invalid project name 'Shop' (from the name: key)"


def test_invalid_name_from_variable(tmp_path):
    (tmp_path / "compose.yaml").write_text(SIMPLE)
    (p,) = problems(tmp_path, environ={"COMPOSE_PROJECT_NAME": "-bad"})
    assert "COMPOSE_PROJECT_NAME" in p.message


# --------------------------------------------------------------------------- dotenv
def test_dotenv_syntax():
    text = """
# comment
export A=1
B = spaced
C="double ${A} \\n quoted"
D='single ${A} quoted'
E=unquoted # comment
F=with#hash
G=
H="multi
line"
I
J=${MISSING:-dflt}
"""
    env = parse_dotenv(text, ".env", {"I": "from-shell"}.get)
    assert env == {"A": "1", "B": "spaced", "C": "double 1 \n quoted", "D": "single ${A} quoted",
                   "E": "unquoted", "F": "with#hash", "G": "", "H": "multi\nline", "I": "from-shell",
                   "J": "dflt"}


def test_dotenv_bare_key_without_value_is_left_out():
    assert parse_dotenv("ONLY\n", ".env") == {}


def test_dotenv_errors_are_located():
    with pytest.raises(InputError) as info:
        parse_dotenv("OK=1\nBAD KEY=2\n3X=1\nQ='open\n", "app.env")
    msgs = [(p.file, p.line, p.message) for p in info.value.problems]
    assert msgs[0][:2] == ("app.env", 2) and "cannot contain spaces" in msgs[0][2]
    assert msgs[1][:2] == ("app.env", 3) and "must start with a letter" in msgs[1][2]
    assert msgs[2][:2] == ("app.env", 4) and "unterminated ' quote" in msgs[2][2]


def test_missing_env_file_option(tmp_path):
    (tmp_path / "compose.yaml").write_text(SIMPLE)
    (p,) = problems(tmp_path, env_files=[Path("missing.env")])
    assert p.message == "env file not found: missing.env"


def test_dotenv_in_project_dir_not_working_dir(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "compose.yaml").write_text("services: {web: {image: 'nginx:${TAG}'}}\n")
    (proj / ".env").write_text("TAG=proj\n")
    (tmp_path / ".env").write_text("TAG=cwd\n")
    p = load(tmp_path, files=[Path("proj/compose.yaml")])
    assert p.services["web"].image == "nginx:proj"

"""orchestrator.app.workspace: the one place a command's project is loaded: with the
environment's overlay and without it (the base a release records), by name alone
(history, rollback with -p NAME) or from today's Compose file (promote, rollback)."""

from __future__ import annotations

import pytest

from orchestrator.app.workspace import (
    ProjectOptions, compose_at_hand, load_today, load_with_base, resolve_project,
)
from orchestrator.errors import InputError

COMPOSE = """\
name: hello
services:
  api:
    image: busybox
    environment: {STAGE: "${STAGE:-local}"}
"""

ENV = """\
name: dev
nodes:
  - {name: n1, host: 10.250.0.201}
overlay:
  services:
    api:
      environment: {STAGE: "{{ env.name }}"}
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "app" / "environments").mkdir(parents=True)
    (tmp_path / "app" / "environments" / "dev.yaml").write_text(ENV)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def opts(where, **kw):
    kw.setdefault("env_name", "dev")
    kw.setdefault("environments_dir", where.parent / "app" / "environments")
    return ProjectOptions(working_dir=where, **kw)


def write_compose(folder):
    (folder / "app" / "compose.yaml").write_text(COMPOSE)
    return folder / "app" / "compose.yaml"


def test_load_with_base_gives_the_project_with_and_without_the_overlay(folder):
    write_compose(folder)
    ws, base = load_with_base(opts(folder / "app"), environ={})
    assert ws.environment.name == "dev"
    assert ws.project.services["api"].environment == {"STAGE": "dev"}
    assert base.services["api"].environment == {"STAGE": "local"}


def test_a_name_alone_needs_no_compose_file(folder):
    got = resolve_project(opts(folder / "elsewhere", project_name="hello"), today=True)
    assert (got.name, got.environment.name, got.project) == ("hello", "dev", None)
    assert got.working_dir == (folder / "elsewhere").resolve()
    assert not compose_at_hand(opts(folder / "elsewhere"))
    assert load_today(opts(folder / "elsewhere", env_name=None)) is None


def test_with_a_compose_file_at_hand_a_name_still_reads_no_project_unless_today_is_wanted(folder):
    write_compose(folder)
    here = opts(folder / "app", project_name="hello")
    assert compose_at_hand(here)
    by_name = resolve_project(here)  # history: the ledger needs the name only
    assert (by_name.name, by_name.project) == ("hello", None)
    loaded = resolve_project(here, today=True, environ={})  # rollback: today's secrets
    assert loaded.name == "hello" and loaded.working_dir == folder / "app"
    assert loaded.project.services["api"].environment == {"STAGE": "dev"}  # with the environment's overlay
    today = load_today(opts(folder / "app", env_name=None), environ={})
    assert today.services["api"].environment == {"STAGE": "local"}


def test_a_compose_file_given_with_f_is_loaded(folder):
    compose = write_compose(folder)
    got = resolve_project(opts(folder / "elsewhere", files=[compose], project_name="other"), environ={})
    assert got.name == "other" and got.project is not None and got.environment.name == "dev"


def test_neither_a_compose_file_nor_a_name(folder):
    with pytest.raises(InputError, match="no Compose file here and no project name"):
        resolve_project(opts(folder / "elsewhere"), today=True)
    with pytest.raises(InputError, match="no Compose file found"):  # history: the loader's own message
        resolve_project(opts(folder / "elsewhere"))

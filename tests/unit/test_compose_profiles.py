"""Profiles: --profile, COMPOSE_PROFILES, '*', services named on the command line."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.core.compose import LoadOptions, load_project
from orchestrator.errors import InputError

APP = """
services:
  web:
    image: nginx
  debug:
    image: busybox
    profiles: [debug]
  seed:
    image: busybox
    profiles: [tools, setup]
  adminer:
    image: adminer
    profiles: [tools]
"""


def load(tmp_path, text=APP, **kw):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(text))
    kw.setdefault("environ", {})
    return load_project(LoadOptions(working_dir=tmp_path, **kw))


def test_services_without_profiles_only_by_default(tmp_path):
    p = load(tmp_path)
    assert list(p.services) == ["web"]
    assert set(p.disabled_services) == {"debug", "seed", "adminer"}


def test_profile_flag_enables(tmp_path):
    assert set(load(tmp_path, profiles=["tools"]).services) == {"web", "seed", "adminer"}
    assert set(load(tmp_path, profiles=["debug", "setup"]).services) == {"web", "debug", "seed"}


def test_comma_separated_flags(tmp_path):
    assert set(load(tmp_path, profiles=["debug,tools"]).services) == {"web", "debug", "seed", "adminer"}


def test_compose_profiles_variable(tmp_path):
    p = load(tmp_path, environ={"COMPOSE_PROFILES": "debug, setup"})
    assert set(p.services) == {"web", "debug", "seed"}
    assert p.profiles == ["debug", "setup"]


def test_compose_profiles_from_dotenv(tmp_path):
    (tmp_path / ".env").write_text("COMPOSE_PROFILES=debug\n")
    assert set(load(tmp_path).services) == {"web", "debug"}


def test_flags_win_over_variable(tmp_path):
    p = load(tmp_path, profiles=["tools"], environ={"COMPOSE_PROFILES": "debug"})
    assert set(p.services) == {"web", "seed", "adminer"}


def test_star_enables_all(tmp_path):
    assert set(load(tmp_path, profiles=["*"]).services) == {"web", "debug", "seed", "adminer"}


def test_named_service_enables_its_profiles(tmp_path):
    p = load(tmp_path, services=["adminer"])
    # adminer's profile "tools" is now active, so seed (tools, setup) comes too
    assert set(p.services) == {"web", "adminer", "seed"}
    assert "tools" in p.profiles


def test_unknown_named_service(tmp_path):
    with pytest.raises(InputError) as info:
        load(tmp_path, services=["adminr"])
    (p,) = info.value.problems
    assert p.message == "no such service: adminr; did you mean 'adminer'?"


DEPS = """
services:
  web:
    image: nginx
    depends_on:
      db: {condition: service_started}
      tracing: {condition: service_started, required: false}
  db:
    image: postgres
    profiles: [db]
  tracing:
    image: jaeger
    profiles: [observability]
"""


def test_dependency_on_disabled_service_is_an_error(tmp_path):
    with pytest.raises(InputError) as info:
        load(tmp_path, DEPS)
    (p,) = info.value.problems
    assert p.message == "service 'web' depends on 'db', which is disabled by its profiles (db)"
    assert (p.file, p.line, p.key) == ("compose.yaml", 6, "services.web.depends_on.db")
    assert "--profile db" in p.fix and "required: false" in p.fix


def test_optional_dependency_on_disabled_service_is_dropped(tmp_path):
    p = load(tmp_path, DEPS, profiles=["db"])
    assert set(p.services["web"].depends_on) == {"db"}
    p = load(tmp_path, DEPS, profiles=["db", "observability"])
    assert set(p.services["web"].depends_on) == {"db", "tracing"}


def test_implicit_dependency_on_disabled_service(tmp_path):
    with pytest.raises(InputError) as info:
        load(tmp_path, """
            services:
              app: {image: a, network_mode: "service:vpn"}
              vpn: {image: v, profiles: [vpn]}
        """)
    (p,) = info.value.problems
    assert "needs 'vpn' (network_mode: service:vpn), which is disabled by its profiles (vpn)" in p.message

"""Interpolation: ${VAR} operators, nesting, $$, unset warnings, errors, .env and shell."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.core.compose import LoadOptions, load_project
from orchestrator.core.compose.interpolate import TemplateError, substitute
from orchestrator.errors import InputError

ENV = {"SET": "value", "EMPTY": "", "B": "bee"}


def sub(text, env=ENV):
    unset = []
    return substitute(text, env.get, unset.append), unset


@pytest.mark.parametrize(
    "template,expected",
    [
        ("$SET", "value"),
        ("${SET}", "value"),
        ("pre-${SET}-post", "pre-value-post"),
        ("$SET.txt", "value.txt"),
        ("${UNSET:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${SET:-default}", "value"),
        ("${UNSET-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET:+alt}", ""),
        ("${SET+alt}", "alt"),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${EMPTY?err}", ""),
        ("${SET:?err}", "value"),
        ("${UNSET:-${B:-x}}", "bee"),
        ("${UNSET:-${ALSO_UNSET:-x}}", "x"),
        ("${UNSET:-a ${B} c}", "a bee c"),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("cost: 5$", "cost: 5$"),
        ("$1", "$1"),
        ("${UNSET:-}", ""),
        ("${UNSET:-a}}", "a}"),
    ],
)
def test_operators(template, expected):
    assert sub(template)[0] == expected


def test_unset_variable_becomes_empty_and_is_reported():
    assert sub("x${NOPE}y") == ("xy", ["NOPE"])
    assert sub("$NOPE") == ("", ["NOPE"])


def test_unused_default_does_not_warn():
    assert sub("${SET:-${NOPE}}") == ("value", [])


@pytest.mark.parametrize(
    "template,message",
    [
        ("${TAG", "invalid interpolation format '${TAG': missing closing brace"),
        ("${}", "invalid interpolation format '${}'"),
        ("${1A}", "invalid interpolation format '${1A}'"),
        ("${A:x}", "invalid interpolation format '${A:x}'"),
        ("${A:-${B}", "missing closing brace"),
    ],
)
def test_malformed_templates(template, message):
    with pytest.raises(TemplateError) as info:
        sub(template)
    assert message in info.value.message
    assert "$$" in info.value.fix or "brace" in info.value.fix


@pytest.mark.parametrize(
    "template,message",
    [
        ("${UNSET:?set it please}", "required variable UNSET is missing a value: set it please"),
        ("${UNSET?need}", "required variable UNSET is missing a value: need"),
        ("${EMPTY:?no empty}", "required variable EMPTY is empty: no empty"),
        ("${UNSET:?}", "required variable UNSET is missing a value"),
    ],
)
def test_required_variables(template, message):
    with pytest.raises(TemplateError) as info:
        sub(template)
    assert info.value.message == message
    assert info.value.variable in ("UNSET", "EMPTY")


# --------------------------------------------------------------------------- in files
def load(tmp_path, text, environ=None, files=None, **kw):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(text))
    for name, body in (files or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(body))
    return load_project(LoadOptions(working_dir=tmp_path, environ=environ or {}, **kw))


def test_values_are_interpolated_not_keys(tmp_path):
    p = load(tmp_path, """
        services:
          web:
            image: "nginx:${TAG:-1.25}"
            environment:
              ${KEY}: $VALUE
    """, environ={"VALUE": "v", "KEY": "k"})
    assert p.services["web"].image == "nginx:1.25"
    assert p.services["web"].environment == {"${KEY}": "v"}


def test_dotenv_is_read_and_shell_wins(tmp_path):
    p = load(tmp_path, """
        services:
          web:
            image: "app:${TAG}"
            environment:
              A: ${FROM_DOTENV}
              B: ${BOTH}
    """, environ={"BOTH": "shell"}, files={".env": "TAG=1.0\nFROM_DOTENV=dot\nBOTH=dotenv\n"})
    s = p.services["web"]
    assert s.image == "app:1.0"
    assert s.environment == {"A": "dot", "B": "shell"}
    assert p.variables["TAG"] == "1.0" and p.variables["BOTH"] == "shell"


def test_env_file_option_replaces_dotenv(tmp_path):
    (tmp_path / "custom.env").write_text("TAG=custom\n")
    (tmp_path / "more.env").write_text("TAG=more\nX=${TAG}-x\n")
    p = load(tmp_path, """
        services:
          web: {image: "app:${TAG}", environment: {X: $X}}
    """, files={".env": "TAG=dotenv\n"},
        env_files=[tmp_path / "custom.env", tmp_path / "more.env"])
    assert p.services["web"].image == "app:more"
    assert p.services["web"].environment["X"] == "more-x"


def test_unset_variable_warns_once_with_location(tmp_path):
    p = load(tmp_path, """
        services:
          web:
            image: "app:${TAG}"
            labels: {a: "${TAG}"}
    """)
    assert p.services["web"].image == "app:"
    warns = [w for w in p.warnings if "TAG" in w.message]
    assert len(warns) == 1
    w = warns[0]
    assert w.message == 'the "TAG" variable is not set; defaulting to a blank string'
    assert (w.file, w.line, w.key) == ("compose.yaml", 4, "services.web.image")


def test_required_variable_error_is_located(tmp_path):
    with pytest.raises(InputError) as info:
        load(tmp_path, """
            services:
              web:
                image: "app:${TAG:?set TAG to the release}"
        """)
    (p,) = info.value.problems
    assert (p.file, p.line, p.column, p.key) == ("compose.yaml", 4, 12, "services.web.image")
    assert p.message == "required variable TAG is missing a value: set TAG to the release"
    assert "TAG" in p.fix


def test_malformed_template_error_is_located(tmp_path):
    with pytest.raises(InputError) as info:
        load(tmp_path, """
            services:
              web:
                image: nginx
                ports: ["${PORT:-80}:80", "${PORT"]
        """)
    (p,) = info.value.problems
    assert p.key == "services.web.ports[1]" and p.line == 5
    assert "missing closing brace" in p.message


def test_interpolated_numbers_and_booleans_are_typed(tmp_path):
    p = load(tmp_path, """
        services:
          web:
            image: nginx
            deploy: {replicas: "${N:-3}"}
            init: "${INIT:-true}"
            healthcheck: {test: ["CMD", "true"], retries: "${R:-4}", interval: "${I:-5s}"}
    """)
    s = p.services["web"]
    assert s.deploy.replicas == 3 and s.init is True
    assert s.healthcheck.retries == 4 and s.healthcheck.interval == 5.0


def test_dollar_dollar_survives_to_the_model(tmp_path):
    p = load(tmp_path, """
        services:
          web:
            image: nginx
            command: sh -c 'echo $$HOME'
    """)
    assert p.services["web"].command == ["sh", "-c", "echo $HOME"]


def test_compose_project_name_is_a_variable(tmp_path):
    p = load(tmp_path, "services: {web: {image: nginx}}\n", project_name="demo")
    assert p.variables["COMPOSE_PROJECT_NAME"] == "demo"

"""Every error names file, line (and column), key path, what is wrong and how to fix it."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.core.compose import LoadOptions, load_project
from orchestrator.errors import EXIT_BAD_INPUT, InputError


def problems(tmp_path, text, *, raw: bytes | None = None, **kw):
    f = tmp_path / "compose.yaml"
    if raw is not None:
        f.write_bytes(raw)
    else:
        f.write_text(textwrap.dedent(text))
    kw.setdefault("environ", {})
    with pytest.raises(InputError) as info:
        load_project(LoadOptions(working_dir=tmp_path, **kw))
    assert info.value.exit_code == EXIT_BAD_INPUT
    return info.value.problems


def one(tmp_path, text, **kw):
    found = problems(tmp_path, text, **kw)
    assert len(found) == 1, [p.render() for p in found]
    return found[0]


def where(p):
    return (p.file, p.line, p.column, p.key)


def test_yaml_syntax_error(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: nginx\n     ports: []\n")
    assert (p.file, p.line) == ("compose.yaml", 4)
    assert p.message.startswith("YAML syntax error:")
    assert p.fix


def test_top_level_not_a_mapping(tmp_path):
    p = one(tmp_path, "- web\n- db\n")
    assert where(p) == ("compose.yaml", 1, 1, None)
    assert p.message == "the top level of a Compose file must be a mapping, not a list"
    assert "services:" in p.fix


def test_top_level_scalar(tmp_path):
    p = one(tmp_path, "just text\n")
    assert p.message == "the top level of a Compose file must be a mapping, not a single value ('just text')"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    p = one(tmp_path, text)
    assert (p.file, p.message) == ("compose.yaml", "the Compose file is empty")
    assert "services:" in p.fix


def test_duplicate_keys(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: a\n    image: b\n")
    assert (p.file, p.line, p.column) == ("compose.yaml", 4, 5)
    assert p.message == "duplicate key 'image' (already defined at line 3)"
    assert p.fix == "keep only one 'image' in this mapping"


def test_not_utf8(tmp_path):
    p = one(tmp_path, None, raw="services:\n  web:\n    image: caf\xe9\n".encode("latin-1"))
    assert (p.file, p.line, p.column) == ("compose.yaml", 3, 15)
    assert p.message.startswith("file is not valid UTF-8")
    assert "UTF-8" in p.fix


def test_unknown_key_with_did_you_mean(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: nginx\n    enviroment: {A: 1}\n")
    assert where(p) == ("compose.yaml", 4, 5, "services.web.enviroment")
    assert p.message == "unknown key 'enviroment' in service 'web'; did you mean 'environment'?"
    assert p.fix == "rename it to 'environment'"


def test_unknown_key_without_near_match(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: nginx\n    colour: blue\n")
    assert p.message == "unknown key 'colour' in service 'web'"
    assert "x-colour" in p.fix


def test_unknown_nested_and_top_level_keys(tmp_path):
    found = problems(tmp_path, """
        servics: {}
        services:
          web:
            image: nginx
            deploy: {replica: 2}
            healthcheck: {test: ["CMD", "true"], intervall: 5s}
    """)
    msgs = [(p.key, p.message) for p in found]
    assert msgs == [
        ("servics", "unknown key 'servics' at the top level; did you mean 'services'?"),
        ("services.web.deploy.replica", "unknown key 'replica' in 'deploy'; did you mean 'replicas'?"),
        ("services.web.healthcheck.intervall",
         "unknown key 'intervall' in 'healthcheck'; did you mean 'interval'?"),
    ]


def test_x_keys_are_allowed_everywhere(tmp_path):
    (tmp_path / "compose.yaml").write_text(
        "x-top: 1\nservices:\n  web:\n    image: nginx\n    x-mine: {a: 1}\n"
        "    deploy: {x-note: hi}\n")
    p = load_project(LoadOptions(working_dir=tmp_path, environ={}))
    assert p.services["web"].extensions == {"x-mine": {"a": 1}}


def test_wrong_type(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: many\n")
    assert where(p) == ("compose.yaml", 5, 17, "services.web.deploy.replicas")
    assert p.message == "expected an integer, got the string 'many'"
    assert p.fix == "write it like: replicas: 2"


@pytest.mark.parametrize(
    "body,key,message",
    [
        ("ports: '80:80'", "services.web.ports", "expected a list, got the string '80:80'"),
        ("environment: 5", "services.web.environment", "expected a mapping or a list, got the number 5"),
        ("container_name: [a]", "services.web.container_name", "expected a string, got a list"),
        ("init: maybe", "services.web.init", "expected a boolean, got the string 'maybe'"),
        ("depends_on: db", "services.web.depends_on",
         "expected a list or a mapping, got the string 'db'"),
        ("deploy: {resources: {limits: {cpus: lots}}}", "services.web.deploy.resources.limits.cpus",
         "expected a number, got the string 'lots'"),
    ],
)
def test_wrong_types(tmp_path, body, key, message):
    found = problems(tmp_path, f"services:\n  web:\n    image: nginx\n    {body}\n")
    p = [p for p in found if p.key == key][0]
    assert p.message == message and p.line == 4


def test_invalid_ports(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: nginx\n    ports:\n      - 8080:80\n      - 80:99999\n")
    assert where(p) == ("compose.yaml", 6, 9, "services.web.ports[1]")
    assert p.message == "invalid port '80:99999': port 99999 is out of range 1-65535"
    assert '"8080:80"' in p.fix


def test_neither_image_nor_build(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    ports: ['80:80']\n")
    assert where(p) == ("compose.yaml", 2, 3, "services.web")
    assert p.message == "service 'web' has neither an image nor a build"
    assert "image:" in p.fix and "build:" in p.fix


def test_depends_on_undefined_service(tmp_path):
    p = one(tmp_path, """
        services:
          web: {image: nginx, depends_on: [api, db]}
          api: {image: api}
          database: {image: postgres}
    """)
    assert (p.line, p.key) == (3, "services.web.depends_on.db")
    assert p.message == "service 'web' depends on undefined service 'db'"


def test_depends_on_did_you_mean(tmp_path):
    p = one(tmp_path, """
        services:
          web:
            image: nginx
            depends_on:
              postgress: {condition: service_healthy}
          postgres: {image: postgres}
    """)
    assert (p.line, p.key) == (6, "services.web.depends_on.postgress")
    assert p.message == "service 'web' depends on undefined service 'postgress'; did you mean 'postgres'?"


def test_optional_dependency_on_undefined_service_warns(tmp_path):
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    image: nginx\n    depends_on:\n      x: {condition: service_started, required: false}\n")
    p = load_project(LoadOptions(working_dir=tmp_path, environ={}))
    assert p.services["web"].depends_on == {}
    assert any("'x', which is not defined; ignored" in w.message for w in p.warnings)


def test_invalid_condition(tmp_path):
    p = one(tmp_path, """
        services:
          web:
            image: nginx
            depends_on:
              db: {condition: service_heathy}
          db: {image: postgres}
    """)
    assert where(p) == ("compose.yaml", 6, 23, "services.web.depends_on.db.condition")
    assert p.message == "invalid value 'service_heathy' for condition"
    assert p.fix.startswith("did you mean 'service_healthy'?")


def test_undeclared_named_volume(tmp_path):
    p = one(tmp_path, """
        services:
          db:
            image: postgres
            volumes:
              - ./init:/docker-entrypoint-initdb.d
              - pgdata:/var/lib/postgresql/data
        volumes:
          pg-data: {}
    """)
    assert where(p) == ("compose.yaml", 7, 9, "services.db.volumes[1]")
    assert p.message == ("service 'db' mounts the named volume 'pgdata', which is not declared; "
                         "did you mean 'pg-data'?")
    assert "volumes: {pgdata: {}}" in p.fix


def test_undeclared_network_secret_config(tmp_path):
    found = problems(tmp_path, """
        services:
          web:
            image: nginx
            networks: [frontend]
            secrets: [tls]
            configs: [site]
        networks: {front: {}}
    """)
    assert [p.message for p in found] == [
        "service 'web' uses network 'frontend', which is not declared; did you mean 'front'?",
        "service 'web' uses secret 'tls', which is not declared",
        "service 'web' uses config 'site', which is not declared",
    ]
    assert [p.key for p in found] == ["services.web.networks.frontend", "services.web.secrets[0]",
                                      "services.web.configs[0]"]


def test_network_mode_with_networks(tmp_path):
    p = one(tmp_path, """
        services:
          web:
            image: nginx
            network_mode: host
            networks: [front]
        networks: {front: {}}
    """)
    assert (p.line, p.key) == (6, "services.web.networks")
    assert p.message == "service 'web' sets both network_mode and networks, which exclude each other"


def test_implicit_dependency_on_undefined_service(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: nginx\n    volumes_from: [data]\n")
    assert p.message == "service 'web' refers to undefined service 'data' (volumes_from)"
    assert (p.line, p.key) == (4, "services.web.volumes_from")


def test_invalid_service_name(tmp_path):
    p = one(tmp_path, "services:\n  'my web':\n    image: nginx\n")
    assert p.message == "invalid service name 'my web'"
    assert (p.line, p.key) == (2, "services.my web")


def test_invalid_restart_and_duration_and_healthcheck(tmp_path):
    found = problems(tmp_path, """
        services:
          web:
            image: nginx
            restart: allways
            stop_grace_period: 10
            healthcheck:
              test: ["curl", "-f", "http://localhost"]
    """)
    assert [(p.key, p.message) for p in found] == [
        ("services.web.restart", "invalid restart policy 'allways'; did you mean 'always'?"),
        ("services.web.stop_grace_period", "invalid duration 10: missing unit"),
        ("services.web.healthcheck.test",
         "a healthcheck test list must start with CMD, CMD-SHELL or NONE, not 'curl'"),
    ]


def test_scale_and_replicas_disagree(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: nginx\n    scale: 2\n    deploy: {replicas: 3}\n")
    assert p.message == "scale (2) and deploy.replicas (3) disagree"


def test_secret_without_source(tmp_path):
    p = one(tmp_path, "services:\n  web: {image: nginx, secrets: [s]}\nsecrets:\n  s: {labels: {a: b}}\n")
    assert (p.line, p.key) == (4, "secrets.s")
    assert p.message == "secret 's' has no source"


def test_missing_env_file(tmp_path):
    p = one(tmp_path, "services:\n  web:\n    image: nginx\n    env_file: app.env\n")
    assert (p.line, p.key) == (4, "services.web.env_file")
    assert p.message == f"env file {tmp_path / 'app.env'} not found"
    assert "required: false" in p.fix


def test_version_is_obsolete_warning(tmp_path):
    (tmp_path / "compose.yaml").write_text("version: '3.8'\nservices: {web: {image: nginx}}\n")
    p = load_project(LoadOptions(working_dir=tmp_path, environ={}))
    (w,) = [w for w in p.warnings if w.key == "version"]
    assert (w.file, w.line, w.message) == ("compose.yaml", 1, "the `version` key is obsolete and ignored")


def test_errors_are_collected_and_sorted(tmp_path):
    found = problems(tmp_path, """
        services:
          web:
            imag: nginx
            ports: ["80:99999"]
            deploy: {replicas: many}
            depends_on: [nope]
          db:
            image: "postgres:${TAG"
    """)
    assert [p.line for p in found] == sorted(p.line for p in found)
    assert len(found) == 5  # no "neither image nor build": imag is a near miss of image
    rendered = InputError(found).render()
    assert rendered.startswith("5 problems found:")
    assert "compose.yaml:4:5: services.web.imag: unknown key 'imag' in service 'web'; did you mean 'image'?" in rendered


def test_errors_from_several_files_name_each_file(tmp_path):
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: nginx\n    prots: []\n")
    (tmp_path / "compose.override.yaml").write_text("services:\n  web:\n    deploy: {replicas: x}\n")
    with pytest.raises(InputError) as info:
        load_project(LoadOptions(working_dir=tmp_path, environ={}))
    assert [(p.file, p.line) for p in info.value.problems] == [
        ("compose.yaml", 4), ("compose.override.yaml", 3)]

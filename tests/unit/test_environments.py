from pathlib import Path

import pytest

from orchestrator.core import environments as envs
from orchestrator.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / "environments"
    d.mkdir(exist_ok=True)
    p = d / f"{name}.yaml"
    p.write_text(text)
    return d


def test_shipped_environments_form_the_lab_pipeline():
    loaded = envs.load_all(REPO / "environments")
    assert envs.pipeline_order(loaded) == ["dev", "test", "prod"]
    prod = loaded["prod"]
    assert [n.name for n in prod.nodes] == ["prod-1", "prod-2"]
    assert prod.nodes[1].host == "10.250.0.32"
    assert prod.gates.approval and prod.gates.verification
    assert prod.registry.address == "10.250.0.1:5000"
    assert prod.ssh.known_hosts == Path("/var/lib/orch-lab/known_hosts")


def test_node_defaults_and_relative_paths(tmp_path):
    d = write(tmp_path, "dev", "nodes:\n  - {name: a, host: 10.0.0.1, identity_file: keys/id}\n")
    env = envs.load_environment("dev", d)
    node = env.nodes[0]
    assert (node.port, node.user, node.labels, node.jump, node.python) == (22, "root", {}, None, "python3")
    assert node.identity_file == (d / "keys/id").resolve()
    assert env.name == "dev" and env.promote_from is None


def test_node_python_reaches_the_agent_command(tmp_path):
    from orchestrator.io import transport as T

    d = write(tmp_path, "dev", "nodes:\n  - {name: a, host: h, python: /opt/py3.12/bin/python3}\n"
                              "  - {name: b, host: h2}\n")
    a, b = envs.load_environment("dev", d).nodes
    assert (a.python, b.python) == ("/opt/py3.12/bin/python3", "python3")
    assert T.agent_command("/x/orch-agent-1.pyz", python=a.python)[0] == "/opt/py3.12/bin/python3"


def test_a_node_names_its_ssh_address_and_jump_host(tmp_path):
    d = write(tmp_path, "dev", "nodes:\n  - {name: a, host: 10.0.0.1, port: 2222, user: ops, jump: bastion:2200}\n"
                              "  - {name: b, host: h2, jump: admin@bastion}\n")
    a, b = envs.load_environment("dev", d).nodes
    assert (a.address, a.known_hosts_name) == ("10.0.0.1:2222", "[10.0.0.1]:2222")
    ja, jb = a.jump_target(), b.jump_target()
    assert (ja.name, ja.host, ja.port, ja.user) == ("a (jump host)", "bastion", 2200, "ops")
    assert (jb.host, jb.port, jb.user, jb.known_hosts_name) == ("bastion", 22, "admin", "bastion")


@pytest.mark.parametrize("value", ["a@b:c:d", "admin@bastion:22x", "bastion:0", "bastion:70000"])
def test_a_malformed_jump_host_is_bad_input_when_the_file_is_loaded(tmp_path, value):
    d = write(tmp_path, "dev", f"nodes:\n  - name: a\n    host: h\n    jump: '{value}'\n")
    with pytest.raises(InputError) as err:
        envs.load_environment("dev", d)
    [problem] = err.value.problems
    assert problem.key == "nodes[0].jump" and problem.line == 4 and problem.file.endswith("dev.yaml")
    assert value in problem.message and "jump: admin@bastion.example.com:22" in problem.fix
    assert err.value.exit_code == 2


@pytest.mark.parametrize("value", ["python3 -S", "~/bin/python3", "py;rm -rf /", "''"])
def test_node_python_must_be_a_program_or_an_absolute_path(tmp_path, value):
    d = write(tmp_path, "dev", f"nodes:\n  - name: a\n    host: h\n    python: {value}\n")
    with pytest.raises(InputError) as err:
        envs.load_environment("dev", d)
    [problem] = err.value.problems
    assert problem.key == "nodes[0].python" and problem.line == 4
    assert "python: /usr/bin/python3" in problem.fix


def test_unknown_key_suggests_the_near_one(tmp_path):
    d = write(tmp_path, "dev", "nodes:\n  - {name: a, host: h}\npromote_form: test\n")
    with pytest.raises(InputError) as err:
        envs.load_environment("dev", d)
    text = err.value.render()
    assert "dev.yaml:3:1: promote_form: unknown key 'promote_form'" in text
    assert "did you mean 'promote_from'?" in text


def test_wrong_types_are_collected_together(tmp_path):
    d = write(
        tmp_path, "dev",
        "nodes:\n  - name: a\n    host: h\n    port: many\nssh:\n  connect_timeout: soon\n",
    )
    with pytest.raises(InputError) as err:
        envs.load_environment("dev", d)
    problems = err.value.problems
    assert [p.key for p in problems] == ["nodes[0].port", "ssh.connect_timeout"]
    assert problems[0].line == 4 and "must be a port number, not a string" in problems[0].message


def test_missing_environment_lists_the_known_ones(tmp_path):
    d = write(tmp_path, "prod", "nodes: [{name: a, host: h}]\n")
    with pytest.raises(InputError) as err:
        envs.load_environment("prd", d)
    assert "no environment named 'prd'" in err.value.render()
    assert "did you mean 'prod'?" in err.value.render()


def test_name_must_match_the_file(tmp_path):
    d = write(tmp_path, "dev", "name: prod\nnodes: [{name: a, host: h}]\n")
    with pytest.raises(InputError, match="declares name 'prod'"):
        envs.load_environment("dev", d)


def test_no_nodes_is_an_error(tmp_path):
    d = write(tmp_path, "dev", "registry: {address: r:5000}\n")
    with pytest.raises(InputError, match="no nodes listed"):
        envs.load_environment("dev", d)


def test_pipeline_refuses_unknown_source_and_cycles(tmp_path):
    d = write(tmp_path, "a", "promote_from: b\nnodes: [{name: n, host: h}]\n")
    write(tmp_path, "b", "promote_from: a\nnodes: [{name: n, host: h}]\n")
    with pytest.raises(InputError, match="promotion pipeline has a cycle"):
        envs.pipeline_order(envs.load_all(d))
    write(tmp_path, "b", "promote_from: zz\nnodes: [{name: n, host: h}]\n")
    with pytest.raises(InputError, match="unknown environment 'zz'"):
        envs.pipeline_order(envs.load_all(d))


def test_overlay_renders_with_strict_undefined(tmp_path):
    d = write(
        tmp_path, "dev",
        "nodes: [{name: n1, host: 10.0.0.1}]\nvars: {level: debug}\n"
        "overlay:\n  services:\n    web:\n      environment:\n"
        "        LEVEL: '{{ vars.level }}'\n        FIRST: '{{ nodes[0].host }}'\n        ENV: '{{ env.name }}'\n",
    )
    env = envs.load_environment("dev", d)
    overlay = env.overlay()
    assert overlay.data["services"]["web"]["environment"] == {
        "LEVEL": "debug", "FIRST": "10.0.0.1", "ENV": "dev",
    }
    # locations survive rendering, so later errors in the overlay still point at it
    assert overlay.data["services"]["web"]["environment"].loc_of("LEVEL").line == 7


def test_overlay_undefined_name_points_at_the_line(tmp_path):
    d = write(
        tmp_path, "dev",
        "nodes: [{name: n1, host: h}]\noverlay:\n  services:\n    web:\n      image: 'app:{{ vars.tag }}'\n",
    )
    env = envs.load_environment("dev", d)
    with pytest.raises(InputError) as err:
        env.overlay()
    p = err.value.problems[0]
    assert p.line == 5 and "'dict object' has no attribute 'tag'" in p.message
    assert "define it under vars:" in p.fix


def test_check_needs_http_or_command(tmp_path):
    d = write(
        tmp_path, "dev",
        "nodes: [{name: n1, host: h}]\nverify:\n  checks:\n    - name: x\n    - {http: 'http://{{ node.host }}/'}\n"
        "    - {command: pytest -q smoke}\n",
    )
    with pytest.raises(InputError) as err:
        envs.load_environment("dev", d)
    assert [p.key for p in err.value.problems] == ["verify.checks[0]"]


def test_registry_credentials_resolution(tmp_path):
    creds = tmp_path / "registry.env"
    creds.write_text("ORCH_REGISTRY_USER=lab\nORCH_REGISTRY_PASSWORD='s3cret'\n")
    spec = envs.RegistrySpec(
        address="r:5000", username_env="ORCH_REGISTRY_USER", password_env="ORCH_REGISTRY_PASSWORD",
        credentials_file=creds,
    )
    c = spec.credentials(environ={})
    assert (c.username, c.password) == ("lab", "s3cret")
    assert "s3cret" not in repr(c)
    # the controller's environment (CI secrets) wins over the file
    c = spec.credentials(environ={"ORCH_REGISTRY_PASSWORD": "fromci"})
    assert c.password == "fromci"
    missing = envs.RegistrySpec(username="u", password_env="NOPE", source="prod.yaml")
    with pytest.raises(InputError, match="NOPE is not set"):
        missing.credentials(environ={})
    assert envs.RegistrySpec().credentials(environ={}) is None


@pytest.mark.parametrize("spec, environ, key, says, fix", [
    # a password variable, but no user name at all
    (dict(password_env="PW"), {"PW": "x"}, "registry.username",
     "registry.username or registry.username_env is not set", "add `username: NAME` or `username_env: VARIABLE`"),
    # a user name variable that is not set
    (dict(username_env="RU", password_env="PW"), {"PW": "x"}, "registry.username_env",
     "RU is not set", "export RU"),
    # a user name, but nowhere to get a password from
    (dict(username="u"), {}, "registry.password_env",
     "registry.password_env or registry.password_file is not set", "add `password_env: VARIABLE` or"),
    # a password variable that is not set
    (dict(username="u", password_env="NOPE"), {}, "registry.password_env", "NOPE is not set", "export NOPE"),
])
def test_incomplete_registry_credentials_name_what_is_missing(spec, environ, key, says, fix):
    with pytest.raises(InputError) as err:
        envs.RegistrySpec(source="prod.yaml", **spec).credentials(environ=environ)
    [p] = err.value.problems
    text = p.render()
    assert p.file == "prod.yaml" and p.key == key and says in p.message and fix in p.fix
    assert "None" not in text and "export password_file" not in text


def test_empty_password_file_is_named(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("\n")
    with pytest.raises(InputError) as err:
        envs.RegistrySpec(username="u", password_file=pw, source="prod.yaml").credentials(environ={})
    [p] = err.value.problems
    assert p.key == "registry.password_file" and f"{pw} is empty" in p.message


def test_an_empty_node_list_is_bad_input(tmp_path):
    d = write(tmp_path, "dev", "registry: {address: r:5000}\nnodes: []\n")
    with pytest.raises(InputError) as err:
        envs.load_environment("dev", d)
    assert err.value.exit_code == 2
    [p] = err.value.problems
    assert p.file.endswith("dev.yaml") and p.key == "nodes" and p.line == 2
    assert "no nodes listed" in p.message and "name: ..., host: ..." in p.fix


def test_status_and_contains_are_refused_on_command_checks(tmp_path):
    d = write(
        tmp_path, "dev",
        "nodes: [{name: n1, host: h}]\nverify:\n  checks:\n    - {name: ok, http: 'http://h/', status: 204}\n"
        "    - name: smoke\n      command: [pytest, -q]\n      status: 200\n      contains: passed\n",
    )
    with pytest.raises(InputError) as err:
        envs.load_environment("dev", d)
    problems = err.value.problems
    assert [(p.key, p.line) for p in problems] == [("verify.checks[1].status", 7), ("verify.checks[1].contains", 8)]
    assert all(p.file.endswith("dev.yaml") and "http checks only" in p.message and p.fix for p in problems)


def test_unset_registry_and_promote_from_render_empty_not_none(tmp_path):
    from orchestrator.core.environments import load_environment

    d = tmp_path / "environments"
    d.mkdir()
    (d / "dev.yaml").write_text("name: dev\nnodes: [{name: n1, host: 10.0.0.1}]\n"
                                "overlay:\n  x-where: \"[{{ env.registry }}|{{ env.promote_from }}]\"\n")
    env = load_environment("dev", environments_dir=d)
    assert env.template_context()["env"]["registry"] == "" and env.template_context()["env"]["promote_from"] == ""

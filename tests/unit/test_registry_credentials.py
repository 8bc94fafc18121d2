"""Registry credentials go only to their own registry: per image from the controller
(`registry:` and `registries:`), checked again by the agent, and over HTTPS only from the
controller's registry client (the security issue's "credentials go to other registries")."""

import textwrap

import pytest

from agent.fake import FakeEngine
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError, canonical_registry, image_registry
from orchestrator.io import images as I
from orchestrator.app.deploy import DeployOptions, Deployment
from orchestrator.core.environments import RegistryCredentials, parse_environment
from orchestrator.errors import InputError
from orchestrator.core.progress import Progress
from orchestrator.io.registry_client import RegistryAuthError, RegistryClient
from orchestrator.app.workspace import ProjectOptions, load_workspace

from tests.unit.fakes import DIGEST, FakeNode, FakeResponse, FakeSession

LAB_PW = "lab-pa55-x9"
GHCR_PW = "ghcr-t0ken-q7"
D = {k: "sha256:" + k * 64 for k in "abcd"}
BUILT = "10.250.0.1:5000/shop/web@" + D["a"]
OTHER = "10.250.0.1:5443/x/y:tag@" + D["b"]  # another port of the same host: another registry
GHCR = "ghcr.io/org/app@" + D["c"]
HUB = "busybox@" + D["d"]


def env_file(tmp_path, extra=""):
    (tmp_path / "lab-pw").write_text(LAB_PW + "\n")
    (tmp_path / "ghcr.env").write_text(f"GHCR_USER=bot\nGHCR_TOKEN={GHCR_PW}\n")
    path = tmp_path / "environments" / "dev.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(f"""\
        name: dev
        nodes:
          - {{name: n1, host: 10.250.0.201}}
        registry:
          address: 10.250.0.1:5000
          mirror: 10.250.0.1:5001
          username: orch
          password_file: {tmp_path / "lab-pw"}
        """) + extra)
    return path


GHCR_ENTRY = """\
registries:
  - address: ghcr.io
    username_env: GHCR_USER
    password_env: GHCR_TOKEN
    credentials_file: {dir}/ghcr.env
"""


# --------------------------------------------------------------------------- deploy


def deploy(tmp_path, extra=""):
    env_file(tmp_path, extra)
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(f"""\
        name: shop
        services:
          web: {{image: "{BUILT}"}}
          other: {{image: "{OTHER}"}}
          app: {{image: "{GHCR}"}}
          hub: {{image: "{HUB}"}}
        """))
    node = FakeNode("n1", tmp_path / "state")
    node.engine = FakeEngine(registry=[BUILT, "10.250.0.1:5443/x/y@" + D["b"], GHCR, "busybox@" + D["d"]])
    node.engine.registry.add(OTHER)
    node.engine.registry.add(HUB)
    workspace = load_workspace(ProjectOptions(files=[tmp_path / "compose.yaml"], env_name="dev"), environ={})
    Deployment(workspace, DeployOptions(), Progress(), lambda *a, **k: {"n1": node}).run()
    return {a["spec"]["service"]: a.get("auth") for op, a in node.calls if op == "rollout"}


def test_each_service_gets_only_its_own_registrys_credentials(tmp_path):
    auths = deploy(tmp_path)
    assert auths["web"] == {"username": "orch", "password": LAB_PW, "serveraddress": "10.250.0.1:5000"}
    # The leak: the lab registry's user went with the pulls of the other registries' images.
    assert auths["other"] is None and auths["app"] is None and auths["hub"] is None


def test_registries_entries_go_to_their_own_host_only(tmp_path):
    auths = deploy(tmp_path, GHCR_ENTRY.format(dir=tmp_path))
    assert auths["app"] == {"username": "bot", "password": GHCR_PW, "serveraddress": "ghcr.io"}
    assert auths["web"]["password"] == LAB_PW
    assert auths["other"] is None and auths["hub"] is None


# --------------------------------------------------------------------------- agent


def agent_run(tmp_path, op, image, auth):
    engine = FakeEngine(registry=[image])
    ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path / "agent"), emit=lambda t, **d: None)
    spec = {"project": "shop", "service": "web", "env": "dev", "replicas": [1],
            "container": {"image": image}, "config_hash": "0" * 12}
    args = {"spec": spec, "auth": auth}
    if op == "rollout":
        args["replicas"] = [1]
    OPERATIONS[op](ctx, args)
    return engine


@pytest.mark.parametrize("op", ["rollout", "apply"])
@pytest.mark.parametrize("image,server", [
    (OTHER, "10.250.0.1:5000"),  # same host, another port
    (GHCR, "10.250.0.1:5000"),
    (HUB, "10.250.0.1:5000"),
    (BUILT, "ghcr.io"),
    (BUILT, ""),  # credentials that say nothing of where they belong
])
def test_agent_refuses_credentials_of_another_registry(tmp_path, op, image, server):
    auth = {"username": "orch", "password": LAB_PW, "serveraddress": server}
    if not server:
        del auth["serveraddress"]
    with pytest.raises(AgentError) as err:
        agent_run(tmp_path, op, image, auth)
    assert err.value.kind == "bad_request" and "serveraddress" in err.value.message
    assert LAB_PW not in err.value.message and "orch" not in err.value.message.replace("orch-", "")


@pytest.mark.parametrize("image,server", [
    (BUILT, "10.250.0.1:5000"), (GHCR, "GHCR.io"), (HUB, "docker.io"), (HUB, "https://index.docker.io/v1/"),
])
def test_agent_pulls_with_credentials_of_the_images_registry(tmp_path, image, server):
    auth = {"username": "u", "password": "p", "serveraddress": server}
    engine = agent_run(tmp_path, "rollout", image, auth)
    assert engine.pull_auth == [auth]


def test_image_registry_is_dockers_rule():
    assert image_registry(OTHER) == "10.250.0.1:5443"
    assert image_registry("localhost/a") == "localhost" and image_registry("org/app:1") == "docker.io"
    assert canonical_registry("Index.Docker.IO") == "docker.io"


# --------------------------------------------------------------------------- environment file


def test_registries_parse_and_resolve(tmp_path):
    env = parse_environment(env_file(tmp_path, GHCR_ENTRY.format(dir=tmp_path)))
    (ghcr,) = env.registries
    assert env.registry_for("ghcr.io") is ghcr and env.registry_for("10.250.0.1:5000") is env.registry
    assert env.registry_for("10.250.0.1:5443") is None
    assert ghcr.credentials({}) == RegistryCredentials("bot", GHCR_PW)
    assert GHCR_PW not in repr(env)
    assert I.pull_auth(env, "ghcr.io/org/app:1")["serveraddress"] == "ghcr.io"
    assert I.pull_auth(env, OTHER) is None


@pytest.mark.parametrize("extra,key,words", [
    ("registries: {address: ghcr.io}\n", "registries", "must be a list"),
    ("registries:\n  - {username: u}\n", "registries[0]", "needs an address"),
    ("registries:\n  - {address: 'https://ghcr.io'}\n", "registries[0].address", "not a registry host[:port]"),
    ("registries:\n  - {address: ghcr.io, pasword_env: X}\n", "registries[0].pasword_env", "unknown key"),
    ("registries:\n  - {address: '10.250.0.1:5000'}\n", "registries[0].address", "the environment's own registry"),
    ("registries:\n  - {address: '10.250.0.1:5001'}\n", "registries[0].address", "used anonymously"),
    ("registries:\n  - {address: ghcr.io}\n  - {address: GHCR.io}\n", "registries[1].address", "listed twice"),
])
def test_bad_registries_are_located_errors_with_a_fix(tmp_path, extra, key, words):
    path = env_file(tmp_path, extra)
    with pytest.raises(InputError) as err:
        parse_environment(path)
    (problem,) = err.value.problems
    assert problem.key == key and words in problem.message and problem.fix
    assert problem.file == str(path) and problem.line and problem.line >= 9  # below the 8 lines of env_file()


def test_incomplete_registries_credentials_name_the_entry(tmp_path):
    env = parse_environment(env_file(tmp_path, "registries:\n  - {address: ghcr.io, username: bot, "
                                               "password_env: NOPE_TOKEN}\n"))
    with pytest.raises(InputError) as err:
        I.pull_auth(env, GHCR, environ={})
    (problem,) = err.value.problems
    assert problem.key == "registries[0].password_env" and "NOPE_TOKEN" in problem.message and problem.fix
    assert problem.line == 10  # the entry's line (flow style: its keys share it)


def test_pinning_through_a_registries_entry_uses_its_credentials(tmp_path):
    env = parse_environment(env_file(tmp_path, GHCR_ENTRY.format(dir=tmp_path)))
    client, via = I._client_for(I.parse_reference("ghcr.io/org/app:1"), env, {}, {})
    assert client.address == "ghcr.io" and client._credentials == RegistryCredentials("bot", GHCR_PW)
    other, _ = I._client_for(I.parse_reference("10.250.0.1:5443/x/y:1"), env, {}, {})
    assert other._credentials is None


# --------------------------------------------------------------------------- registry client: HTTPS only


def bearer(realm, seen):
    def handler(method, url, headers, auth, params):
        if url.startswith(realm):
            seen.append(auth)
            return FakeResponse(200, json_body={"token": "TKN"} if auth else {})
        if headers.get("Authorization") == "Bearer TKN":
            return FakeResponse(200, {"Docker-Content-Digest": DIGEST})
        return FakeResponse(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})
    return handler


@pytest.mark.parametrize("realm", ["http://reg.example/token", "http://auth.example/token"])
def test_no_credentials_to_a_plain_http_token_realm(realm):
    seen = []
    c = RegistryClient("reg.example", credentials=RegistryCredentials("u", LAB_PW), session=FakeSession(bearer(realm, seen)))
    with pytest.raises(RegistryAuthError) as err:
        c.manifest_digest("org/app", "1")
    assert seen == [None]  # asked anonymously
    text = err.value.render()
    assert f"not sent to {realm}: not HTTPS" in text and LAB_PW not in text and LAB_PW not in repr(c)


def test_credentials_to_an_https_realm_on_another_host():
    seen = []
    c = RegistryClient("reg.example", credentials=RegistryCredentials("u", LAB_PW),
                       session=FakeSession(bearer("https://auth.example/token", seen)))
    assert c.manifest_digest("org/app", "1") == DIGEST and seen == [("u", LAB_PW)]


def test_no_basic_credentials_to_a_registry_over_http():
    calls = []

    def handler(method, url, headers, auth, params):
        calls.append(auth)
        return FakeResponse(401, {"WWW-Authenticate": 'Basic realm="r"'})

    c = RegistryClient("r:5000", scheme="http", credentials=RegistryCredentials("u", LAB_PW), session=FakeSession(handler))
    with pytest.raises(RegistryAuthError) as err:
        c.manifest_digest("a/b", "1")
    assert calls == [None] and "not HTTPS" in err.value.render() and LAB_PW not in err.value.render()
    assert c.ping().status == "unauthorized" and LAB_PW not in repr(c.ping())


def test_registries_passwords_are_masked_in_output(tmp_path):
    from orchestrator.cli import output

    (tmp_path / "corp-pw").write_text("corp-pa55-w0rd-z3\n")
    env = parse_environment(env_file(tmp_path, "registries:\n  - {address: corp.example:5000, username: ci, "
                                               f"password_file: {tmp_path / 'corp-pw'}}}\n"))
    undo = output.install_redaction({})
    try:
        output.protect_environment(env)
        redactor = output.current_redactor()
    finally:
        undo()
    assert "corp-pa55-w0rd-z3" in redactor and LAB_PW in redactor
    assert redactor.scrub("pull with corp-pa55-w0rd-z3") == "pull with " + output.MASK

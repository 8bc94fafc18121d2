"""Build, push and pin images against the lab: the host engine builds examples/hello,
pushes to the lab registry (TLS + htpasswd), the digest is read back, nodes pull by
digest with per-request credentials, anonymous pulls are refused, a one-line change
sends one small layer, and a stopped or refusing registry fails the preflight fast.

Each test module works on a copy of examples/hello under its own project name, so
it never touches what others push. The "stopped registry" test starts and stops its
own throwaway registry (10.250.0.1, a free port, the lab's certificate); the lab's
registry is never stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.wire.spec import config_hash
from orchestrator.io import images as I
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle
from orchestrator.core.environments import NodeSpec, load_environment, parse_environment
from orchestrator.io.registry_client import RegistryAuthError, RegistryClient, RegistryUnavailable
from orchestrator.app.workspace import ProjectOptions, load_workspace

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"
ORCH = shutil.which("orch", path=str(Path(sys.executable).parent)) or "orch"
MEASURE = Path(os.environ.get("ORCH_E2E_MEASURE", "/tmp/orch-e2e-push-measure.json"))


@pytest.fixture(scope="module")
def app(lab, tmp_path_factory):
    """A copy of examples/hello with a unique project name; its dev environment."""
    root = tmp_path_factory.mktemp("hello")
    shutil.copytree(EXAMPLE, root / "hello")
    name = "e2eimg" + uuid.uuid4().hex[:6]
    ws = load_workspace(ProjectOptions(project_name=name, env_name="dev", working_dir=root / "hello",
                                       files=[root / "hello" / "compose.yaml"]))
    yield {"dir": root / "hello", "name": name, "project": ws.project, "env": ws.environment, "lab": lab}
    api = I.docker_client().api  # drop this module's tags from the host engine (layers stay cached)
    for image in api.images():
        for tag in image.get("RepoTags") or []:
            if f"/{name}/" in tag:
                api.remove_image(tag)


def reload(app):
    ws = load_workspace(ProjectOptions(project_name=app["name"], env_name="dev", working_dir=app["dir"],
                                       files=[app["dir"] / "compose.yaml"]))
    return ws.project


@pytest.fixture(scope="module")
def first_push(app):
    lines = []
    out = I.prepare_images(app["project"], app["env"], version="v1", on_output=lambda s, ln: lines.append((s, ln)))
    return out, lines


def registry(app):
    env = app["env"]
    return RegistryClient(env.registry.address, ca_file=env.registry.ca_file, credentials=env.registry.credentials())


def test_build_and_push_pins_every_service_to_the_registrys_digest(app, first_push):
    out, lines = first_push
    name = app["name"]
    assert set(out.pins) == {"api", "web"}
    reg = registry(app)
    for p in out.pushes:
        assert p.ref == f"10.250.0.1:5000/{name}/{p.service}:v1"
        assert p.digest == reg.manifest_digest(f"{name}/{p.service}", "v1")  # read back from the registry
        assert out.pins[p.service] == f"10.250.0.1:5000/{name}/{p.service}@{p.digest}"
    api = next(p for p in out.pushes if p.service == "api")
    # The debian base layer already is in the registry (library/debian): mounted, not sent.
    assert api.layers_mounted >= 1 and api.bytes_pushed < api.image_bytes / 10
    assert any(s == "api" and "Step" in ln for s, ln in lines)
    password = app["env"].registry.credentials().password
    assert not any(password in ln for _, ln in lines)


def test_one_line_change_sends_one_small_layer(app, first_push):
    first, _ = first_push
    before = {p.service: p for p in first.pushes}
    msg = app["dir"] / "api" / "app" / "message.txt"
    msg.write_text(f"hello from the api, version two ({uuid.uuid4().hex[:8]})\n")  # new bytes every run
    start = time.monotonic()
    out = I.prepare_images(reload(app), app["env"], version="v2")
    seconds = time.monotonic() - start
    after = {p.service: p for p in out.pushes}
    api, web = after["api"], after["web"]
    assert api.digest != before["api"].digest and api.layers_pushed == 1
    assert api.bytes_pushed < 10_000 < 40_000_000 < api.image_bytes
    # web did not change: same image, same digest, nothing but the manifest travels.
    assert web.digest == before["web"].digest and web.layers_pushed == 0 and web.bytes_pushed < 2_000
    MEASURE.write_text(json.dumps({
        "change": "one line of examples/hello/api/app/message.txt",
        "api": {"bytes_pushed": api.bytes_pushed, "layers_pushed": api.layers_pushed, "image_bytes": api.image_bytes},
        "web": {"bytes_pushed": web.bytes_pushed, "layers_pushed": web.layers_pushed, "image_bytes": web.image_bytes},
        "first_push": {p.service: {"bytes_pushed": p.bytes_pushed, "layers_pushed": p.layers_pushed,
                                   "layers_mounted": p.layers_mounted} for p in first.pushes},
        "rebuild_and_push_seconds": round(seconds, 2),
    }, indent=2))


# --------------------------------------------------------------------------- nodes pull by digest


@pytest.fixture(scope="module")
def node(lab):
    targets = [NodeSpec(n.name, n.address, n.ssh_port, lab.ssh_user, lab.ssh_key) for n in lab.nodes]
    options = T.SSHOptions(known_hosts=lab.known_hosts, allow_agent=False, connect_timeout=5, command_timeout=120)
    conn = T.connect(next(t for t in targets if t.name == "test-1"), options)
    session = T.AgentSession.open(conn, current_bundle())
    yield {"conn": conn, "session": session}
    session.close()
    conn.close()


@pytest.fixture
def project_name(node):
    name = "e2epull" + uuid.uuid4().hex[:6]
    yield name
    node["session"].call("remove", {"project": name, "env": "test"})


def spec(project, image, command=("sleep", "3600")):
    c = {"image": image, "command": list(command), "networks": [{"name": "default"}], "stop_grace_period": 1,
         "init": True}
    return {"project": project, "service": "app", "env": "test", "release": "r1", "replicas": [1],
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}, "pull": "always"}


def test_node_pulls_by_digest_with_per_request_credentials(app, first_push, node, project_name):
    out, _ = first_push
    ref = out.pins["web"]
    auth = I.pull_auth(app["env"], ref)
    assert auth and auth["serveraddress"] == "10.250.0.1:5000"
    events = []
    s = node["session"]
    res = s.call("apply", {"spec": spec(project_name, ref), "auth": auth}, on_event=events.append)
    assert res["containers"][0]["state"] == "running"
    assert [e["status"] for e in events if e["type"] == "image.pull"][-1] == "done"
    state = s.call("state", {"project": project_name})["containers"]
    assert state[0]["image"] == ref and "@sha256:" in state[0]["image"]
    # The password never lands in a file on the node, nor in what the agent reports.
    password = auth["password"]
    assert password not in json.dumps(events + state)
    found = node["conn"].run(["grep", "-rl", "--", password, "/var/lib/orch-agent", "/root/.docker"])
    assert found.stdout.strip() == ""


def test_anonymous_pull_is_refused(first_push, node, project_name):
    out, _ = first_push
    with pytest.raises(T.AgentError) as err:
        node["session"].call("apply", {"spec": spec(project_name, out.pins["api"])})
    assert err.value.kind == "pull"
    assert "no basic auth credentials" in err.value.message or "unauthorized" in err.value.message.lower()


def test_docker_hub_name_pinned_through_the_mirror_runs_on_a_node(app, node, project_name):
    project = app["project"]
    from orchestrator.core.compose import Service

    project.services["tool"] = Service(name="tool", image="busybox:latest")
    try:
        pins = I.resolve_images(project, app["env"], services=["tool"])
    finally:
        del project.services["tool"]
    ref = pins["tool"]
    assert ref.startswith("busybox@sha256:")
    assert I.pull_auth(app["env"], ref) is None  # lab credentials never go towards Docker Hub
    res = node["session"].call("apply", {"spec": spec(project_name, ref)})
    assert res["containers"][0]["state"] == "running"


# --------------------------------------------------------------------------- preflight


def free_port(host: str) -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def throwaway_registry(lab, tmp_path):
    """Our own registry on 10.250.0.1:<free port>, lab certificate and htpasswd; stopped by the test."""
    from orchestrator.lab.model import LabPaths

    p = LabPaths.for_name(lab.name)
    host = lab.host_address
    port = free_port(host)
    (tmp_path / "storage").mkdir()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
        "http": {"addr": f"{host}:{port}", "secret": uuid.uuid4().hex,
                 "tls": {"certificate": str(p.registry_cert), "key": str(p.registry_key)}},
        "auth": {"htpasswd": {"realm": "e2e", "path": str(p.htpasswd)}},
    }))
    log = open(tmp_path / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    address = f"{host}:{port}"
    deadline = time.monotonic() + 120  # a wait for the registry to answer, not a speed check
    while RegistryClient(address, ca_file=lab.ca_cert, timeout=1).ping().status == "down":
        assert proc.poll() is None, "the throwaway registry exited: " + (tmp_path / "registry.log").read_text()
        assert time.monotonic() < deadline, ("the throwaway registry did not answer within 120 s: "
                                             + (tmp_path / "registry.log").read_text())
        time.sleep(0.1)
    env_path = tmp_path / "dev.yaml"
    env_path.write_text((EXAMPLE / "environments" / "dev.yaml").read_text().replace("10.250.0.1:5000", address))
    yield {"proc": proc, "address": address, "env": parse_environment(env_path), "env_dir": tmp_path}
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)
    log.close()


def test_stopped_registry_fails_the_preflight_fast(throwaway_registry, app, monkeypatch):
    import requests

    reg = throwaway_registry
    assert I.check_registry(reg["env"]).ok
    reg["proc"].terminate()
    reg["proc"].wait(60)
    # Fast = on the first refused connection: one request, no retries, no waiting for a
    # timeout (the reason says "connection refused", not "no answer within ...").
    sent = []
    real_request = requests.Session.request

    def request(self, method, url, *args, **kw):
        sent.append((method, url))
        return real_request(self, method, url, *args, **kw)

    monkeypatch.setattr(requests.Session, "request", request)
    with pytest.raises(RegistryUnavailable) as err:
        I.check_registry(reg["env"])
    monkeypatch.undo()
    assert sent == [("GET", f"https://{reg['address']}/v2/")], sent
    text = err.value.render()
    assert f"registry {reg['address']} (environment dev) is not reachable: connection refused" in text
    assert "no node was touched" in text and err.value.exit_code == 1
    # The whole image step fails before building anything.
    api_before = I.docker_client().api.images(name=f"10.250.0.1:5000/{app['name']}/api")
    with pytest.raises(RegistryUnavailable):
        I.prepare_images(app["project"], reg["env"], version="never")
    assert I.docker_client().api.images(name=f"{reg['address']}/{app['name']}/api") == []
    assert I.docker_client().api.images(name=f"10.250.0.1:5000/{app['name']}/api") == api_before


def test_refused_credentials_fail_the_preflight_without_printing_them(app):
    env = load_environment("dev", app["dir"] / "environments")
    wrong = "not-the-password-" + uuid.uuid4().hex[:6]
    with pytest.raises(RegistryAuthError) as err:
        I.check_registry(env, environ={"ORCH_REGISTRY_USER": "orch", "ORCH_REGISTRY_PASSWORD": wrong})
    assert "refuses the credentials of user 'orch'" in err.value.render() and wrong not in err.value.render()
    cp = subprocess.run([ORCH, "push", "--env", "dev", "-p", app["name"], "--version", "v1", "--json"],
                        cwd=app["dir"], capture_output=True, text=True, timeout=600,  # a hang guard
                        env={**os.environ, "ORCH_REGISTRY_PASSWORD": wrong})
    assert cp.returncode == 1
    assert "refuses the credentials" in cp.stderr and wrong not in cp.stdout + cp.stderr
    assert json.loads(cp.stdout.splitlines()[-1])["error"]["kind"] == "RegistryAuthError"


def test_orch_push_prints_tags_digests_and_bytes(app, first_push):
    cp = subprocess.run([ORCH, "push", "--env", "dev", "-p", app["name"], "--version", "v1", "--json"],
                        cwd=app["dir"], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    first, _ = first_push
    assert doc["images"]["web"] == first.pins["web"]  # unchanged sources: the same digest again
    (web,) = [p for p in doc["pushed"] if p["service"] == "web"]  # pushed again: every layer already there
    assert web["layers_pushed"] == 0 and web["image"] == first.pins["web"]


def test_orch_build_builds_the_named_services(app):
    cp = subprocess.run([ORCH, "build", "web", "--env", "dev", "-p", app["name"], "--version", "cli1", "--json"],
                        cwd=app["dir"], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert [b["service"] for b in doc["built"]] == ["web"] and doc["image_version"] == "cli1"
    assert doc["built"][0]["tag"] == f"10.250.0.1:5000/{app['name']}/web:cli1"
    assert "web | Step 1/" in cp.stderr  # build output streams (to stderr with --json)
    dockerfile = app["dir"] / "web" / "Dockerfile"
    good = dockerfile.read_text()
    dockerfile.write_text(good + "RUN echo about to fail && false\n")
    try:
        cp = subprocess.run([ORCH, "build", "web", "--env", "dev", "-p", app["name"], "--version", "cli2"],
                            cwd=app["dir"], capture_output=True, text=True, timeout=300)
    finally:
        dockerfile.write_text(good)
    assert cp.returncode == 1
    assert "building web failed at step" in cp.stderr and "(RUN echo about to fail && false)" in cp.stderr
    assert "  | about to fail" in cp.stderr and "returned a non-zero code: 1" in cp.stderr

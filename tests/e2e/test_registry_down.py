"""`orch up` fails before touching any node when the images step cannot succeed, and the
release already live keeps serving:

- the registry is stopped (an environment file pointing at 10.250.0.1 on a port
  nothing listens on: the lab's own registry is never stopped);
- the registry refuses the credentials (and the password is not printed);
- a build step fails (the command shows that step's output).

"Before touching any node": the JSON output has no connect phase, nothing was
recorded in the ledger, and the containers are the same ones.
"""

from __future__ import annotations

import shutil
import socket
import uuid

import pytest

from .hello_app import HOSTS, Hello, events
from .helpers import http_get, last_json

pytestmark = pytest.mark.e2e


def free_port(host: str) -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def app(lab, tmp_path_factory):
    a = Hello(tmp_path_factory.mktemp("regdown"), "reg")
    a.first, _ = a.up("dev")
    yield a
    a.down_everywhere()
    a.remove_local_images()


def untouched(app, cp, before_ids):
    """The command failed before any connection, and release 1 still serves."""
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert not any(e.get("phase") in ("connect", "lock", "apply") for e in events(cp.stdout))
    assert [(r["id"], r["status"]) for r in app.history("dev")["releases"]] == [(1, "live")]
    assert {c["name"]: c["id"] for c in app.ps("dev")} == before_ids
    assert "hello from orch" in http_get(f"http://{HOSTS['dev'][0]}:{app.web_port}/")


def test_a_stopped_registry_fails_before_any_node_is_touched(app, lab):
    before = {c["name"]: c["id"] for c in app.ps("dev")}
    envs = app.dir.parent / "envs-down"
    shutil.copytree(app.dir / "environments", envs)
    address = f"{lab.host_address}:{free_port(lab.host_address)}"
    dev = envs / "dev.yaml"
    dev.write_text(dev.read_text().replace("10.250.0.1:5000", address))
    (app.dir / "api" / "app" / "message.txt").write_text(f"a change to deploy {uuid.uuid4().hex[:6]}\n")
    cp = app.run("up", "--env", "dev", "-p", app.name, "--environments", str(envs), "--json", check=False)
    final = last_json(cp.stdout)
    assert final["error"]["kind"] == "RegistryUnavailable"
    assert f"registry {address} (environment dev) is not reachable: connection refused" in cp.stderr
    assert "no node was touched" in cp.stderr
    untouched(app, cp, before)
    # Fails at the preflight, before the (slow) build of the changed api: nothing was built.
    # (No wall-clock bound: the machine may be busy.)
    assert not [e for e in events(cp.stdout) if e.get("event") == "build"], cp.stdout
    assert "Nothing was built or pushed" in cp.stderr


def test_refused_credentials_fail_before_any_node_is_touched(app):
    before = {c["name"]: c["id"] for c in app.ps("dev")}
    wrong = "wrong-" + uuid.uuid4().hex[:8]
    cp = app.run("up", "--env", "dev", "-p", app.name, "--json", check=False,
                 env={"ORCH_REGISTRY_USER": "orch", "ORCH_REGISTRY_PASSWORD": wrong})
    assert last_json(cp.stdout)["error"]["kind"] == "RegistryAuthError"
    assert "refuses the credentials" in cp.stderr and wrong not in cp.stdout + cp.stderr
    untouched(app, cp, before)


def test_a_failed_build_shows_the_step_and_touches_no_node(app):
    before = {c["name"]: c["id"] for c in app.ps("dev")}
    dockerfile = app.dir / "web" / "Dockerfile"
    good = dockerfile.read_text()
    dockerfile.write_text(good + "RUN echo about to fail && false\n")
    try:
        cp = app.run("up", "--env", "dev", "-p", app.name, "--json", check=False)
    finally:
        dockerfile.write_text(good)
    assert last_json(cp.stdout)["error"]["kind"] == "BuildFailed"
    assert "building web failed at step" in cp.stderr and "  | about to fail" in cp.stderr
    assert any(e.get("event") == "build" and e.get("service") == "web" for e in events(cp.stdout))  # as JSON too
    untouched(app, cp, before)


def test_with_the_registry_back_the_change_deploys(app):
    final, _ = app.up("dev")
    assert final["release_id"] == 2 and final["changed"] == ["api"]
    assert final["images"]["web"] == app.first["images"]["web"]

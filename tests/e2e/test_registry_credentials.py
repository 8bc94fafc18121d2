"""Registry credentials go only to their own registry, on the lab's real engines.

A TLS endpoint on another port of the lab bridge (10.250.0.1:PORT, its certificate
signed by the lab CA, trusted by the node engines through /etc/docker/certs.d for the
test's duration) answers every request with 401 and `WWW-Authenticate: Basic`, and
records the Authorization headers it receives. A project with one built service (so
the lab registry's credentials are in play) and one service whose image lives on that
endpoint is deployed to dev: the pull from the endpoint fails, and what matters is
what it was sent.

- Without a `registries:` entry for it, it must never see the lab registry's user (it
  did: the environment's credentials went with every service's pull).
- With one, it sees exactly that entry's credentials, and never the lab's.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.lab import pki

from .helpers import last_json

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ORCH = str(Path(sys.executable).parent / "orch")
LAB = Path("/var/lib/orch-lab")
CERTS_D = Path("/etc/docker/certs.d")


class Recorder(BaseHTTPRequestHandler):
    seen: list  # (method, path, Authorization header or None), set per server

    def _challenge(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="e2e-creds"')
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = _challenge

    def log_message(self, *args) -> None:  # quiet
        pass


class Endpoint:
    """The TLS endpoint, with the node engines' trust for it."""

    def __init__(self, host: str, workdir: Path):
        key, csr, crt, ext = (workdir / n for n in ("tls.key", "tls.csr", "tls.crt", "tls.ext"))
        subprocess.run(pki.csr_argv(key, csr, host), check=True, capture_output=True)
        ext.write_text(pki.server_ext(host))
        # Its own serial: the lab CA's serial file is left alone.
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(LAB / "ca.crt"),
                        "-CAkey", str(LAB / "ca" / "ca.key"), "-set_serial", "0x" + secrets.token_hex(12),
                        "-out", str(crt), "-days", "1", "-extfile", str(ext)], check=True, capture_output=True)
        self.seen: list = []
        handler = type("Handler", (Recorder,), {"seen": self.seen})
        self.server = ThreadingHTTPServer((host, 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(crt), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.address = f"{host}:{self.server.server_address[1]}"
        self.trust = CERTS_D / self.address
        self.trust.mkdir(parents=True)
        shutil.copy(LAB / "ca.crt", self.trust / "ca.crt")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def users(self) -> list[str]:
        """The user names of the Basic credentials received."""
        out = []
        for _, _, header in list(self.seen):
            if header and header.lower().startswith("basic "):
                out.append(base64.b64decode(header.split(" ", 1)[1]).decode(errors="replace").split(":", 1)[0])
            elif header:
                out.append(header)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.trust, ignore_errors=True)


@pytest.fixture
def endpoint(lab, tmp_path):
    ep = Endpoint(lab.host_address, tmp_path)
    yield ep
    ep.close()
    assert not ep.trust.exists()


@pytest.fixture
def project(lab, tmp_path, endpoint):
    """A project (built + other) and a copy of the lab's environment files."""
    name = f"e2e-creds-{uuid.uuid4().hex[:6]}"
    d = tmp_path / "app"
    (d / "built").mkdir(parents=True)
    (d / "built" / "Dockerfile").write_text(f'FROM busybox\nRUN echo {name} > /name\nCMD ["sleep", "3600"]\n')
    digest = "sha256:" + uuid.uuid4().hex * 2
    (d / "compose.yaml").write_text(
        f"name: {name}\nservices:\n  built:\n    build: ./built\n"
        f"  other:\n    image: {endpoint.address}/e2e/other:tag@{digest}\n")
    shutil.copytree(ROOT / "environments", d / "environments")
    p = type("Project", (), {"dir": d, "name": name, "env_file": d / "environments" / "dev.yaml"})()
    yield p
    down = run(p, "down", check=False)
    try:
        from orchestrator.io.images import docker_client

        api = docker_client().api
        for image in api.images():
            for tag in image.get("RepoTags") or []:
                if f"/{name}/" in tag:
                    api.remove_image(tag)
    except Exception:
        pass
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]


def run(p, command: str, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    cp = subprocess.run([ORCH, command, "--env", "dev", "-p", p.name, "--json", *args], cwd=p.dir,
                        capture_output=True, text=True, timeout=900,
                        env={**os.environ, "ORCH_LOCK_WAIT": os.environ.get("ORCH_LOCK_WAIT", "600"), **(env or {})})
    if check:
        assert cp.returncode == 0, f"orch {command} exited {cp.returncode}:\n{cp.stdout[-4000:]}\n{cp.stderr[-4000:]}"
    return cp


def up_fails_on_other(p) -> subprocess.CompletedProcess:
    cp = run(p, "up", check=False, env=getattr(p, "environ", None))
    assert cp.returncode == 1, cp.stdout[-4000:] + cp.stderr[-4000:]
    final = last_json(cp.stdout)
    assert "other" in cp.stderr and final["error"], cp.stderr[-4000:]
    return cp


def test_the_environment_registrys_credentials_never_reach_another_registry(lab, endpoint, project):
    lab_user, lab_password = lab.registry_credentials()
    cp = up_fails_on_other(project)
    assert endpoint.seen, "the node engine never contacted the endpoint: the test proves nothing"
    # (The message names users and paths, never the header: it carries the password.)
    assert lab_user not in endpoint.users(), (f"the lab registry's user went to {endpoint.address}: "
                                              f"{endpoint.users()} on {[s[:2] for s in endpoint.seen]}")
    assert endpoint.users() == []  # no credentials at all: none are configured for it
    assert lab_password not in cp.stdout + cp.stderr


def test_a_registries_entry_sends_its_own_credentials_only_there(lab, endpoint, project):
    lab_user, _ = lab.registry_credentials()
    password = "e2e-" + secrets.token_hex(8)
    with project.env_file.open("a") as fh:
        fh.write(f"registries:\n  - address: {endpoint.address}\n    username: e2e-other\n"
                 "    password_env: E2E_OTHER_REGISTRY_PASSWORD\n")
    project.environ = {"E2E_OTHER_REGISTRY_PASSWORD": password}
    cp = up_fails_on_other(project)
    users = endpoint.users()
    assert users and set(users) == {"e2e-other"}, users
    assert lab_user not in users
    sent = {base64.b64decode(h.split(" ", 1)[1]).decode() for _, _, h in endpoint.seen if h}
    assert sent == {f"e2e-other:{password}"}
    assert password not in cp.stdout + cp.stderr  # the secret filter covers registries: passwords too

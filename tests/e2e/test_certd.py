"""The certificate daemon on the lab's prod (2 nodes), with the real pebble: prod-1 is the
issuer, prod-2 a follower, and the name resolves ONLY to prod-2. The CA's HTTP-01 request
reaches prod-2 (a plain HTTP relay in the test stands where the node's HAProxy forwards
/.well-known/acme-challenge/ to the local certd socket), prod-2's certd asks the issuer over
the mesh, the certificate is issued once, both nodes hold it (same fingerprint), pebble got
one order for the name; a forced renewal reaches the follower with a new fingerprint. Keys
and the secret stay out of results, logs and the process list.

Own environment name (certd-XXXX) and host name (certd-XXXX.lab.test); the prod mesh is kept
up by an own tiny project (e2e-certd-XXXXXX) for the duration.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.core.environments import NodeSpec
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ROOT / "environments"
AGENT_STATE = "/var/lib/orch-agent"
COMPOSE = """\
name: certdmesh
services:
  idle:
    image: busybox
    command: ["sleep", "86400"]
    init: true
    stop_grace_period: 1s
    deploy: {replicas: 2}
"""
# The HAProxy stand-in: GET on NODE:80 -> the certd challenge socket, answer passed through.
RELAY = r"""
import http.server, socket, sys
sock_path, address = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.log_message("GET %s", self.path)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(("GET %s HTTP/1.0\r\nHost: relay\r\n\r\n" % self.path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        self.wfile.write(data)
    def log_message(self, fmt, *a):
        sys.stderr.write("relay %s %s\n" % (self.client_address[0], fmt % a))
        sys.stderr.flush()
http.server.HTTPServer((address, 80), H).serve_forever()
"""


@pytest.fixture(scope="module")
def mesh(orch, lab, tmp_path_factory):
    """A tiny prod project, so the prod mesh exists (and stays) while the test runs."""
    d = tmp_path_factory.mktemp("certd")
    (d / "compose.yaml").write_text(COMPOSE)
    project = "e2e-certd-" + uuid.uuid4().hex[:6]
    args = ("--env", "prod", "--file", str(d / "compose.yaml"), "-p", project, "--environments", str(ENVIRONMENTS))
    orch("up", *args, "--json", timeout=600)
    yield
    orch("down", *args, "--json", check=False, timeout=600)


@pytest.fixture(scope="module")
def agents(lab, mesh):
    options = T.SSHOptions(known_hosts=lab.known_hosts, allow_agent=False, env_name="prod", connect_timeout=5,
                           command_timeout=300)
    targets = [NodeSpec(n.name, n.address, n.ssh_port, lab.ssh_user, lab.ssh_key, python="/usr/bin/python3")
               for n in lab.nodes if n.name in ("prod-1", "prod-2")]
    conns = T.connect_all(targets, options)
    bundle = current_bundle()
    sessions = {name: T.AgentSession.open(c, bundle) for name, c in conns.items()}
    yield sessions
    for s in sessions.values():
        s.close()
    T.close_all(conns)


def mesh_address(session) -> str:
    from agent.wire.mesh import node_address

    cfg = session.call("mesh_status", {"env": "prod"})["config"]
    assert cfg, "the prod mesh is not up"
    return node_address(cfg["cidr"], cfg["slot"])


def certd_dir(env: str, role: str) -> str:
    """The node's certd directory for env (the lab's nodes share this filesystem)."""
    for d in glob.glob(os.path.join(AGENT_STATE, "engines", "*", "certd", env)):
        with open(os.path.join(d, "config.json")) as fh:
            if json.load(fh)["role"] == role:
                return d
    raise AssertionError("no %s certd directory for %s" % (role, env))


def relay_on(node, sock: str) -> subprocess.Popen:
    proc = subprocess.Popen(["nsenter", f"--net={node.netns}", "--", sys.executable, "-c", RELAY, sock, node.address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    if proc.poll() is not None:
        pytest.fail(f"the challenge relay cannot listen on {node.address}:80 (a test's ingress there?): "
                    f"{proc.stderr.read()}")
    return proc


def pebble_orders(lab, name: str, since: int) -> int:
    """Validations pebble ran for `name` since byte `since` of its log: one per order
    (orch lab runs pebble with PEBBLE_AUTHZREUSE=0, so no order reuses one)."""
    text = pebble_log(lab).read_bytes()[since:].decode(errors="replace")
    return sum(1 for line in text.splitlines() if "Pulled a task from the Tasks queue" in line and name in line)


def pebble_log(lab) -> Path:
    return Path(lab.state_dir) / "logs" / "pebble.log"


def pebble_log_size(lab) -> int:
    return pebble_log(lab).stat().st_size


def fingerprints(result) -> dict:
    return {c["host"]: c["fingerprint"] for c in result["certs"]}


def test_issuer_and_follower_get_one_certificate_once_and_a_forced_renewal_reaches_the_follower(lab, agents):
    from agent.certs import store
    from orchestrator.lab import dns

    p1, p2 = agents["prod-1"], agents["prod-2"]
    env = "certd-" + secrets.token_hex(3)
    name = dns.add_name(f"{env}.lab.test", [lab.node("prod-2").address], lab=lab.name)
    secret = secrets.token_urlsafe(32)
    a1, a2 = mesh_address(p1), mesh_address(p2)
    relay = None
    try:
        acme = {"directory": lab.acme_directory, "ca_pem": Path(lab.ca_cert).read_text()}
        r1 = p1.call("certd_configure", {"env": env, "role": "issuer", "hosts": [name], "secret": secret,
                                         "acme": acme, "listen_address": a1, "followers": [a2]})
        r2 = p2.call("certd_configure", {"env": env, "role": "follower", "hosts": [name], "secret": secret,
                                         "issuer_address": a1})
        assert r1["running"] and r2["running"] and r1["secret_id"] == r2["secret_id"]
        d1, d2 = certd_dir(env, "issuer"), certd_dir(env, "follower")
        relay = relay_on(lab.node("prod-2"), store.certd_socket(os.path.dirname(os.path.dirname(d2)), env))

        since = pebble_log_size(lab)
        t0 = time.monotonic()
        out = p1.call("certd_ensure", {"env": env})
        issued_s = time.monotonic() - t0
        assert out["ordered"] == [name] and out["last_error"] == "", out
        fp = fingerprints(out)[name]
        t0 = time.monotonic()
        pulled = p2.call("certd_pull", {"env": env})
        pull_s = time.monotonic() - t0
        assert fingerprints(pulled) == {name: fp}, pulled
        assert [c["issuer"] for c in pulled["certs"]][0].startswith("Pebble Intermediate"), pulled
        assert pebble_orders(lab, name, since) == 1
        assert p1.call("certd_ensure", {"env": env})["ordered"] == []  # nothing due: no second order
        assert pebble_orders(lab, name, since) == 1
        # the CA reached prod-2 (the only address of the name), which relayed to the issuer
        relay.terminate()
        relay_log = relay.communicate(timeout=10)[1]
        assert "/.well-known/acme-challenge/" in relay_log and lab.host_address in relay_log, relay_log
        relay = relay_on(lab.node("prod-2"), store.certd_socket(os.path.dirname(os.path.dirname(d2)), env))

        # the certificate chains to pebble's root, on both nodes' stores (0600 files)
        for d in (d1, d2):
            pem = os.path.join(store.cert_dir(os.path.dirname(os.path.dirname(d))), name + ".pem")
            assert os.stat(pem).st_mode & 0o777 == 0o600
            cp = subprocess.run(["openssl", "verify", "-CAfile", str(lab.acme_ca), "-untrusted", pem, pem],
                                capture_output=True, text=True)
            assert cp.returncode == 0, cp.stdout + cp.stderr
        for f in ("config.json", "account.key", os.path.join("issued", name + ".key")):
            assert os.stat(os.path.join(d1, f)).st_mode & 0o777 == 0o600, f

        # a forced renewal: one more order, a new certificate on the follower
        since = pebble_log_size(lab)
        renewed = p1.call("certd_ensure", {"env": env, "force": True})
        new_fp = fingerprints(renewed)[name]
        assert renewed["ordered"] == [name] and new_fp != fp
        assert fingerprints(p2.call("certd_pull", {"env": env})) == {name: new_fp}
        assert pebble_orders(lab, name, since) == 1
        status = p2.call("certd_status", {"env": env})
        assert status["running"] and status["role"] == "follower" and status["last_error"] == ""

        # no key or secret in the daemons' logs, results, or the process list
        said = json.dumps([r1, r2, out, pulled, renewed, status])
        logs = Path(d1, "certd.log").read_text() + Path(d2, "certd.log").read_text()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        for text in (said, logs, ps):
            assert secret not in text and "PRIVATE KEY" not in text
        print(f"\ncertd: issued in {issued_s:.1f} s, pulled in {pull_s:.1f} s")
    finally:
        if relay is not None:
            relay.kill()
            relay.wait()
        for s in (p1, p2):
            try:
                s.call("certd_leave", {"env": env})
            except Exception:
                pass
        dns.remove_name(name, lab=lab.name)
    assert not glob.glob(os.path.join(AGENT_STATE, "engines", "*", "certd", env))
    for d in (d1, d2):
        assert not os.path.exists(os.path.join(store.cert_dir(os.path.dirname(os.path.dirname(d))), name + ".pem"))

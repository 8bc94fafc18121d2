"""The certificate daemon on the lab's prod (2 nodes), with the real pebble and the nodes'
HAProxy: a service of an own environment is routed by a host name with `tls: auto` on both
nodes; prod-1 is the issuer, prod-2 a follower, and the name resolves ONLY to prod-2. The
CA's HTTP-01 request reaches prod-2's HAProxy, which forwards it to prod-2's certd, which
asks the issuer over the mesh. The certificate is issued once (pebble validates the name
once), both nodes serve it on 443 (curl with pebble's root, --resolve to each node), port 80
redirects; a forced renewal reaches the follower with a new certificate, served at once.
Keys and the secret stay out of results, logs and the process list.

Own environment and host name (certd-XXXX, certd-XXXX.lab.test); the prod mesh is kept up
by an own tiny project (e2e-certd-XXXXXX) for the duration.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from agent.wire.spec import config_hash
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
HEALTH = {"path": "/healthz", "interval": 0.5, "rise": 2, "fall": 2}


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


def httpd(project: str, env: str, body: str) -> dict:
    files = [{"name": "index", "target": "/www/index.html", "content": base64.b64encode(body.encode()).decode()},
             {"name": "health", "target": "/www/healthz", "content": base64.b64encode(b"ok\n").decode()}]
    c = {"image": "busybox:latest", "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
         "networks": [{"name": "default"}], "configs": files, "stop_grace_period": 1, "init": True}
    return {"project": project, "service": "web", "env": env, "release": "r1", "replicas": [1],
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}


def route(session, project: str, env: str, host: str) -> dict:
    return session.call("ingress_sync", {
        "project": project, "env": env, "service": "web",
        "port": {"published": 0, "target": 8080, "protocol": "http"}, "health": HEALTH,
        "backends": [{"name": "web-1", "container": "%s-web-1" % project}], "timeout": 120,
        "route": {"hosts": [host], "tls": "auto"}})


def curl(*args: str) -> tuple:
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code} %{redirect_url}", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return status.strip(), body


def served_fingerprint(address: str, host: str, cafile: str) -> str:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((address, 443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


class Load:
    """HTTPS GETs of the name on each node, a new TLS connection each, ~`rate`/s per node,
    until stopped: (node, fingerprint served, error or "")."""

    def __init__(self, addresses: dict, host: str, cafile: str, rate: float = 25.0) -> None:
        self.addresses, self.host, self.cafile, self.interval = addresses, host, cafile, 1.0 / rate
        self.results: list = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in addresses]

    def _one(self, node: str) -> None:
        try:
            ctx = ssl.create_default_context(cafile=self.cafile)
            with socket.create_connection((self.addresses[node], 443), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname=self.host) as tls:
                    fp = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
                    tls.sendall(f"GET / HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode())
                    head = tls.recv(64).decode(errors="replace")
            self.results.append((node, fp, "" if head.startswith("HTTP/1.1 200") else head.splitlines()[0]))
        except Exception as exc:  # any failure counts
            self.results.append((node, "", f"{type(exc).__name__}: {exc}"))

    def _run(self, node: str) -> None:
        while not self.stopping.is_set():
            t0 = time.monotonic()
            self._one(node)
            time.sleep(max(0.0, self.interval - (time.monotonic() - t0)))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(10)


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


def test_a_name_on_the_follower_only_gets_one_certificate_served_by_both_and_a_forced_renewal(lab, agents):
    from agent.certs import store
    from orchestrator.lab import dns

    p1, p2 = agents["prod-1"], agents["prod-2"]
    env = "certd-" + secrets.token_hex(3)
    project = "e2e-" + env
    addr = {n: lab.node(n).address for n in ("prod-1", "prod-2")}
    name = dns.add_name(f"{env}.lab.test", [addr["prod-2"]], lab=lab.name)
    root = str(lab.acme_ca)
    secret = secrets.token_urlsafe(32)
    a1, a2 = mesh_address(p1), mesh_address(p2)
    try:
        for s in (p1, p2):
            s.call("apply", {"spec": httpd(project, env, "certd app\n")})
            assert route(s, project, env, name)["status"] == "routed"
        acme = {"directory": lab.acme_directory, "ca_pem": Path(lab.ca_cert).read_text()}
        r1 = p1.call("certd_configure", {"env": env, "role": "issuer", "hosts": [name], "secret": secret,
                                         "acme": acme, "listen_address": a1, "followers": [a2]})
        r2 = p2.call("certd_configure", {"env": env, "role": "follower", "hosts": [name], "secret": secret,
                                         "issuer_address": a1})
        assert r1["running"] and r2["running"] and r1["secret_id"] == r2["secret_id"]
        d1, d2 = certd_dir(env, "issuer"), certd_dir(env, "follower")

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
        assert pulled["certs"][0]["issuer"].startswith("Pebble Intermediate") and pulled["certs"][0]["loaded"]
        assert p1.call("certd_ensure", {"env": env})["ordered"] == []  # nothing due: no second order
        assert pebble_orders(lab, name, since) == 1

        # both nodes serve it on 443 (it chains to pebble's root); port 80 redirects
        for node, a in addr.items():
            assert curl("--cacert", root, "--resolve", f"{name}:443:{a}", f"https://{name}/") == ("200", "certd app\n")
            assert served_fingerprint(a, name, root) == fp, node
            assert curl("-o", "/dev/null", "--resolve", f"{name}:80:{a}", f"http://{name}/x")[0] \
                == f"301 https://{name}/x"
        for d in (d1, d2):
            pem = os.path.join(store.cert_dir(os.path.dirname(os.path.dirname(d))), name + ".pem")
            assert os.stat(pem).st_mode & 0o777 == 0o600
        for f in ("config.json", "account.key", os.path.join("issued", name + ".key")):
            assert os.stat(os.path.join(d1, f)).st_mode & 0o777 == 0o600, f

        # a forced renewal under HTTPS requests to both nodes: one more order, the new
        # certificate served by both, no request failed
        since = pebble_log_size(lab)
        with Load(addr, name, root) as load:
            time.sleep(1)
            renewed = p1.call("certd_ensure", {"env": env, "force": True})
            new_fp = fingerprints(renewed)[name]
            assert renewed["ordered"] == [name] and new_fp != fp
            assert served_fingerprint(addr["prod-1"], name, root) == new_fp
            assert fingerprints(p2.call("certd_pull", {"env": env})) == {name: new_fp}
            assert served_fingerprint(addr["prod-2"], name, root) == new_fp
            time.sleep(1)
        failed = [r for r in load.results if r[2]]
        assert not failed and len(load.results) >= 50, (len(load.results), failed[:5])
        for node in addr:
            served = [r[1] for r in load.results if r[0] == node]
            assert served[0] == fp and served[-1] == new_fp, node
        print(f"\ncertd: forced renewal under {len(load.results)} HTTPS requests to both nodes, 0 failed")
        assert pebble_orders(lab, name, since) == 1
        status = p2.call("certd_status", {"env": env})
        assert status["running"] and status["role"] == "follower" and status["last_error"] == ""

        # a name no node routes: the CA's words, naming the host, kind acme; the other name is kept
        bad = dns.add_name(f"nobody-{env}.lab.test", [addr["prod-1"]], lab=lab.name)
        p1.call("certd_configure", {"env": env, "role": "issuer", "hosts": [name, bad], "secret": secret,
                                    "acme": acme, "listen_address": a1, "followers": [a2]})
        with pytest.raises(T.AgentError) as err:
            p1.call("certd_ensure", {"env": env, "hosts": [bad]})
        assert err.value.kind == "acme" and bad in str(err.value) and "404" in str(err.value), str(err.value)
        assert fingerprints(p1.call("certd_status", {"env": env})) == {name: new_fp}
        print(f"\ncertd: a name nobody routes: {err.value}")

        # no key or secret in the daemons' logs, results, or the process list
        said = json.dumps([r1, r2, out, pulled, renewed, status])
        logs = Path(d1, "certd.log").read_text() + Path(d2, "certd.log").read_text()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        for text in (said, logs, ps):
            assert secret not in text and "PRIVATE KEY" not in text
        print(f"\ncertd: issued in {issued_s:.1f} s, pulled in {pull_s:.1f} s")
    finally:
        for s in (p1, p2):
            for op, args in (("certd_leave", {"env": env}),
                             ("ingress_remove", {"project": project, "env": env, "service": "web"}),
                             ("remove", {"project": project, "env": env})):
                try:
                    s.call(op, args)
                except T.AgentError:
                    pass
        for n in (name, f"nobody-{env}.lab.test"):
            dns.remove_name(n, lab=lab.name)
    assert not glob.glob(os.path.join(AGENT_STATE, "engines", "*", "certd", env))
    for s in (p1, p2):
        assert not [c for c in s.call("tls_certs", {"env": env})["certs"]]

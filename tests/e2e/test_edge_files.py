"""HTTPS at the edge on a lab node, with certificates from files (issue 15; agent.edge,
agent.certs). Two projects' services on prod-1, each reached only by its host name on
the node's shared ports 80/443, each with its own certificate signed by a CA this test
makes: HTTPS answers from the right service (curl with the test CA, --resolve), HTTP
redirects to HTTPS, an unknown name gets a 404, a third claim of a name is refused with
nothing changed, and a certificate replaced under an HTTPS load (the runtime API's
set/commit, no reload) fails no request and is served at once, as does a replica swap
behind the name (add, drain, remove: what a rolling update does).

Host names carry the run's id (the lab is shared: another run's names never clash).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import subprocess
import time
import uuid

import pytest

from agent.wire.spec import config_hash
from orchestrator.core.environments import NodeSpec
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle
from tests.e2e.helpers import Load
from tests.tls_certs import make_ca, make_leaf

pytestmark = pytest.mark.e2e

NODE = "prod-1"
IMAGE = "busybox:latest"
RATE = 50.0  # HTTPS requests per second while the certificate is replaced
HEALTH = {"path": "/healthz", "interval": 0.5, "rise": 2, "fall": 2}


@pytest.fixture(scope="module")
def conn(lab):
    node = next(n for n in lab.nodes if n.name == NODE)
    target = NodeSpec(node.name, node.address, node.ssh_port, lab.ssh_user, lab.ssh_key)
    options = T.SSHOptions(known_hosts=lab.known_hosts, allow_agent=False, env_name="prod",
                           connect_timeout=5, command_timeout=120)
    conns = T.connect_all([target], options)
    yield conns[NODE]
    T.close_all(conns)


def httpd(project, body, replicas=(1,)):
    files = [{"name": "index", "target": "/www/index.html", "content": base64.b64encode(body.encode()).decode()},
             {"name": "health", "target": "/www/healthz", "content": base64.b64encode(b"ok\n").decode()}]
    c = {"image": IMAGE, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"], "networks": [{"name": "default"}],
         "configs": files, "stop_grace_period": 1, "init": True}
    return {"project": project, "service": "web", "env": "prod", "release": "r1", "replicas": list(replicas),
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}


def curl(*args):
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code} %{redirect_url}", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return status.strip(), body


def served_fingerprint(address, host, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((address, 443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


class HTTPSLoad(Load):
    """GET / over HTTPS at a fixed rate, a new TLS connection each (so every request does
    a handshake with whichever certificate HAProxy holds then); every answer recorded.
    The schedule is tests/e2e/helpers.Load's; only the request differs."""

    def __init__(self, address, host, cafile, rate):
        super().__init__(address, 443, rate)
        self.address, self.host = address, host
        self.ctx = ssl.create_default_context(cafile=cafile)
        # results: (sent, body or None, error, sha256 of the certificate served)

    def _one(self, sent):
        body, error, fp = None, "", ""
        try:
            with socket.create_connection((self.address, 443), timeout=5) as raw:
                with self.ctx.wrap_socket(raw, server_hostname=self.host) as tls:
                    fp = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
                    tls.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % self.host).encode())
                    data = b""
                    while True:
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        data += chunk
            head, _, rest = data.decode("utf-8", "replace").partition("\r\n\r\n")
            if head.startswith("HTTP/1.1 200"):
                body = rest
            else:
                error = head.splitlines()[0] if head else "no answer"
        except Exception as exc:  # any failure counts
            error = "%s: %s" % (type(exc).__name__, exc)
        with self._lock:
            self.results.append((sent, body, error, fp))

    def count(self):
        with self._lock:
            return len(self.results)

    def wait_for(self, n, timeout=120):
        """Until n more requests have finished: a wait with a deadline, not a speed check."""
        target = self.count() + n
        deadline = time.monotonic() + timeout
        while self.count() < target:
            assert time.monotonic() < deadline, "the HTTPS load made no progress"
            time.sleep(0.05)


def test_two_projects_by_name_on_443_redirects_conflicts_and_a_hitless_certificate_change(conn, lab, tmp_path):
    run = uuid.uuid4().hex[:6]
    p1, p2, p3 = "e2e-edge1-" + run, "e2e-edge2-" + run, "e2e-edge3-" + run
    shop1, shop2 = "shop1-%s.lab.test" % run, "shop2-%s.lab.test" % run
    address = next(n for n in lab.nodes if n.name == NODE).address
    ca = make_ca()
    cafile = str(tmp_path / "ca.pem")
    with open(cafile, "w") as fh:
        fh.write(ca.cert_pem)
    certs = {shop1: make_leaf(ca, [shop1]), shop2: make_leaf(ca, [shop2])}
    session = T.AgentSession.open(conn, current_bundle())

    def sync(project, host, replicas=(1,)):
        return session.call("ingress_sync", {
            "project": project, "env": "prod", "service": "web",
            "port": {"published": 0, "target": 8080, "protocol": "http"}, "health": HEALTH,
            "backends": [{"name": "web-%d" % r, "container": "%s-web-%d" % (project, r)} for r in replicas],
            "timeout": 120,
            "route": {"hosts": [host], "tls": "files", "hsts": 300}})

    def put(host, pair):
        return session.call("tls_cert_put", {"env": "prod", "host": host, "cert_pem": pair.cert_pem + ca.cert_pem,
                                             "key_pem": pair.key_pem})["cert"]

    try:
        started = time.monotonic()
        session.call("apply", {"spec": httpd(p1, "shop one\n")})
        session.call("apply", {"spec": httpd(p2, "shop two\n")})
        for project, host in ((p1, shop1), (p2, shop2)):
            put(host, certs[host])
            st = sync(project, host)
            assert st["status"] == "routed" and [s["status"] for s in st["servers"]] == ["UP"]

        # HTTPS by name, each from its own service, with its own certificate
        for host, body in ((shop1, "shop one\n"), (shop2, "shop two\n")):
            status, text = curl("--cacert", cafile, "--resolve", "%s:443:%s" % (host, address),
                                "https://%s/" % host)
            assert (status, text) == ("200", body)
            assert served_fingerprint(address, host, cafile) == certs[host].fingerprint
        out = subprocess.run(["curl", "-sSI", "--cacert", cafile, "--resolve", "%s:443:%s" % (shop1, address),
                              "https://%s/" % shop1], capture_output=True, text=True, timeout=30)
        assert "strict-transport-security: max-age=300" in out.stdout.lower()
        # HTTP: a redirect to HTTPS (the same path and query); an unknown name: 404
        status, _ = curl("-o", "/dev/null", "--resolve", "%s:80:%s" % (shop1, address), "http://%s/a?b=1" % shop1)
        assert status == "301 https://%s/a?b=1" % shop1
        status, _ = curl("-o", "/dev/null", "--resolve", "nobody-%s.lab.test:80:%s" % (run, address),
                         "http://nobody-%s.lab.test/" % run)
        assert status == "404"
        status, _ = curl("-o", "/dev/null", "-k", "--resolve", "nobody-%s.lab.test:443:%s" % (run, address),
                         "https://nobody-%s.lab.test/" % run)
        assert status == "404"
        print("edge: two routed services with certificates up in %.1fs" % (time.monotonic() - started))

        # a third claim of shop1 (another project) is refused and changes nothing
        before = session.call("ingress_status")
        session.call("apply", {"spec": httpd(p3, "rival\n")})
        with pytest.raises(T.AgentError) as err:
            sync(p3, shop1)
        assert err.value.kind == "conflict" and shop1 in str(err.value) and p1 in str(err.value)
        after = session.call("ingress_status")
        assert after["worker_pid"] == before["worker_pid"]  # no reload
        assert [f for f in after["frontends"] if f["project"] == p3] == []
        assert curl("--cacert", cafile, "--resolve", "%s:443:%s" % (shop1, address),
                    "https://%s/" % shop1) == ("200", "shop one\n")

        # replace shop1's certificate under an HTTPS load: no request fails
        load = HTTPSLoad(address, shop1, cafile, RATE).start()
        load.wait_for(50)
        renewed = make_leaf(ca, [shop1])
        t0 = time.monotonic()
        cert = put(shop1, renewed)
        put_seconds = time.monotonic() - t0
        assert cert["fingerprint"] == renewed.fingerprint and cert["loaded"]
        assert session.call("ingress_status")["worker_pid"] == after["worker_pid"]  # set/commit, no reload
        load.wait_for(100)
        assert served_fingerprint(address, shop1, cafile) == renewed.fingerprint
        # and a replica swap behind the name (what a rolling update does), still under the load
        session.call("apply", {"spec": httpd(p1, "shop one\n", replicas=(1, 2))})
        assert [s["status"] for s in sync(p1, shop1, (1, 2))["servers"]] == ["UP", "UP"]
        load.wait_for(50)
        assert session.call("ingress_drain", {"project": p1, "env": "prod", "service": "web", "server": "web-1",
                                              "timeout": 60})["state"] == "maint"
        assert [s["name"] for s in sync(p1, shop1, (2,))["servers"]] == ["web-2"]
        load.wait_for(50)
        results = load.stop()
        failed = [r for r in results if r[2]]
        served = [r[3] for r in results]
        print("edge: %d HTTPS requests in %.1fs (%.0f/s), %d failed, old certificate %d, new %d; "
              "tls_cert_put %.2fs" % (len(results), load.seconds, len(results) / load.seconds, len(failed),
                                      served.count(certs[shop1].fingerprint), served.count(renewed.fingerprint),
                                      put_seconds))
        assert not failed, failed[:5]
        assert all(r[1] == "shop one\n" for r in results)
        assert served.count(certs[shop1].fingerprint) >= 50 and served[-150:] == [renewed.fingerprint] * 150

        listed = {c["host"]: c for c in session.call("tls_certs", {"env": "prod"})["certs"]}
        assert listed[shop1]["fingerprint"] == renewed.fingerprint and listed[shop1]["loaded"]
        state = session.call("state", {"project": p1})
        route = state["ingress"]["web"]["route"]
        assert route["hosts"] == [shop1] and route["certs"][shop1]["loaded"]
        assert route["certs"][shop1]["fingerprint"] == renewed.fingerprint
    finally:
        for project in (p1, p2, p3):
            try:
                session.call("ingress_remove", {"project": project, "env": "prod", "service": "web"})
            except T.AgentError:
                pass
        for host in (shop1, shop2):
            session.call("tls_cert_remove", {"env": "prod", "host": host})
        for project in (p1, p2, p3):
            session.call("remove", {"project": project, "env": "prod"})
        session.close()
    with T.AgentSession.open(conn, current_bundle()) as s:
        st = s.call("ingress_status")
        assert not [f for f in st["frontends"] if f["project"] in (p1, p2, p3)]
        assert not [c for c in s.call("tls_certs", {"env": "prod"})["certs"] if c["host"] in (shop1, shop2)]

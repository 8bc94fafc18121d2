"""HTTPS at the edge through `orch up`, with a certificate from files (issue 15): a project
whose service has `hosts: [files1-ID.lab.test]` and `tls: {cert, key}` (made in the test,
signed by a CA of its own) on prod's two nodes is served on 443 of both with that
certificate, port 80 redirects to HTTPS, a second `up` changes nothing (no certificate
put again); a third project claiming the name is refused (exit 2) before anything is
touched, as are an expired certificate and a key that does not match; `orch certs` lists
the name on both nodes; `orch down` takes the certificate away.

Names carry the run's id: the lab is shared.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import textwrap
import time
import uuid

import pytest

from tests.tls_certs import make_ca, make_leaf

from .helpers import last_json

pytestmark = pytest.mark.e2e

ENV = """\
name: prod
nodes:
  - {{name: prod-1, host: {p1}, user: {user}, identity_file: {key}, python: /usr/bin/python3}}
  - {{name: prod-2, host: {p2}, user: {user}, identity_file: {key}, python: /usr/bin/python3}}
ssh: {{known_hosts: {known_hosts}}}
registry: {{mirror: {mirror}, ca_file: {ca}}}
"""

COMPOSE = """\
configs:
  index: {{content: "{body}\\n"}}
  health: {{content: "ok\\n"}}
services:
  web:
    image: busybox
    command: [httpd, -f, -p, "8080", -h, /www]
    init: true
    stop_grace_period: 1s
    configs: [{{source: index, target: /www/index.html}}, {{source: health, target: /www/healthz}}]
    deploy: {{replicas: 2}}
    x-orch:
      ingress:
        hosts: [{host}]
        target: 8080
        health: {{path: /healthz, interval: 500ms}}
        tls: {{cert: site.crt, key: site.key}}
"""


class Project:
    def __init__(self, orch, lab, root, name, host, body, pair):
        self.run, self.dir = orch, root / name
        self.name = f"e2e-https-{name}-{uuid.uuid4().hex[:6]}"
        (self.dir / "environments").mkdir(parents=True)
        (self.dir / "environments" / "prod.yaml").write_text(ENV.format(
            p1=lab.node("prod-1").address, p2=lab.node("prod-2").address, user=lab.ssh_user, key=lab.ssh_key,
            known_hosts=lab.known_hosts, mirror=lab.registry_mirror, ca=lab.ca_cert))
        (self.dir / "compose.yaml").write_text(COMPOSE.format(host=host, body=body))
        self.write(pair)

    def write(self, pair, key_pair=None):
        (self.dir / "site.crt").write_text(pair.cert_pem)
        (self.dir / "site.key").write_text((key_pair or pair).key_pem)

    def orch(self, command, *args, check=True):
        return self.run(command, "--env", "prod", "--file", str(self.dir / "compose.yaml"), "-p", self.name, *args,
                        check=check)


def served(address, host, cafile):
    """(fingerprint of the certificate served for host, the body of GET /) over HTTPS."""
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((address, 443), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        fp = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return fp, body


def curl(*args):
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                          *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split(" ", 1)


@pytest.fixture(scope="module")
def world(orch, lab, tmp_path_factory):
    root = tmp_path_factory.mktemp("https")
    host = f"files1-{uuid.uuid4().hex[:6]}.lab.test"
    ca = make_ca("orch https e2e CA")
    (root / "ca.crt").write_text(ca.cert_pem)
    pair = make_leaf(ca, [host])
    a = Project(orch, lab, root, "a", host, "hello a", pair)
    t0 = time.monotonic()
    cp = a.orch("up", "--json")
    a.up_seconds = time.monotonic() - t0
    a.first = last_json(cp.stdout)
    yield {"root": root, "host": host, "ca": ca, "pair": pair, "a": a, "cafile": str(root / "ca.crt"), "lab": lab}
    down = last_json(a.orch("down", "--json", check=False).stdout)
    ops = sorted((c["op"], c["node"]) for c in down.get("certificates") or [])
    # the project's certificate files go from both nodes; a node's certificate daemon goes
    # too when an earlier test's ACME project left it running and this was the last user
    assert [o for o in ops if o[0] != "certd_leave"] == [("tls_cert_remove", "prod-1"),
                                                         ("tls_cert_remove", "prod-2")], down


def test_served_on_443_of_both_nodes_with_the_given_certificate(world):
    a, host, lab = world["a"], world["host"], world["lab"]
    assert a.first["status"] == "ok", a.first
    puts = sorted((p["node"], p["host"]) for p in a.first["plan"]["certificates"]["puts"])
    assert puts == [("prod-1", host), ("prod-2", host)]
    [row] = a.first["certificates"]
    assert (row["host"], row["source"], row["nodes"], row["fingerprint"]) == (
        host, "files", ["prod-1", "prod-2"], world["pair"].fingerprint)
    assert a.first["addresses"]["web"] == [f"https://{host}/"]
    for node in ("prod-1", "prod-2"):
        fp, body = served(lab.node(node).address, host, world["cafile"])
        assert (fp, body.strip()) == (world["pair"].fingerprint, "hello a")
    print(f"first orch up with a certificate from files on 2 nodes: {a.up_seconds:.1f}s")


def test_port_80_redirects_to_https(world):
    host, address = world["host"], world["lab"].node("prod-2").address
    code, location = curl("--resolve", f"{host}:80:{address}", f"http://{host}/page?q=1")
    assert code == "301" and location == f"https://{host}/page?q=1"
    code, _ = curl("--cacert", world["cafile"], "--resolve", f"{host}:443:{address}", f"https://{host}/")
    assert code == "200"


def test_a_second_up_puts_no_certificate_again(world):
    a = world["a"]
    t0 = time.monotonic()
    again = last_json(a.orch("up", "--json").stdout)
    assert again["noop"] is True and again["plan"]["certificates"]["puts"] == [], again["plan"]
    print(f"no-op orch up with host routes on 2 nodes: {time.monotonic() - t0:.1f}s")


def test_certs_lists_the_name_on_both_nodes(world):
    cp = world["a"].run("certs", "--env", "prod", "--json",
                        "--environments", str(world["a"].dir / "environments"), check=False)
    doc = last_json(cp.stdout)
    [row] = [r for r in doc["certificates"] if r["host"] == world["host"]]
    assert row["source"] == "files" and row["status"] == "ok", row
    assert [n["node"] for n in row["nodes"]] == ["prod-1", "prod-2"] and not any(n["differs"] for n in row["nodes"])


def test_a_third_project_claiming_the_name_is_refused_before_anything(orch, world):
    c = Project(orch, world["lab"], world["root"], "c", world["host"], "intruder", world["pair"])
    cp = c.orch("up", "--json", check=False)
    assert cp.returncode == 2, cp.stdout + cp.stderr
    err = last_json(cp.stdout)["error"]
    assert world["a"].name in err["message"] and "already routes it there" in err["message"], err
    assert last_json(c.orch("ps", "--json").stdout)["containers"] == []
    fp, body = served(world["lab"].node("prod-1").address, world["host"], world["cafile"])
    assert body.strip() == "hello a"


@pytest.mark.parametrize("case", ["expired", "wrong key"])
def test_a_bad_certificate_is_bad_input(orch, world, case):
    other = f"bad-{uuid.uuid4().hex[:6]}.lab.test"
    ca = world["ca"]
    good = make_leaf(ca, [other])
    b = Project(orch, world["lab"], world["root"], "b" + case.replace(" ", ""), other, "b", good)
    if case == "expired":
        b.write(make_leaf(ca, [other], days=-1))
    else:
        b.write(good, key_pair=make_leaf(ca, [other]))
    cp = b.orch("up", "--json", check=False)
    assert cp.returncode == 2, cp.stdout + cp.stderr
    err = last_json(cp.stdout)["error"]
    text = json.dumps(err)
    assert ("expired on" if case == "expired" else "does not match the certificate") in text, text
    # (the key's path is masked, ***: it is the value of a key named `key`, which the secret filter hides)
    assert str(b.dir / ("site.crt" if case == "expired" else "")) in text
    assert "PRIVATE KEY" not in cp.stdout + cp.stderr
    assert last_json(b.orch("ps", "--json").stdout)["containers"] == []

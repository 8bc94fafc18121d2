"""HTTPS at the edge through the CLI and the use cases: `orch plan` shows the certificate
steps (a Deployment over the agent's real operations on fake nodes), `orch certs` renders
and exits by the documented contract, `orch certs renew` asks the issuer then the
followers (tests.unit.fakes)."""

import contextlib
import io
import json
import sys
from contextlib import contextmanager

from agent.wire.tls import CertdConfig
from orchestrator.app.certs import renew
from orchestrator.app.pipeline import Seams
from orchestrator.cli import main
from orchestrator.cli import output as O
from orchestrator.core.progress import Progress
from tests.unit.fakes import FakeEdgeNode


def run(monkeypatch, *args):
    out, err = io.StringIO(), io.StringIO()
    with monkeypatch.context() as m:
        m.setattr(sys, "argv", ["orch", *args])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    O.reset()
    return code, out.getvalue(), err.getvalue()


def make_cert(path, names):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
         .not_valid_after(now + dt.timedelta(days=30))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
         .sign(key, hashes.SHA256()))
    (path / "site.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    (path / "site.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))


ROUTED = """\
name: hello
services:
  api:
    image: api-src
  web:
    image: web-src
    deploy: {replicas: 2}
    x-orch: {ingress: {hosts: [hello.lab.test], target: 8080, tls: {cert: site.crt, key: site.key}}}
"""


def test_plan_shows_the_certificates_each_node_gets(cli_world, monkeypatch):
    make_cert(cli_world.dir, ["hello.lab.test"])
    cli_world.write_compose(ROUTED)
    code, out, err = run(monkeypatch, "plan", "--env", "prod", "--json")
    assert code == 0, out + err
    final = json.loads(out.strip().splitlines()[-1])
    certs = final["plan"]["certificates"]
    assert sorted((p["node"], p["host"], p["reason"]) for p in certs["puts"]) == [
        ("p1", "hello.lab.test", "new"), ("p2", "hello.lab.test", "new")]
    assert certs["certd"] == [] and final["plan"]["noop"] is False
    assert "PRIVATE KEY" not in out + err
    code, out, err = run(monkeypatch, "plan", "--env", "prod", "--text")
    assert "certificate: put hello.lab.test on p1 (new)" in out + err
    # only reads reached the nodes: nothing was put
    assert not [op for n in cli_world.nodes.values() for op in n.ops() if op.startswith(("tls_cert_put", "certd_"))]


def edge_nodes():
    nodes = {n: FakeEdgeNode(n) for n in ("p1", "p2")}
    for n in nodes.values():
        n.route("hello", "prod", "web", ["hello.lab.test"])
    nodes["p2"].issuer = nodes["p1"]
    cfg = {"env": "prod", "role": "issuer", "hosts": ["hello.lab.test"], "secret": "s" * 40,
           "acme": {"directory": "https://acme.test/dir"}}
    nodes["p1"].call("certd_configure", cfg)
    nodes["p2"].call("certd_configure", dict(cfg, role="follower", acme=None, issuer_address="10.208.0.1"))
    nodes["p1"].call("certd_ensure", {"env": "prod"})
    for n in nodes.values():
        n.calls.clear()
    return nodes


def test_certs_lists_host_names_and_exits_1_when_one_needs_attention(cli_world, monkeypatch):
    nodes = edge_nodes()

    @contextmanager
    def sessions(environment, *, require_engine=True):
        yield {}, {n.name: nodes[n.name] for n in environment.nodes}

    monkeypatch.setattr("orchestrator.io.nodes.env_sessions", sessions)
    code, out, _ = run(monkeypatch, "certs", "--env", "prod", "--json")
    final = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and final["status"] == "failed" and final["command"] == "certs"
    [row] = final["certificates"]
    assert row["status"] == "missing on p2" and final["error"]["details"] == {"hosts": ["hello.lab.test"]}
    nodes["p2"].call("certd_pull", {"env": "prod"})
    code, out, _ = run(monkeypatch, "certs", "--env", "prod", "--text")
    assert code == 0 and "hello.lab.test  auto    Pebble Intermediate CA" in out and "p1, p2  ok" in out
    assert {op for n in nodes.values() for op in n.ops()} == {"ingress_status", "tls_certs", "certd_pull"}


def test_renew_asks_the_issuer_then_the_followers_under_the_lock(tmp_path, cli_world):
    nodes = edge_nodes()
    nodes["p2"].call("certd_pull", {"env": "prod"})
    nodes["p2"].calls.clear()
    old = nodes["p1"].certs[("prod", "hello.lab.test")]["fingerprint"]
    locked = []

    class Handle:
        def release(self):
            locked.append("released")

    seams = Seams(connector=lambda env, progress, project=None: {n.name: nodes[n.name] for n in env.nodes},
                  locker=lambda nodes_, env, holder, wait, on_wait=None: locked.append(env) or Handle(),
                  performer=None, environ={})
    report = renew(cli_world.environment("prod"), [], True, progress=Progress(), seams=seams)
    [r] = report.renewed
    assert (report.issuer, report.followers, r.host, r.old, r.ordered) == ("p1", ["p2"], "hello.lab.test", old, True)
    assert r.new != old and r.nodes == ["p1", "p2"] and locked == ["prod", "released"]
    assert [op for op, _ in nodes["p1"].calls if op.startswith("certd")] == ["certd_ensure"]
    assert [op for op, _ in nodes["p2"].calls if op.startswith("certd")] == ["certd_pull"]
    assert [a for op, a in nodes["p1"].calls if op == "certd_ensure"] == [{"env": "prod", "hosts": [], "force": True}]
    assert CertdConfig.parse(nodes["p1"].certd["prod"]["config"]).secret == "s" * 40  # renew leaves the config

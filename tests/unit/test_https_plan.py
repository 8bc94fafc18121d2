"""HTTPS at the edge, planned and applied by the controller: host-name clashes, the issuer,
the certificate daemon's calls as data, TLS_FILES puts, and a no-op `up` that makes no
certd call (orchestrator.core.edge_plan, orchestrator.app.edge over tests.unit.fakes.FakeEdgeNode)."""

import datetime as dt
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.wire.tls import AcmeSettings, CertdResult, CertInfo, config_id
from orchestrator.app.edge import Edge
from orchestrator.app.workspace import ProjectOptions, load_workspace
from orchestrator.core.edge_plan import (Claim, NodeEdge, choose_issuer, due, plan_certd, plan_puts,
                                         refuse_clashes)
from orchestrator.core.progress import Progress
from orchestrator.core.specs import compile_blueprint, node_infos
from orchestrator.errors import InputError
from orchestrator.io.files import local_sources
from tests.unit.fakes import FakeEdgeNode

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)
ACME = AcmeSettings(directory="https://acme.test/dir", email="ops@example.com")


def test_a_host_another_project_routes_on_the_node_is_refused():
    nodes = {"n1": NodeEdge("n1", (Claim("shop.lab.test", "other", "prod", "web", "auto"),)),
             "n2": NodeEdge("n2")}
    with pytest.raises(InputError) as info:
        refuse_clashes("shop", "prod", "prod.yaml", {"n1": {"shop.lab.test": "front"}, "n2": {"shop.lab.test": "front"}},
                       nodes, lambda s: ("compose.yaml", 7))
    [p] = info.value.problems
    assert info.value.exit_code == 2
    assert "project other (environment prod) already routes it there" in p.message and "node n1" in p.message
    assert (p.file, p.line, p.key) == ("compose.yaml", 7, "services.front.x-orch.ingress.hosts")
    assert "orch down -p other --env prod" in p.fix
    # the same project in the same environment is this deploy's own route; in another one it clashes
    mine = {"n1": NodeEdge("n1", (Claim("shop.lab.test", "shop", "prod", "front", "auto"),))}
    refuse_clashes("shop", "prod", "prod.yaml", {"n1": {"shop.lab.test": "front"}}, mine)
    with pytest.raises(InputError):
        refuse_clashes("shop", "test", "test.yaml", {"n1": {"shop.lab.test": "front"}}, mine)


def status(role, cfg=None, secret_id="s1", running=True, certs=()):
    return CertdResult(env="prod", role=role, running=running, config_id=config_id(cfg) if cfg else "x",
                       secret_id=secret_id, certs=tuple(certs))


def cert(host, fp="f1", source="auto", not_before="2026-12-01T00:00:00Z", not_after="2027-03-01T00:00:00Z"):
    return CertInfo(host=host, source=source, env="prod", fingerprint=fp, not_before=not_before, not_after=not_after)


def test_the_issuer_is_the_node_already_issuing_else_the_first_serving_node_by_name():
    assert choose_issuer(["n2", "n3"], {}, ["n1", "n2", "n3"]) == "n2"
    nodes = {"n3": NodeEdge("n3", certd=status("issuer"))}
    assert choose_issuer(["n2", "n3"], nodes, ["n1", "n2", "n3"]) == "n3"


def test_certd_plan_as_data_fresh_then_converged_then_partly_stale():
    serving = {"n1": ("a.lab.test", "b.lab.test"), "n2": ("a.lab.test",)}
    addr = {"n1": "10.208.0.1", "n2": "10.208.32.1"}
    fresh = plan_certd("prod", ACME, serving, {}, ["n1", "n2"], addr, NOW)
    assert [(s.op, s.node, s.role) for s in fresh.certd] == [
        ("configure", "n1", "issuer"), ("configure", "n2", "follower"), ("ensure", "n1", "issuer"),
        ("pull", "n2", "follower")]
    issuer, follower = fresh.configs["n1"], fresh.configs["n2"]
    assert (issuer.hosts, issuer.listen_address, issuer.followers) == (("a.lab.test", "b.lab.test"), "10.208.0.1",
                                                                       ("10.208.32.1",))
    assert (follower.hosts, follower.issuer_address, follower.acme) == (("a.lab.test",), "10.208.0.1", None)
    assert "ops@example.com" not in json.dumps(fresh.to_json())  # the plan shows no e-mail, no secret
    # converged: same configs and secret, certificates present, equal and not due: nothing to call
    good = {"n1": NodeEdge("n1", certs={"a.lab.test": cert("a.lab.test"), "b.lab.test": cert("b.lab.test", "f2")},
                           certd=status("issuer", issuer)),
            "n2": NodeEdge("n2", certs={"a.lab.test": cert("a.lab.test")}, certd=status("follower", follower))}
    quiet = plan_certd("prod", ACME, serving, good, ["n1", "n2"], addr, NOW)
    assert not quiet and quiet.certd == [] and quiet.issuer == "n1"
    # a follower behind the issuer: only its pull
    behind = dict(good, n2=NodeEdge("n2", certs={"a.lab.test": cert("a.lab.test", "old")},
                                    certd=status("follower", follower)))
    assert [(s.op, s.node) for s in plan_certd("prod", ACME, serving, behind, ["n1", "n2"], addr, NOW).certd] == [
        ("pull", "n2")]
    # two secrets, or a stopped daemon: everything configured again (a new secret for all)
    split = dict(good, n2=NodeEdge("n2", certs=good["n2"].certs, certd=status("follower", follower, secret_id="s2")))
    assert [s.op for s in plan_certd("prod", ACME, serving, split, ["n1", "n2"], addr, NOW).certd] == [
        "configure", "configure", "ensure", "pull"]
    # a certificate due for renewal: the issuer is asked, the follower pulls after it
    due_soon = dict(good, n1=NodeEdge("n1", certs={"a.lab.test": cert("a.lab.test", not_after="2026-12-08T00:00:00Z"),
                                                   "b.lab.test": cert("b.lab.test", "f2")},
                                      certd=status("issuer", issuer)))
    steps = plan_certd("prod", ACME, serving, due_soon, ["n1", "n2"], addr, NOW).certd
    assert [(s.op, s.reason) for s in steps] == [("ensure", "due a.lab.test"), ("pull", "after the issuer")]


def test_renewal_is_due_by_renew_before_or_a_third_of_the_lifetime():
    c = cert("a.lab.test", not_before="2026-12-01T00:00:00Z", not_after="2027-03-01T00:00:00Z")  # 90 days
    assert not due(c, 0, NOW) and due(c, 0, dt.datetime(2027, 2, 1, tzinfo=dt.timezone.utc))
    assert due(c, 90 * 86400, NOW)


def test_one_node_issues_alone_without_mesh_addresses():
    plan = plan_certd("dev", ACME, {"d1": ("a.lab.test",)}, {}, ["d1"], {}, NOW)
    assert [s.op for s in plan.certd] == ["configure", "ensure"]
    assert plan.configs["d1"].listen_address == "" and plan.configs["d1"].followers == ()


def test_file_certificates_are_put_only_where_the_fingerprint_differs():
    route = SimpleNamespace(hosts=("a.lab.test",))
    fc = SimpleNamespace(fingerprint="abc")
    nodes = {"n1": NodeEdge("n1", certs={"a.lab.test": cert("a.lab.test", "abc", source="files")}), "n2": NodeEdge("n2")}
    puts = plan_puts({"web": (route, fc)}, {"web": ["n1", "n2"]}, nodes)
    assert [(p.node, p.host, p.reason) for p in puts] == [("n2", "a.lab.test", "new")]


# --------------------------------------------------------------------------- the Edge steps over fake nodes

ENV = """\
name: prod
nodes:
  - {name: n1, host: 10.250.0.201}
  - {name: n2, host: 10.250.0.202}
ingress: {acme: {directory: https://acme.test/dir, email: ops@example.com}}
"""


def make_cert(tmp_path: Path, names):
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
    (tmp_path / "site.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "site.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))


def deployment(tmp_path, compose, nodes):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(compose))
    (tmp_path / "environments").mkdir(exist_ok=True)
    (tmp_path / "environments" / "prod.yaml").write_text(ENV)
    ws = load_workspace(ProjectOptions(files=[tmp_path / "compose.yaml"], env_name="prod"), environ={})
    bp = compile_blueprint(ws.project, ws.environment, sources=local_sources())
    units, _ = bp.units(bp.place(node_infos(ws.environment)), ["n1", "n2"])
    warnings = []
    dep = SimpleNamespace(project=ws.project, environment=ws.environment, blueprint=bp, nodes=nodes, ingress={},
                          units=units, progress=Progress(), timings={}, warn=warnings.append, warnings=warnings,
                          mesh_layout=SimpleNamespace(node_slots={"n1": 0, "n2": 1},
                                                      address=lambda n: {"n1": "10.208.0.1", "n2": "10.208.32.1"}[n]))
    return dep


SHOP = """\
name: shop
services:
  web:
    image: busybox
    deploy: {replicas: 2}
    x-orch: {ingress: {hosts: [shop.lab.test], target: 80, tls: auto}}
  admin:
    image: busybox
    deploy: {replicas: 2}
    x-orch: {ingress: {hosts: [admin.lab.test], target: 80, tls: {cert: site.crt, key: site.key}}}
"""


def test_up_then_a_no_op_up_makes_no_certd_call(tmp_path):
    make_cert(tmp_path, ["admin.lab.test"])
    nodes = {n: FakeEdgeNode(n) for n in ("n1", "n2")}
    nodes["n2"].issuer = nodes["n1"]
    dep = deployment(tmp_path, SHOP, nodes)
    edge = Edge(dep)
    edge.observe()
    plan = edge.make_plan(dep.units)
    assert [(p.node, p.host) for p in plan.puts] == [("n1", "admin.lab.test"), ("n2", "admin.lab.test")]
    assert [(s.op, s.node) for s in plan.certd] == [("configure", "n1"), ("configure", "n2"), ("ensure", "n1"),
                                                    ("pull", "n2")]
    edge.put_certs()
    for n in nodes.values():  # the rollout puts the routes on the nodes
        n.route("shop", "prod", "web", ["shop.lab.test"])
        n.route("shop", "prod", "admin", ["admin.lab.test"], tls="files")
    edge.run_certd()
    secret = nodes["n1"].certd["prod"]["config"]["secret"]
    assert len(secret) >= 32 and secret == nodes["n2"].certd["prod"]["config"]["secret"]
    rows = {r["host"]: r for r in edge.rows()}
    assert rows["shop.lab.test"]["nodes"] == ["n1", "n2"] and rows["shop.lab.test"]["changed"]
    assert rows["shop.lab.test"]["fingerprint"] == nodes["n2"].certs[("prod", "shop.lab.test")]["fingerprint"]
    assert rows["admin.lab.test"]["source"] == "files" and rows["admin.lab.test"]["missing"] == []
    shown = json.dumps({"rows": edge.rows(), "plan": plan.to_json(), "warnings": dep.warnings})
    assert secret not in shown and "ops@example.com" not in shown and "PRIVATE" not in shown
    assert nodes["n1"].orders == 2  # shop once (the follower pulled it), admin's put
    # the same deploy again: reads only
    for n in nodes.values():
        n.calls.clear()
    again = Edge(deployment(tmp_path, SHOP, nodes))
    again.observe()
    quiet = again.make_plan(again.dep.units)
    again.put_certs()
    again.run_certd()
    assert not quiet and quiet.issuer == "n1"
    assert {op for n in nodes.values() for op in n.ops()} == {"ingress_status", "tls_certs"}
    assert {r["host"]: r["changed"] for r in again.rows()} == {"shop.lab.test": False, "admin.lab.test": False}


def test_an_up_that_drops_tls_stops_certd_and_removes_unrouted_file_certificates_after_the_rollout(tmp_path):
    make_cert(tmp_path, ["admin.lab.test"])
    nodes = {n: FakeEdgeNode(n) for n in ("n1", "n2")}
    nodes["n2"].issuer = nodes["n1"]
    first = Edge(deployment(tmp_path, SHOP, nodes))
    first.observe()
    first.make_plan(first.dep.units)
    first.put_certs()
    for n in nodes.values():
        n.route("shop", "prod", "web", ["shop.lab.test"])
        n.route("shop", "prod", "admin", ["admin.lab.test"], tls="files")
    first.run_certd()
    assert not first.plan.retire
    # the next release serves web without TLS and admin under another name with no certificate
    plain = SHOP.replace(", tls: auto}", "}").replace(
        "admin.lab.test], target: 80, tls: {cert: site.crt, key: site.key}", "intra.lab.test], target: 80")
    edge = Edge(deployment(tmp_path, plain, nodes))
    edge.observe()
    plan = edge.make_plan(edge.dep.units)
    assert [(r.op, r.node, r.host) for r in plan.retire] == [
        ("tls_cert_remove", "n1", "admin.lab.test"), ("certd_leave", "n1", ""),
        ("tls_cert_remove", "n2", "admin.lab.test"), ("certd_leave", "n2", "")]
    assert "certd: leave on n1 (no tls: auto route of the environment left there)" in plan.render_lines()
    assert plan.to_json()["retire"][0] == {"op": "tls_cert_remove", "node": "n1", "host": "admin.lab.test"}
    for n in nodes.values():
        n.calls.clear()
    edge.put_certs()
    edge.run_certd()
    assert {op for n in nodes.values() for op in n.ops()} == set()  # nothing before the rollout
    edge.retire()
    for n in nodes.values():
        assert sorted(n.ops()) == ["certd_leave", "tls_cert_remove"] and "prod" not in n.certd
        assert ("prod", "admin.lab.test") not in n.certs


def test_a_second_project_claiming_a_routed_host_is_refused_before_any_call(tmp_path):
    nodes = {n: FakeEdgeNode(n) for n in ("n1", "n2")}
    nodes["n2"].route("other", "prod", "site", ["shop.lab.test"])
    dep = deployment(tmp_path, SHOP.replace("admin.lab.test], target: 80, tls: {cert: site.crt, key: site.key}",
                                            "admin.lab.test], target: 80"), nodes)
    edge = Edge(dep)
    edge.observe()
    with pytest.raises(InputError) as info:
        edge.make_plan(dep.units)
    assert "node n2" in info.value.render() and "project other" in info.value.render()
    assert {op for n in nodes.values() for op in n.ops()} == {"ingress_status", "tls_certs"}


def test_other_projects_auto_names_of_the_environment_stay_in_the_issuers_config(tmp_path):
    nodes = {n: FakeEdgeNode(n) for n in ("n1", "n2")}
    nodes["n1"].route("blog", "prod", "site", ["blog.lab.test"])
    nodes["n1"].route("else", "test", "site", ["else.lab.test"])  # another environment's: not ours
    dep = deployment(tmp_path, SHOP.replace("admin.lab.test], target: 80, tls: {cert: site.crt, key: site.key}",
                                            "admin.lab.test], target: 80"), nodes)
    edge = Edge(dep)
    edge.observe()
    plan = edge.make_plan(dep.units)
    assert plan.configs["n1"].hosts == ("blog.lab.test", "shop.lab.test")
    assert plan.configs["n2"].hosts == ("shop.lab.test",)


def test_a_changed_host_route_makes_the_node_resync_its_ingress():
    from agent.wire.labels import server_name
    from agent.wire.tls import Route
    from orchestrator.core.plan import UNCHANGED, Action, Step, ingress_drift
    from orchestrator.core.rollout import IngressSpec

    route = Route(hosts=("shop.lab.test",), tls="auto", hsts=86400)
    unit = SimpleNamespace(service="web", ingress=IngressSpec(published=0, target=80, route=route))
    step = Step(1, "web", "n1", unit, [Action(UNCHANGED, "web", "n1", 1, container_id="abcdef0123456789")])
    right = {"port": {"published": 0, "target": 80, "host_ip": "0.0.0.0"}, "running": True, "health": {},
             "servers": [server_name("web", 1, "abcdef0123456789")], "route": route.to_dict()}
    assert ingress_drift(unit, step, right) == ""
    assert ingress_drift(unit, step, dict(right, route=dict(route.to_dict(), hosts=["old.lab.test"]))) == \
        "ingress host names or TLS changed"
    assert ingress_drift(unit, step, {k: v for k, v in right.items() if k != "route"}) == \
        "ingress host names or TLS changed"


def test_down_removes_unrouted_file_certificates_and_stops_certd_where_no_auto_route_is_left():
    from orchestrator.core.edge_plan import plan_down

    n1 = NodeEdge("n1", (Claim("blog.lab.test", "blog", "prod", "site", "auto"),),
                  certs={"blog.lab.test": cert("blog.lab.test"), "shop.lab.test": cert("shop.lab.test", source="files")},
                  certd=status("issuer"))
    n2 = NodeEdge("n2", (Claim("x.lab.test", "x", "test", "site", "auto"),),  # another environment's route
                  certs={"shop.lab.test": cert("shop.lab.test", source="files")}, certd=status("follower"))
    n3 = NodeEdge("n3")  # nothing there: nothing to do
    steps = plan_down("prod", {"n1": n1, "n2": n2, "n3": n3})
    assert [(s.op, s.node, s.host) for s in steps] == [
        ("tls_cert_remove", "n1", "shop.lab.test"), ("tls_cert_remove", "n2", "shop.lab.test"),
        ("certd_leave", "n2", "")]


def test_after_down_calls_exactly_the_planned_removals():
    from orchestrator.app.edge import after_down

    nodes = {n: FakeEdgeNode(n) for n in ("n1", "n2")}
    nodes["n1"].route("blog", "prod", "site", ["blog.lab.test"])  # still routed: its daemon stays
    for n in nodes.values():
        n.call("certd_configure", {"env": "prod", "role": "follower", "hosts": ["blog.lab.test"], "secret": "s" * 40,
                                   "issuer_address": "10.208.0.1"})
        n._issue("prod", "shop.lab.test", "files")
        n.calls.clear()
    done = after_down(nodes, "prod")
    assert sorted((d["op"], d["node"], d["host"]) for d in done) == [
        ("certd_leave", "n2", ""), ("tls_cert_remove", "n1", "shop.lab.test"), ("tls_cert_remove", "n2", "shop.lab.test")]
    assert nodes["n1"].ops("certd") == [] and "prod" in nodes["n1"].certd and "prod" not in nodes["n2"].certd


def test_a_rollback_puts_back_the_route_the_node_reported_and_parses():
    """ingress_state reports every frontend's route with its certificates' facts (`certs`);
    the restore sends the route only for host names, without those facts."""
    from orchestrator.app.deploy import Deployment, _settings

    port = {"published": 0, "target": 80, "protocol": "http", "host_ip": "0.0.0.0"}
    route = {"hosts": ["a.lab.test"], "tls": "auto", "redirect": True, "hsts": 0, "ports": {"http": 80, "https": 443},
             "certs": {"a.lab.test": {"loaded": True, "fingerprint": "f"}}}
    plain = dict(route, hosts=[], tls="", certs={})

    def fake(observed):
        return SimpleNamespace(ingress={"n1": {"web": observed}}, _ingress_args=lambda service: None)

    args = Deployment._rollback_ingress_args(fake({"port": port, "health": {}, "route": route}), "n1", "web")
    assert args["route"] == {k: v for k, v in route.items() if k != "certs"}
    assert _settings(args).route.hosts == ("a.lab.test",)
    args = Deployment._rollback_ingress_args(fake({"port": dict(port, published=8080), "health": {},
                                                   "route": plain}), "n1", "web")
    assert "route" not in args and _settings(args).port["published"] == 8080

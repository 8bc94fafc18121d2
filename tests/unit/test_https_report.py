"""`orch certs`, `orch ps` and `orch nodes check`: host names and their certificates as the
nodes report them, judged and drawn (orchestrator.core.cert_report, cli.render, app.nodes)."""

import datetime as dt

from agent.wire.tls import CertdResult, CertInfo
from orchestrator.app.nodes import NodeCheck, compare_followers, judge_certs
from orchestrator.cli.render import _hosts_text, certs_table, renew_summary
from orchestrator.core.cert_report import cert_rows
from orchestrator.core.edge_plan import Claim, NodeEdge

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)


def info(host, fp, not_after="2027-03-01T00:00:00Z", source="auto"):
    return CertInfo(host=host, source=source, env="prod", fingerprint=fp, issuer="Pebble Intermediate CA",
                    not_before="2026-12-01T00:00:00Z", not_after=not_after)


def nodes():
    claims = (Claim("shop.lab.test", "shop", "prod", "web", "auto"), Claim("api.lab.test", "shop", "prod", "api", "files"),
              Claim("plain.lab.test", "shop", "prod", "x", ""), Claim("other.lab.test", "x", "test", "y", "auto"))
    return {
        "p1": NodeEdge("p1", claims, {"shop.lab.test": info("shop.lab.test", "aaa"),
                                      "api.lab.test": info("api.lab.test", "ccc", "2026-12-10T00:00:00Z", "files")},
                       CertdResult(env="prod", role="issuer", running=True, config_id="c")),
        "p2": NodeEdge("p2", claims, {"shop.lab.test": info("shop.lab.test", "bbb")},
                       CertdResult(env="prod", role="follower", running=True, config_id="c")),
    }


def test_one_row_per_host_name_with_what_is_wrong():
    rows = {r.host: r for r in cert_rows("prod", nodes(), NOW, ["p1", "p2"])}
    assert sorted(rows) == ["api.lab.test", "shop.lab.test"]  # plain HTTP and other environments left out
    shop, api = rows["shop.lab.test"], rows["api.lab.test"]
    assert shop.fingerprint == "aaa" and shop.nodes_text() == "p1, p2*" and shop.status == "another certificate on p2"
    assert api.status == "missing on p2; expiring in 4 days" and api.days_left == 4
    text = certs_table(list(rows.values()))
    assert text.splitlines()[0].split() == ["HOST", "SOURCE", "ISSUER", "NOT", "AFTER", "NODES", "STATUS"]
    assert "shop.lab.test  auto" in text and "p1, p2*" in text and "missing on p2; expiring in 4 days" in text
    assert shop.to_json()["nodes"] == [{"node": "p1", "fingerprint": "aaa", "differs": False},
                                       {"node": "p2", "fingerprint": "bbb", "differs": True}]


def test_a_failing_or_missing_issuer_is_a_certd_error():
    n = nodes()
    n["p1"] = NodeEdge("p1", n["p1"].claims, n["p1"].certs,
                       CertdResult(env="prod", role="issuer", running=True, last_error="urn:acme:error:dns"))
    shop = [r for r in cert_rows("prod", n, NOW) if r.host == "shop.lab.test"][0]
    assert "certd error: urn:acme:error:dns" in shop.status
    n = {k: NodeEdge(k, v.claims, v.certs, None) for k, v in nodes().items()}
    shop = [r for r in cert_rows("prod", n, NOW) if r.host == "shop.lab.test"][0]
    assert "certd error: no issuer configured" in shop.status


def test_ps_shows_each_host_and_its_certificate_on_the_node():
    route = {"hosts": ["a.lab.test", "b.lab.test"], "tls": "auto",
             "certs": {"a.lab.test": {"fingerprint": "f", "not_after": "2027-03-01T00:00:00Z", "loaded": True},
                       "b.lab.test": {"fingerprint": "", "loaded": False}}}
    assert _hosts_text(route) == "a.lab.test (https, until 2027-03-01), b.lab.test (https, no certificate yet)"
    assert _hosts_text({"hosts": ["c.lab.test"], "tls": ""}) == "c.lab.test (http)"
    assert _hosts_text(None) == "-"


def test_renew_prints_old_and_new_fingerprints():
    from orchestrator.app.certs import Renewed, RenewReport

    text = renew_summary(RenewReport("prod", "p1", ["p2"], [Renewed("shop.lab.test", "a" * 64, "b" * 64, True,
                                                                     ["p1", "p2"])]))
    assert "issuer p1, followers p2" in text and f"shop.lab.test: {'a' * 16} -> {'b' * 16}  renewed" in text


def test_nodes_check_judges_the_daemon_expiry_missing_packages_and_followers():
    issuer, follower = NodeCheck("p1", "10.0.0.1"), NodeCheck("p2", "10.0.0.2")
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    judge_certs(issuer, {"certd": {"role": "issuer", "running": False, "last_error": "CA unreachable"},
                         "certs": [{"host": "a.lab.test", "source": "auto", "fingerprint": "x" * 64, "not_after": soon}],
                         "problems": ["no python3-acme for /usr/bin/python3: apt-get install python3-acme"]})
    judge_certs(follower, {"certd": {"role": "follower", "running": True},
                           "certs": [{"host": "a.lab.test", "source": "auto", "fingerprint": "y" * 64,
                                      "not_after": "2099-01-01T00:00:00Z"}]})
    compare_followers([issuer, follower])
    texts = [p["message"] for p in issuer.problems]
    assert any("no python3-acme" in t for t in texts)
    assert [p["fix"] for p in issuer.problems if "python3-acme" in p["message"]] == ["apt-get install python3-acme"]
    assert any("is not running" in t for t in texts) and any("CA unreachable" in t for t in texts)
    assert any("a.lab.test (auto) expires in 2 day(s)" in t or "expires in 3 day(s)" in t for t in texts)
    assert [p["message"] for p in follower.problems] == [
        f"certificates: a.lab.test differs from the issuer's (p1): {'y' * 16} here, {'x' * 16} there"]
    assert follower.certs["certd"]["role"] == "follower" and "secret" not in str(follower.to_json())

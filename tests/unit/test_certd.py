"""The certificate daemon's logic (agent.certs.certd_plan, certd_core, certd_http) with a fake
CA, a fake store and a fake way to the issuer: renewal decisions as data, one order per
name, a follower's pull, challenge answers and the issuer's HTTP authorization."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest

from agent.certs import certd_http as H
from agent.certs import certd_plan as plan
from agent.certs.acme_client import Leaf, leaf
from agent.certs.certd_core import Certd, Remote
from agent.certs.certd_fake import FakeAcme, FakeCertStore, FakeRemote, self_signed
from agent.certs.certd_paths import CertdPaths
from agent.wire.tls import CertdConfig

SECRET = "s" * 40
DAY = 86400.0


def issuer_cfg(hosts=("a.example.com", "b.example.com"), renew_before=0.0, followers=("10.208.1.1",)):
    return CertdConfig.parse({"env": "prod", "role": "issuer", "hosts": list(hosts), "secret": SECRET,
                              "acme": {"directory": "https://ca.example/dir", "renew_before": renew_before},
                              "listen_address": "10.208.0.1", "followers": list(followers)})


def follower_cfg(hosts=("a.example.com",)):
    return CertdConfig.parse({"env": "prod", "role": "follower", "hosts": list(hosts), "secret": SECRET,
                              "issuer_address": "10.208.0.1"})


@pytest.fixture
def issuer(tmp_path):
    paths = CertdPaths.of(str(tmp_path / "n1"), "prod")
    paths.ensure()
    acme = FakeAcme()
    core = Certd(paths, issuer_cfg(), FakeCertStore(), acme=acme)
    acme.answer = core.answer
    return core


def follower_of(tmp_path, issuer, hosts=("a.example.com",)):
    paths = CertdPaths.of(str(tmp_path / "n2"), "prod")
    paths.ensure()
    return Certd(paths, follower_cfg(hosts), FakeCertStore(), remote=FakeRemote(issuer))


# ----------------------------------------------------------------------------- decisions


def held(not_before=0.0, days=90.0, names=("a.example.com",)):
    return Leaf(fingerprint="f", not_before=not_before, not_after=not_before + days * DAY, names=names)


@pytest.mark.parametrize("leaf_, now, renew_before, force, want", [
    (None, 0.0, 0.0, False, plan.DUE_MISSING),
    (held(), 10 * DAY, 0.0, False, ""),  # fresh
    (held(), 59 * DAY, 0.0, False, ""),  # more than a third left
    (held(), 60 * DAY, 0.0, False, plan.DUE_RENEW),  # a third of 90 days left
    (held(), 100 * DAY, 0.0, False, plan.DUE_RENEW),  # expired
    (held(), 79 * DAY, 10 * DAY, False, ""),  # renew_before wins over the fraction
    (held(), 80 * DAY, 10 * DAY, False, plan.DUE_RENEW),
    (held(), 1 * DAY, 0.0, True, plan.DUE_FORCED),
    (held(names=("other.example.com",)), 1 * DAY, 0.0, False, plan.DUE_NAMES),
])
def test_renewal_due_as_data(leaf_, now, renew_before, force, want):
    assert plan.due("a.example.com", leaf_, now, renew_before, force) == want


def test_next_check_comes_sooner_for_a_renewal_or_a_retry_and_never_in_the_past():
    assert plan.next_check(1000.0, [], []) == 1000.0 + plan.CHECK_SECONDS
    assert plan.next_check(1000.0, [1100.0], [5000.0]) == 1100.0
    assert plan.next_check(1000.0, [10.0], []) == 1000.0
    assert [plan.retry_delay(n) for n in (0, 1, 2, 3)] == [0.0, 300.0, 600.0, 1200.0]
    assert plan.retry_delay(40) == plan.MAX_RETRY_SECONDS


def test_a_follower_fetches_only_changed_certificates_of_the_names_it_serves():
    index = {"a.x.com": "f1", "b.x.com": "f2", "c.x.com": "f3"}
    assert plan.to_fetch(["a.x.com", "b.x.com", "d.x.com"], index, {"a.x.com": "f1", "b.x.com": "old"}) == ["b.x.com"]
    assert plan.to_fetch(["a.x.com"], index, {}) == ["a.x.com"]


def test_restart_only_when_the_config_changed_or_the_daemon_is_not_current():
    cfg = issuer_cfg().to_dict()
    assert not plan.restart_needed(cfg, dict(cfg), running=True, current=True)
    assert plan.restart_needed(cfg, dict(cfg, secret="t" * 40), running=True, current=True)
    assert plan.restart_needed(cfg, dict(cfg, hosts=["a.example.com"]), running=True, current=True)
    assert plan.restart_needed(cfg, dict(cfg), running=False, current=True)
    assert plan.restart_needed(cfg, dict(cfg), running=True, current=False)
    assert plan.restart_needed(None, cfg, running=True, current=True)


# ----------------------------------------------------------------------------- the issuer


def test_one_order_per_name_then_none_until_due_and_the_challenge_is_served_while_pending(issuer):
    out = issuer.ensure()
    assert out["ordered"] == ["a.example.com", "b.example.com"] and out["errors"] == {}
    assert issuer.acme.orders == ["a.example.com", "b.example.com"]
    # the challenge was answerable while the CA validated, and withdrawn after
    assert all(answer == token + ".thumb" for token, answer in issuer.acme.seen_tokens)
    assert issuer.answer("tok-1") is None
    assert sorted(h for _, h in issuer.store.certs) == ["a.example.com", "b.example.com"]
    assert issuer.ensure()["ordered"] == [] and len(issuer.acme.orders) == 2
    # files: the key 0600 in a 0700 directory
    assert os.stat(issuer.paths.issued_key("a.example.com")).st_mode & 0o777 == 0o600
    assert os.stat(issuer.paths.issued).st_mode & 0o777 == 0o700


def test_force_renews_every_name_once_with_a_new_certificate(issuer):
    issuer.ensure()
    before = issuer.archive.index()
    out = issuer.ensure(("a.example.com",), force=True)
    assert out["ordered"] == ["a.example.com"] and issuer.acme.orders.count("a.example.com") == 2
    after = issuer.archive.index()
    assert after["a.example.com"] != before["a.example.com"] and after["b.example.com"] == before["b.example.com"]
    assert issuer.store.certs[("prod", "a.example.com")][0].fingerprint == after["a.example.com"]


def test_a_name_due_for_renewal_is_ordered_again(tmp_path):
    paths = CertdPaths.of(str(tmp_path), "prod")
    paths.ensure()
    now = [time.time()]
    core = Certd(paths, issuer_cfg(hosts=("a.example.com",)), FakeCertStore(), acme=FakeAcme(days=30),
                 clock=lambda: now[0])
    core.ensure()
    assert core.next_check() == pytest.approx(now[0] + plan.CHECK_SECONDS)
    now[0] += 21 * DAY  # less than a third of 30 days left
    assert core.ensure(scheduled=True)["ordered"] == ["a.example.com"]
    assert core.acme.orders == ["a.example.com", "a.example.com"]


def test_a_failing_name_does_not_stop_the_others_and_waits_before_a_scheduled_retry(issuer):
    issuer.acme.fail["a.example.com"] = "validation failed: connection refused"
    out = issuer.ensure()
    assert out["ordered"] == ["b.example.com"]
    assert out["errors"] == {"a.example.com": "validation failed: connection refused"}
    assert issuer.last_error == "a.example.com: validation failed: connection refused"
    assert issuer.ensure(scheduled=True)["due"] == []  # backing off
    assert issuer.acme.orders == ["a.example.com", "b.example.com"]
    del issuer.acme.fail["a.example.com"]
    assert issuer.ensure()["ordered"] == ["a.example.com"]  # an explicit ensure does not wait
    assert issuer.last_error == "" and issuer.failures == {}


def test_a_certificate_obtained_but_not_loaded_is_installed_again_without_a_new_order(issuer):
    issuer.store.broken = True
    out = issuer.ensure(("a.example.com",))
    assert out["ordered"] == ["a.example.com"]
    assert out["errors"]["a.example.com"] == "obtained, but not loaded: RuntimeError: haproxy is not running"
    issuer.store.broken = False
    out = issuer.ensure(("a.example.com",))
    assert out["ordered"] == [] and out["restored"] == ["a.example.com"]
    assert issuer.acme.orders == ["a.example.com"]


# ----------------------------------------------------------------------------- a follower


def test_a_follower_pulls_what_changed_and_nothing_else(tmp_path, issuer):
    issuer.ensure()
    f = follower_of(tmp_path, issuer)
    assert f.pull() == {"fetched": ["a.example.com"], "errors": {}}
    fp = issuer.archive.index()["a.example.com"]
    assert f.store.certs[("prod", "a.example.com")][0].fingerprint == fp
    assert f.pull()["fetched"] == [] and f.remote.fetched == ["a.example.com"]
    issuer.ensure(force=True)
    assert f.pull()["fetched"] == ["a.example.com"]
    assert f.store.certs[("prod", "a.example.com")][0].fingerprint == issuer.archive.index()["a.example.com"] != fp
    assert ("prod", "b.example.com") not in f.store.certs  # not a name it serves


def test_a_follower_reports_an_unreachable_issuer_and_a_name_it_has_not_yet(tmp_path, issuer):
    f = follower_of(tmp_path, issuer)
    assert f.pull()["errors"] == {}
    assert f.errors == {"a.example.com": "the issuer has no certificate for it yet"}
    f.remote.down = True
    assert "did not answer" in f.pull()["errors"]["*"]
    f.remote.down = False
    issuer.ensure()
    f.pull()
    assert f.last_error == ""


def test_a_follower_refuses_a_certificate_that_does_not_name_the_host(tmp_path, issuer):
    issuer.ensure()
    cert, key = self_signed("evil.example.com")
    issuer.archive.put("a.example.com", cert, key)
    f = follower_of(tmp_path, issuer)
    assert "does not name a.example.com" in f.pull()["errors"]["a.example.com"]
    assert f.store.certs == {}


def test_a_follower_relays_challenges_to_the_issuer(tmp_path, issuer):
    f = follower_of(tmp_path, issuer)
    issuer.tokens.publish("abc_-1", "abc_-1.thumb")
    assert H.challenge_reply("/.well-known/acme-challenge/abc_-1", f.answer) == H.Reply(200, b"abc_-1.thumb")
    assert H.challenge_reply("/.well-known/acme-challenge/other", f.answer).status == 404
    assert H.challenge_reply("/.well-known/acme-challenge/../config.json", f.answer).status == 404
    assert H.challenge_reply("/elsewhere", f.answer).status == 404


# ----------------------------------------------------------------------------- HTTP authorization


def reply(issuer, path, auth="Bearer " + SECRET, ip="10.208.1.1"):
    return H.issuer_reply(path, auth, ip, SECRET, issuer.cfg.followers, issuer.tokens.get, issuer.archive.index,
                          issuer.archive.pair)


def test_the_issuer_hands_keys_only_to_a_follower_with_the_secret(issuer):
    issuer.ensure()
    ok = reply(issuer, "/certs/a.example.com")
    assert ok.status == 200 and "PRIVATE KEY" in json.loads(ok.body)["key_pem"]
    assert json.loads(reply(issuer, "/certs").body) == issuer.archive.index()
    for auth, ip in ((None, "10.208.1.1"), ("Bearer " + "x" * 40, "10.208.1.1"), (SECRET, "10.208.1.1"),
                     ("Bearer " + SECRET, "10.208.9.9"), ("Bearer " + SECRET, "")):
        assert reply(issuer, "/certs/a.example.com", auth, ip) == H.FORBIDDEN
        assert reply(issuer, "/certs", auth, ip) == H.FORBIDDEN
    for path in ("/certs/../config.json", "/certs/..%2fconfig.json", "/certs/a.example.com/../../account.key",
                 "/certs/nobody.example.com", "/certs/", "/config.json", "/acme/../certs"):
        assert reply(issuer, path).status == 404, path


def test_challenge_answers_are_public(issuer):
    issuer.tokens.publish("t0k", "t0k.thumb")
    assert reply(issuer, "/acme/t0k", auth=None, ip="192.0.2.1") == H.Reply(200, b"t0k.thumb")
    assert reply(issuer, "/acme/nope", auth=None).status == 404
    assert reply(issuer, "/acme/a/b", auth=None).status == 404


def test_the_servers_over_real_sockets(tmp_path, issuer):
    """The handlers behind http.server on a unix socket (the control socket's POST and the
    challenge socket) and on TCP (the issuer's server, as a follower's Remote reaches it)."""
    issuer.ensure()
    issuer.tokens.publish("tok9", "tok9.thumb")
    sock = str(tmp_path / "c.sock")
    unix = H.unix_server(sock, 0o600, get=lambda h: H.challenge_reply(h.path, issuer.answer),
                         post=lambda path, doc: H.json_reply({"path": path, "doc": doc}))
    tcp = H.tcp_server("127.0.0.1", 0, lambda h: reply(issuer, h.path, h.headers.get("Authorization"), H.client_ip(h)))
    for s in (unix, tcp):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        assert os.stat(sock).st_mode & 0o777 == 0o600
        assert H.unix_request(sock, "GET", "/.well-known/acme-challenge/tok9") == (200, b"tok9.thumb")
        status, body = H.unix_request(sock, "POST", "/ensure", {"force": True})
        assert status == 200 and json.loads(body) == {"path": "/ensure", "doc": {"force": True}}
        port = tcp.server_address[1]
        remote = Remote("127.0.0.1", SECRET, port=port)
        assert remote.challenge("tok9") == "tok9.thumb"
        with pytest.raises(urllib.error.HTTPError) as err:  # 127.0.0.1 is not a follower
            remote.index()
        assert err.value.code == 403
        issuer.cfg = issuer_cfg(followers=("127.0.0.1",))  # reply() reads it at each request
        assert remote.index() == issuer.archive.index()
        cert, key = remote.pair("a.example.com")
        assert leaf(cert).fingerprint == issuer.archive.index()["a.example.com"] and "PRIVATE KEY" in key
        with pytest.raises(urllib.error.HTTPError):
            Remote("127.0.0.1", "x" * 40, port=port).index()
    finally:
        for s in (unix, tcp):
            s.shutdown()
            s.server_close()


def test_leaf_facts_of_a_chain():
    cert, _ = self_signed("a.example.com", days=10)
    got = leaf(cert + cert)
    assert got.names == ("a.example.com",) and round((got.not_after - got.not_before) / DAY) == 10
    assert len(got.fingerprint) == 64
    with pytest.raises(ValueError):
        leaf("not a pem")


# ----------------------------------------------------------------------------- the daemon's wiring


class TmpPaths(CertdPaths):
    """The control socket's folder in the test's tmp, not /run."""

    @property
    def run_dir(self):
        return os.path.join(self.root, "run")


def test_the_daemon_serves_followers_challenges_and_control_and_writes_a_status_without_secrets(tmp_path, monkeypatch):
    from agent.certs.daemon import Daemon

    monkeypatch.setattr("agent.certs.daemon.CERTD_PORT", 0)  # any free port

    paths = TmpPaths(str(tmp_path / "d" / "certd" / "prod"))
    paths.ensure()
    cfg = CertdConfig.parse(dict(issuer_cfg(followers=("127.0.0.1",)).to_dict(), listen_address="127.0.0.1"))
    core = Certd(paths, cfg, FakeCertStore(), acme=FakeAcme())
    daemon = Daemon(paths, cfg, core, str(tmp_path / "challenge.sock"))
    assert daemon.next_at > time.time() + 10  # the issuer's first look waits for certd_ensure
    daemon.start()
    try:
        status, body = H.unix_request(paths.control, "POST", "/ensure", {"hosts": ["a.example.com"]})
        assert status == 200 and json.loads(body)["ordered"] == ["a.example.com"]
        assert H.unix_request(paths.control, "POST", "/pull", {})[0] == 404  # not a follower
        assert os.stat(paths.control).st_mode & 0o777 == 0o600
        core.tokens.publish("tokA", "tokA.thumb")
        assert H.unix_request(str(tmp_path / "challenge.sock"), "GET",
                              "/.well-known/acme-challenge/tokA") == (200, b"tokA.thumb")
        remote = Remote("127.0.0.1", SECRET, port=daemon.peer_server.server_address[1])
        assert list(remote.index()) == ["a.example.com"]
        os.unlink(str(tmp_path / "challenge.sock"))  # someone cleaned /run: made again at the next tick
        daemon.next_at = 0.0  # as SIGUSR1 does
        daemon.tick()
        assert H.unix_request(str(tmp_path / "challenge.sock"), "GET", "/.well-known/acme-challenge/x")[0] == 404
        assert core.acme.orders == ["a.example.com", "b.example.com"]
        with open(paths.status) as fh:
            text = fh.read()
        doc = json.loads(text)
        assert doc["role"] == "issuer" and doc["last_error"] == "" and doc["next_check"]
        assert SECRET not in text and "PRIVATE" not in text
    finally:
        daemon.stop()
    assert not os.path.exists(paths.control) and not os.path.exists(str(tmp_path / "challenge.sock"))


def test_the_cas_words_in_one_line():
    pytest.importorskip("acme", reason="the acme library is in the test extras")
    from acme import errors, messages

    from agent.certs.acme_client import problem

    err = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="too many certificates for this name")
    assert problem(err) == "too many certificates for this name (rateLimited)"
    assert problem(errors.TimeoutError()) == "the CA did not finish the order within 90 s"
    assert problem(ConnectionError("Max retries exceeded\nmore")) == "ConnectionError: Max retries exceeded"

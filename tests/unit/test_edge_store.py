"""The certificate store (agent.certs.store, files, openssl) and the runtime API's ssl
commands as data (agent.certs.runtime). openssl runs on temporary files; HAProxy is a
fake that records the runtime commands."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from agent import haproxy as H
from agent.certs import files as F
from agent.certs import openssl as O
from agent.certs import runtime as R
from agent.certs import store as S
from agent.ingress_files import Paths, save_state
from agent.wire import ingress as W
from agent.wire.protocol import AgentError
from agent.wire.tls import Route
from tests.tls_certs import make_ca, make_leaf

HOST = "shop.example.com"


@pytest.fixture(scope="module")
def ca():
    return make_ca()


def test_runtime_commands():
    f = "/var/lib/orch/certs/shop.example.com.pem"
    assert R.cmd_set_ssl_cert(f) == "set ssl cert /var/lib/orch/certs/shop.example.com.pem <<"
    assert R.cmd_commit_ssl_cert(f) == "commit ssl cert /var/lib/orch/certs/shop.example.com.pem"
    assert R.cmd_abort_ssl_cert(f) == "abort ssl cert /var/lib/orch/certs/shop.example.com.pem"
    assert R.cmd_show_ssl_cert() == "show ssl cert"
    with pytest.raises(ValueError):
        R.cmd_set_ssl_cert("/x.pem; shutdown frontend x")
    assert R.payload_text("-----BEGIN X-----\r\nAAA\n\n-----END X-----\n\n") == "-----BEGIN X-----\nAAA\n-----END X-----\n"
    assert R.parse_show_ssl_cert("# transaction\n*/c/a.pem\n# filename\n/c/a.pem\n/c/default.pem\n") == (
        ["/c/a.pem", "/c/default.pem"], ["/c/a.pem"])
    R.check_set("Transaction created for certificate /c/a.pem!\n", "/c/a.pem")
    R.check_commit("Committing /c/a.pem.\nSuccess!\n", "/c/a.pem")
    with pytest.raises(AgentError, match="refused the new certificate"):
        R.check_set("unable to load the content of /c/a.pem\n", "/c/a.pem")
    with pytest.raises(AgentError, match="did not commit"):
        R.check_commit("Committing /c/a.pem\nError: inconsistencies between private key and certificate\n", "/c/a.pem")


def test_unix_command_sends_a_payload_ended_by_an_empty_line(tmp_path):
    path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got = []

    def serve():
        conn, _ = srv.accept()
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        got.append(data)
        conn.sendall(b"Transaction created\n")
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    assert H.unix_command(path, "set ssl cert /c/a.pem <<", payload="LINE1\nLINE2\n") == "Transaction created\n"
    t.join(5)
    srv.close()
    assert got == [b"set ssl cert /c/a.pem <<\nLINE1\nLINE2\n\n"]
    with pytest.raises(ValueError):
        H.unix_command(path, "set ssl cert /c/a.pem <<", payload="A\n\nB")
    with pytest.raises(ValueError):
        H.unix_command(path, "show ssl cert", payload="A")


def test_facts_from_openssl_output():
    text = ("sha256 Fingerprint=AB:CD:01\nissuer=CN=Pebble Intermediate CA 5ed2,O=Pebble\n"
            "notBefore=Dec  6 17:00:00 2026 GMT\nnotAfter=Mar  6 17:00:00 2027 GMT\n"
            "X509v3 Subject Alternative Name: \n    DNS:Shop.example.com, DNS:www.example.com\n")
    assert O.parse_facts(text) == {"fingerprint": "abcd01", "issuer": "Pebble Intermediate CA 5ed2",
                                   "not_before": "2026-12-06T17:00:00Z", "not_after": "2027-03-06T17:00:00Z",
                                   "names": ["shop.example.com", "www.example.com"]}


def test_cert_facts_and_key_match_with_openssl(ca):
    leaf = make_leaf(ca, [HOST, "www.example.com"])
    facts = S.cert_facts(leaf.cert_pem + ca.cert_pem)  # the leaf's, with its chain after it
    assert facts["fingerprint"] == leaf.fingerprint and facts["issuer"] == "orch edge test CA"
    assert facts["names"] == [HOST, "www.example.com"] and facts["not_after"].endswith("Z")
    assert O.key_matches(leaf.cert_pem, leaf.key_pem)
    assert not O.key_matches(leaf.cert_pem, make_leaf(ca, [HOST]).key_pem)
    with pytest.raises(AgentError, match="the key cannot be read"):
        O.key_matches(leaf.cert_pem, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


class FakeHAProxy:
    """HAProxy running (or not) with some certificate files loaded; records commands."""

    def __init__(self, paths, running=True, loaded=(), answers=None):
        self.paths = paths
        self.running = running
        self.loaded = set(loaded)
        self.commands = []
        self.answers = answers or {}
        self.events = []

    def pid(self):
        return 4242 if self.running else None

    def runtime(self, command, timeout=10.0, payload=None):
        self.commands.append((command, payload))
        verb = " ".join(command.split()[:2])
        if verb in self.answers:
            return self.answers[verb]
        if command == "show ssl cert":
            return "# filename\n" + "".join(p + "\n" for p in sorted(self.loaded))
        if verb == "set ssl":
            return "Transaction created for certificate %s!\n" % command.split()[3]
        if verb == "commit ssl":
            return "Committing %s.\nSuccess!\n" % command.split()[3]
        return ""

    def write_config(self, text):
        self.events.append("write_config")
        self.config = text
        return None

    def save_server_state(self):
        pass

    def reload(self):
        self.events.append("reload")
        with open(F.crt_list_path(os.path.dirname(self.paths.dir))) as fh:
            self.loaded = {ln.split()[0] for ln in fh if ln.strip()}


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A data dir with one host-routed service in the ingress state, HAProxy faked."""
    paths = Paths(dir=str(tmp_path / "ingress"), run_dir=str(tmp_path / "run"))
    monkeypatch.setattr(S, "paths_for", lambda data_dir: paths)
    monkeypatch.setattr(F, "paths_for", lambda data_dir: paths)
    os.makedirs(paths.dir)
    save_state(paths, {"shop/web": W.ServiceIngress(project="shop", service="web", env="prod", published=0,
                                                    target=8080, route=Route(hosts=(HOST,), tls="files"))})
    hap = FakeHAProxy(paths)
    monkeypatch.setattr(S, "_hap", lambda target, p: hap)
    monkeypatch.setattr(S, "HAProxy", lambda *a, **k: hap)
    hap.data_dir = str(tmp_path)
    return hap


def test_store_files_and_their_modes(ca, node):
    leaf = make_leaf(ca, [HOST])
    node.running = False
    info = S.install(node.data_dir, "prod", HOST, leaf.cert_pem + ca.cert_pem, leaf.key_pem, "files")
    assert info.fingerprint == leaf.fingerprint and info.env == "prod" and not info.loaded
    folder = S.cert_dir(node.data_dir)
    pem = os.path.join(folder, HOST + ".pem")
    assert os.stat(folder).st_mode & 0o777 == 0o700 and os.stat(pem).st_mode & 0o777 == 0o600
    text = open(pem).read()
    assert text.index(leaf.cert_pem.splitlines()[1]) < text.index(ca.cert_pem.splitlines()[1]) < text.index(
        "PRIVATE KEY") and "\n\n" not in text  # leaf, chain, key: what HAProxy loads
    meta = json.load(open(os.path.join(folder, HOST + ".json")))
    assert meta["env"] == "prod" and meta["source"] == "files" and "loaded" not in meta
    assert "PRIVATE" not in json.dumps(meta)
    assert node.commands == []  # HAProxy not running: the next start loads the files


def test_a_new_host_reloads_a_renewal_is_set_and_committed(ca, node):
    first, second = make_leaf(ca, [HOST]), make_leaf(ca, [HOST])
    info = S.install(node.data_dir, "prod", HOST, first.cert_pem, first.key_pem, "files")
    pem = F.pem_path(node.data_dir, HOST)
    assert info.loaded and node.events == ["write_config", "reload"] and pem in node.loaded
    assert "crt-list" in node.config and open(F.crt_list_path(node.data_dir)).read().endswith(
        "%s %s\n" % (pem, HOST))
    node.commands.clear()
    info = S.install(node.data_dir, "prod", HOST, second.cert_pem, second.key_pem, "files")
    assert info.fingerprint == second.fingerprint and info.loaded
    assert [c for c, _ in node.commands] == ["show ssl cert", "set ssl cert %s <<" % pem, "commit ssl cert %s" % pem]
    assert node.commands[1][1] == open(pem).read() and node.events == ["write_config", "reload"]  # no new reload
    node.commands.clear()
    S.install(node.data_dir, "prod", HOST, second.cert_pem, second.key_pem, "files")  # the same again
    assert [c for c, _ in node.commands] == ["show ssl cert"]


def test_a_refused_commit_puts_the_old_files_back(ca, node):
    first, second = make_leaf(ca, [HOST]), make_leaf(ca, [HOST])
    S.install(node.data_dir, "prod", HOST, first.cert_pem, first.key_pem, "files")
    node.answers["commit ssl"] = "Error: something\n"
    with pytest.raises(AgentError, match="did not commit"):
        S.install(node.data_dir, "prod", HOST, second.cert_pem, second.key_pem, "files")
    assert node.commands[-1][0].startswith("abort ssl cert")
    assert S.list_certs(node.data_dir)[0].fingerprint == first.fingerprint


def test_refusals(ca, node):
    leaf = make_leaf(ca, [HOST])
    with pytest.raises(AgentError) as err:
        S.install(node.data_dir, "prod", HOST, leaf.cert_pem, make_leaf(ca, [HOST]).key_pem, "files")
    assert err.value.kind == "bad_request" and "the key does not match the certificate" in err.value.message
    S.install(node.data_dir, "prod", HOST, leaf.cert_pem, leaf.key_pem, "files")
    with pytest.raises(AgentError, match="the certificate is for other.example.com, not shop.example.com"):
        wrong = make_leaf(ca, ["other.example.com"])
        S.install(node.data_dir, "prod", HOST, wrong.cert_pem, wrong.key_pem, "files")
    with pytest.raises(AgentError, match="the certificate for shop.example.com expired on 20"):
        old = make_leaf(ca, [HOST], days=-1)
        S.install(node.data_dir, "prod", HOST, old.cert_pem, old.key_pem, "files")
    assert S.covers(["*.example.com"], HOST) and not S.covers(["*.example.com"], "a.shop.example.com")
    with pytest.raises(AgentError) as err:
        S.install(node.data_dir, "test", HOST, leaf.cert_pem, leaf.key_pem, "auto")
    assert err.value.kind == "conflict" and "belongs to environment prod" in err.value.message
    with pytest.raises(AgentError) as err:
        S.remove(node.data_dir, "test", HOST)
    assert err.value.kind == "conflict"


def test_list_and_remove(ca, node):
    leaf = make_leaf(ca, [HOST])
    S.install(node.data_dir, "prod", HOST, leaf.cert_pem, leaf.key_pem, "files")
    [info] = S.list_certs(node.data_dir, "prod")
    assert info.loaded and info.host == HOST and S.list_certs(node.data_dir, "test") == []
    routes = S.route_certs(node.data_dir, [HOST, "none.example.com"], S.loaded_files(node))
    assert routes[HOST]["loaded"] and routes[HOST]["fingerprint"] == leaf.fingerprint
    assert routes["none.example.com"] == {"loaded": False, "fingerprint": "", "not_after": "", "issuer": "",
                                          "source": ""}
    node.events.clear()
    assert S.remove(node.data_dir, "prod", HOST) is True
    assert node.events == ["write_config", "reload"] and S.list_certs(node.data_dir) == []
    assert not os.path.exists(F.pem_path(node.data_dir, HOST))
    assert S.remove(node.data_dir, "prod", HOST) is False


def test_certd_socket_is_short_and_in_the_ingress_run_folder(node):
    path = S.certd_socket(node.data_dir, "prod")
    assert path == os.path.join(node.paths.run_dir, "certd-prod.sock")
    assert os.stat(node.paths.run_dir).st_mode & 0o777 == 0o700
    assert len(F.socket_in("/run/orch-ingress-0123456789abcdef", "e" * 128)) <= F.SOCKET_MAX

"""The tls_* operations over the agent's real request loop: what they answer, and that a
key sent to tls_cert_put never comes back (result, events, errors) nor stays in the
ledger's masking rule's blind spot."""

from __future__ import annotations

import json
import os
import threading

import pytest

from agent.certs import ops as certs_ops
from agent.certs import store
from agent.ingress_files import Paths
from agent.fake import FakeEngine
from agent.operations import OPERATIONS
from agent.rpc import Server
from agent.wire import redact
from agent.wire.protocol import PROTOCOL_VERSION
from agent.wire.tls import CERT_OPERATIONS
from tests.tls_certs import make_ca, make_leaf

HOST = "shop.example.com"


class Agent:
    """The agent's request loop on pipes (HAProxy is not running in tmp_path: files only)."""

    def __init__(self, tmp_path):
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        self.stdin = os.fdopen(w_in, "wb", buffering=0)
        self.stdout = os.fdopen(r_out, "rb")
        self.server = Server(os.fdopen(r_in, "rb"), os.fdopen(w_out, "wb", buffering=0), lambda: FakeEngine(),
                             str(tmp_path))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.n = 0
        self.raw = []  # every line the agent wrote

    def _serve(self):
        self.server.serve()
        self.server.stdout.close()

    def call(self, op, args):
        self.n += 1
        self.stdin.write((json.dumps({"v": PROTOCOL_VERSION, "id": self.n, "op": op, "args": args}) + "\n").encode())
        while True:
            line = self.stdout.readline()
            self.raw.append(line.decode())
            msg = json.loads(line)
            if "event" not in msg:
                return msg


@pytest.fixture
def agent(tmp_path, monkeypatch):
    # the ingress lock's run folder in tmp_path, not /run
    monkeypatch.setattr(store, "paths_for", lambda data_dir: Paths(dir=os.path.join(data_dir, "ingress"),
                                                                   run_dir=str(tmp_path / "run")))
    a = Agent(tmp_path)
    yield a
    a.stdin.close()
    a.thread.join(5)


def test_the_tls_operations_are_registered():
    assert {"tls_cert_put", "tls_cert_remove", "tls_certs"} <= set(OPERATIONS)
    assert set(certs_ops.CERT_OPERATIONS_TABLE) <= set(CERT_OPERATIONS)
    assert set(certs_ops.CERTD_OPERATIONS) <= set(OPERATIONS)  # certd's, when its module is there


def test_put_list_remove_and_the_key_never_comes_back(agent, tmp_path):
    ca = make_ca()
    leaf, other = make_leaf(ca, [HOST]), make_leaf(ca, [HOST])
    key_line = leaf.key_pem.splitlines()[1]

    msg = agent.call("tls_cert_put", {"env": "prod", "host": HOST, "cert_pem": leaf.cert_pem,
                                      "key_pem": other.key_pem})
    assert msg["error"]["kind"] == "bad_request"
    assert "the key does not match the certificate" in msg["error"]["message"]

    msg = agent.call("tls_cert_put", {"env": "prod", "host": HOST, "cert_pem": leaf.cert_pem,
                                      "key_pem": leaf.key_pem})
    cert = msg["result"]["cert"]
    assert cert["fingerprint"] == leaf.fingerprint and cert["source"] == "files" and cert["loaded"] is False

    msg = agent.call("tls_cert_put", {"env": "prod", "host": HOST, "cert_pem": leaf.cert_pem,
                                      "key_pem": "-----BEGIN PRIVATE KEY-----\n" + key_line + "\n-----END PRIVATE KEY-----\n"})
    assert msg["error"]["kind"] == "bad_request"

    msg = agent.call("tls_certs", {"env": "prod"})
    assert [c["fingerprint"] for c in msg["result"]["certs"]] == [leaf.fingerprint]
    assert agent.call("tls_certs", {"env": "test"})["result"]["certs"] == []
    assert agent.call("tls_cert_remove", {"env": "prod", "host": HOST})["result"] == {"removed": True}
    assert agent.call("tls_cert_remove", {"env": "prod", "host": HOST})["result"] == {"removed": False}

    everything = "".join(agent.raw)
    for pair in (leaf, other):
        for ln in pair.key_pem.splitlines()[1:-1]:
            assert ln not in everything  # not in a result, an event or an error
    assert "PRIVATE KEY" not in everything


def test_the_masking_rule_covers_the_secret_arguments():
    # the controller's output filter and the ledger mask values under these names
    assert redact.secret_name("key_pem") and redact.secret_name("secret")
    assert not redact.secret_name("cert_pem")


def test_tls_certs_reports_what_the_node_lacks(monkeypatch, tmp_path):
    """`nodes check` shows these: openssl always needed; python3-acme only where the
    environment has a tls: auto route or a certificate daemon."""
    import shutil

    from agent.certs import acme_client, ops

    class Ctx:
        def data_dir(self):
            return str(tmp_path)

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(acme_client, "missing", lambda: "no python3-acme for /usr/bin/python3: apt-get install python3-acme")
    assert ops.node_problems(Ctx(), "prod", None) == [
        "no openssl command (certificates are checked and made with it): apt-get install openssl"]
    assert ops.node_problems(Ctx(), "prod", {"role": "issuer"})[1].startswith("no python3-acme")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    assert ops.node_problems(Ctx(), "prod", None) == []

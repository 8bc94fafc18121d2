"""The certd_* agent operations (agent.certs.certd_ops) over a fake store, fake daemon
processes (a Certd in this process) and a fake CA: config files and modes, restarts only on
a change, the issuer's outcome and errors, a follower's pull, leave; no secret in a result
or an event."""

from __future__ import annotations

import json
import os

import pytest

from agent.certs.certd_core import Certd
from agent.certs.certd_fake import FakeAcme, FakeCertdProcs, FakeCertStore, FakeRemote
from agent.certs.certd_ops import CERTD_OPERATIONS, paths_of
from agent.context import Context
from agent.fake import FakeEngine
from agent.wire.protocol import AgentError, BadRequest
from agent.wire.tls import CertdConfig, CertdResult, config_id, secret_id

SECRET = "k" * 16 + "Q" * 20
ISSUER = {"env": "prod", "role": "issuer", "hosts": ["a.example.com", "b.example.com"], "secret": SECRET,
          "acme": {"directory": "https://ca.example/dir", "email": "ops@example.com"},
          "listen_address": "10.208.0.1", "followers": ["10.208.1.1"]}
FOLLOWER = {"env": "prod", "role": "follower", "hosts": ["a.example.com"], "secret": SECRET,
            "issuer_address": "10.208.0.1"}


class Node:
    def __init__(self, tmp_path, name, issuer_node=None):
        self.events = []
        self.ctx = Context(engine_factory=FakeEngine, state_dir=str(tmp_path / name), engine_id=lambda: name,
                           emit=lambda type_, **data: self.events.append((type_, data)))
        self.store = FakeCertStore()
        self.acme = FakeAcme()

        def make(paths):
            cfg = CertdConfig.parse(json.load(open(paths.config)))
            remote = None if issuer_node is None else FakeRemote(issuer_node.core(paths.env))
            return Certd(paths, cfg, self.store, acme=self.acme, remote=remote)

        self.procs = FakeCertdProcs(make)
        self.ctx.certd_procs = self.procs
        self.ctx.cert_store = self.store

    def core(self, env="prod"):
        return self.procs.cores[paths_of(self.ctx, env).root]

    def op(self, name, args):
        return CERTD_OPERATIONS[name](self.ctx, args)

    def everything_said(self):
        return json.dumps(self.events)


def test_configure_writes_the_config_0600_and_restarts_only_on_a_change(tmp_path):
    n = Node(tmp_path, "n1")
    out = CertdResult.from_dict(n.op("certd_configure", dict(ISSUER)))
    paths = paths_of(n.ctx, "prod")
    assert os.stat(paths.config).st_mode & 0o777 == 0o600 and os.stat(paths.root).st_mode & 0o777 == 0o700
    assert out.role == "issuer" and out.running
    assert out.config_id == config_id(CertdConfig.parse(ISSUER)) and out.secret_id == secret_id(SECRET)
    assert len(n.procs.starts) == 1
    n.op("certd_configure", dict(ISSUER))
    assert len(n.procs.starts) == 1  # same config: left alone
    n.op("certd_configure", dict(ISSUER, hosts=["a.example.com"]))
    assert len(n.procs.starts) == 2
    n.op("certd_configure", dict(ISSUER, hosts=["a.example.com"], secret="z" * 40))
    assert len(n.procs.starts) == 3  # a new secret restarts too
    n.procs.code_current = False  # the agent's code changed
    n.op("certd_configure", dict(ISSUER, hosts=["a.example.com"], secret="z" * 40))
    assert len(n.procs.starts) == 4


def test_an_issuer_needs_python3_acme(tmp_path):
    n = Node(tmp_path, "n1")
    n.procs.missing = ["no python3-acme for /usr/bin/python3.11: apt-get install python3-acme"]
    with pytest.raises(AgentError) as err:
        n.op("certd_configure", dict(ISSUER))
    assert "python3-acme" in err.value.message and not os.path.exists(paths_of(n.ctx, "prod").root)


def test_ensure_orders_once_and_reports_what_it_ordered(tmp_path):
    n = Node(tmp_path, "n1")
    n.op("certd_configure", dict(ISSUER))
    out = CertdResult.from_dict(n.op("certd_ensure", {"env": "prod"}))
    assert out.ordered == ("a.example.com", "b.example.com") and out.last_error == ""
    assert sorted(c.host for c in out.certs) == ["a.example.com", "b.example.com"]
    assert CertdResult.from_dict(n.op("certd_ensure", {"env": "prod"})).ordered == ()
    assert n.acme.orders == ["a.example.com", "b.example.com"]
    out = CertdResult.from_dict(n.op("certd_ensure", {"env": "prod", "hosts": ["b.example.com"], "force": True}))
    assert out.ordered == ("b.example.com",) and n.acme.orders[-1] == "b.example.com"
    assert ("certd.ordered", {"env": "prod", "host": "b.example.com"}) in n.events
    with pytest.raises(BadRequest):
        n.op("certd_ensure", {"env": "prod", "hosts": ["c.example.com"]})


def test_ensure_fails_with_the_cas_words_when_every_name_failed_and_reports_a_partial_one(tmp_path):
    n = Node(tmp_path, "n1")
    n.op("certd_configure", dict(ISSUER))
    n.acme.fail = {"a.example.com": "validation failed: 10.250.0.12: Connection refused"}
    out = CertdResult.from_dict(n.op("certd_ensure", {"env": "prod"}))
    assert out.ordered == ("b.example.com",)
    assert out.last_error == "a.example.com: validation failed: 10.250.0.12: Connection refused"
    with pytest.raises(AgentError) as err:
        n.op("certd_ensure", {"env": "prod", "hosts": ["a.example.com"]})
    assert err.value.kind == "acme"
    assert "a.example.com: validation failed: 10.250.0.12: Connection refused" in err.value.message
    assert "https://ca.example/dir" in err.value.message and err.value.details["fix"]
    assert CertdResult.from_dict(n.op("certd_status", {"env": "prod"})).last_error.startswith("a.example.com:")


def test_ensure_and_pull_refuse_the_wrong_role_or_no_config(tmp_path):
    n = Node(tmp_path, "n1")
    with pytest.raises(AgentError) as err:
        n.op("certd_ensure", {"env": "prod"})
    assert err.value.kind == "not_found"
    n.op("certd_configure", dict(ISSUER))
    with pytest.raises(AgentError) as err:
        n.op("certd_pull", {"env": "prod"})
    assert "issuer of prod, not its follower" in err.value.message
    assert CertdResult.from_dict(n.op("certd_status", {"env": "dev"})).role == ""


def test_a_follower_pulls_from_the_issuer_and_a_forced_renewal_reaches_it(tmp_path):
    n1 = Node(tmp_path, "n1")
    n1.op("certd_configure", dict(ISSUER))
    n2 = Node(tmp_path, "n2", issuer_node=n1)
    n2.op("certd_configure", dict(FOLLOWER))
    n1.op("certd_ensure", {"env": "prod"})
    out = CertdResult.from_dict(n2.op("certd_pull", {"env": "prod"}))
    fp = {c.host: c.fingerprint for c in CertdResult.from_dict(n1.op("certd_status", {"env": "prod"})).certs}
    assert [(c.host, c.fingerprint) for c in out.certs] == [("a.example.com", fp["a.example.com"])]
    n1.op("certd_ensure", {"env": "prod", "force": True})
    out = CertdResult.from_dict(n2.op("certd_pull", {"env": "prod"}))
    assert out.certs[0].fingerprint != fp["a.example.com"]
    assert ("certd.pulled", {"env": "prod", "host": "a.example.com"}) in n2.events
    n2.core().remote.down = True
    with pytest.raises(AgentError) as err:
        n2.op("certd_pull", {"env": "prod"})
    assert err.value.kind == "certd" and "10.208.0.1 did not answer" in err.value.message
    # the follower holds no account and no archive
    paths = paths_of(n2.ctx, "prod")
    assert not os.path.exists(paths.account_key) and os.listdir(paths.issued) == []


def test_names_dropped_from_the_config_leave_the_store_and_leave_removes_everything(tmp_path):
    n = Node(tmp_path, "n1")
    n.op("certd_configure", dict(ISSUER))
    n.op("certd_ensure", {"env": "prod"})
    n.store.install("x", "prod-other", "a.example.com", *n.core().archive.pair("a.example.com"), source="files")
    n.op("certd_configure", dict(ISSUER, hosts=["a.example.com"]))
    assert sorted(n.store.certs) == [("prod", "a.example.com"), ("prod-other", "a.example.com")]
    assert n.core().archive.hosts() == ["a.example.com"]
    assert n.op("certd_leave", {"env": "prod"}) == {"left": True}
    assert sorted(n.store.certs) == [("prod-other", "a.example.com")]  # another env's, not automatic
    assert not os.path.exists(paths_of(n.ctx, "prod").root) and not n.procs.cores
    assert n.op("certd_leave", {"env": "prod"}) == {"left": False}


def test_no_secret_or_key_in_results_or_events(tmp_path):
    n1 = Node(tmp_path, "n1")
    n2 = Node(tmp_path, "n2", issuer_node=n1)
    said = [n1.op("certd_configure", dict(ISSUER)), n1.op("certd_ensure", {"env": "prod", "force": True}),
            n2.op("certd_configure", dict(FOLLOWER)), n2.op("certd_pull", {"env": "prod"}),
            n1.op("certd_status", {"env": "prod"}), n2.op("certd_status", {"env": "prod"})]
    text = json.dumps(said) + n1.everything_said() + n2.everything_said()
    assert SECRET not in text and "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text
    assert said[1]["certs"] and said[3]["certs"]


def test_the_daemon_is_started_with_its_directory_only_never_the_secret(tmp_path, monkeypatch):
    from agent.certs import certd_proc
    from agent.certs.certd_paths import CertdPaths

    spawned = []
    monkeypatch.setattr("agent.mesh.procs.spawn", lambda argv, log, env=None: spawned.append((argv, log, env)) or 4242)
    monkeypatch.setattr("agent.mesh.procs.read_pid", lambda path, marker: None)
    paths = CertdPaths.of(str(tmp_path), "prod")
    paths.ensure()
    with open(paths.config, "w") as fh:
        json.dump(ISSUER, fh)
    certd_proc.CertdProcs().start(paths)
    (argv, log, env), = spawned
    assert argv[1:] == ["-m", "agent.certs.daemon", "--dir", paths.root] and log == paths.log
    assert SECRET not in json.dumps([argv, env]) and env["ORCH_CERTD_CODE"]
    assert open(paths.pid).read() == "4242\n"

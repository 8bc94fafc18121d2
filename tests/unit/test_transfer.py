"""Deploying without a registry: the wire contract, the agent's loopback registry set-up,
the SSH forward (over a fake transport), registry-to-registry copies (over in-memory
registries), the error mapping (a full disk names node and layer) and progress."""

from __future__ import annotations

import hashlib
import os
import json
import socket
import threading

import pytest

from agent.context import Context
from agent.fake import FakeEngine
from agent.wire.protocol import AgentError, BadRequest
from agent.wire.transfer import LOOPBACK_REGISTRY, TransferInfo, is_transferred, loopback_ref, split_ref
from orchestrator.app import transfer as A
from orchestrator.core import environments as envs
from orchestrator.core.progress import Progress
from orchestrator.io import transfer as X

DIGEST = "sha256:" + "a" * 64


# --------------------------------------------------------------------------- wire


def test_loopback_refs_round_trip_and_are_told_apart():
    ref = loopback_ref("shop/web", DIGEST)
    assert ref == f"127.0.0.1:47055/shop/web@{DIGEST}" and ref.startswith(LOOPBACK_REGISTRY)
    assert split_ref(ref) == ("shop/web", DIGEST)
    assert is_transferred(ref)
    assert not is_transferred(f"10.250.0.1:5000/shop/web@{DIGEST}") and not is_transferred("busybox@" + DIGEST)


def test_transfer_info_checks_its_fields():
    info = TransferInfo(running=True, started=True, free_bytes=10, stored_bytes=3, pid=42)
    assert TransferInfo.from_dict(info.to_dict()) == info
    with pytest.raises(BadRequest):
        TransferInfo.from_dict({"running": True, "extra": 1})
    with pytest.raises(BadRequest):
        TransferInfo.from_dict({"running": "yes"})


# --------------------------------------------------------------------------- the agent


def _ctx(tmp_path):
    engine = FakeEngine()
    return Context(engine_factory=lambda: engine, state_dir=str(tmp_path), engine_id=lambda: "ENG:1")


def test_transfer_start_without_docker_registry_names_the_package(tmp_path, monkeypatch):
    from agent import transfer as T

    monkeypatch.setattr(T.procs, "which", lambda program: None)
    monkeypatch.setattr(T, "answers", lambda timeout=1.0: False)
    with pytest.raises(AgentError) as err:
        T.op_transfer_start(_ctx(tmp_path), {})
    assert err.value.kind == "transfer" and "docker-registry" in err.value.message
    assert err.value.details["fix"] == "apt-get install docker-registry"
    with pytest.raises(BadRequest):
        T.op_transfer_start(_ctx(tmp_path), {"port": 1})


def test_the_registry_listens_on_loopback_only_with_storage_under_the_engines_data(tmp_path):
    from agent import transfer as T

    p = T.paths(_ctx(tmp_path))
    assert p.base == str(tmp_path / "engines" / "ENG-1" / "transfer")
    cfg = T.config(p, "s3cret")
    assert cfg["http"]["addr"] == "127.0.0.1:47055" and "tls" not in cfg["http"] and "auth" not in cfg
    assert cfg["storage"]["filesystem"]["rootdirectory"] == p.storage
    assert cfg["storage"]["maintenance"]["uploadpurging"]["enabled"] is True


def test_transfer_status_reports_a_stopped_registry(tmp_path):
    from agent import transfer as T

    out = TransferInfo.from_dict(T.op_transfer_status(_ctx(tmp_path), {}))
    assert not out.running and out.free_bytes > 0 and out.stored_bytes == 0


# --------------------------------------------------------------------------- environments


def test_registry_none_or_left_out_means_no_registry(tmp_path):
    d = tmp_path / "environments"
    d.mkdir()
    (d / "a.yaml").write_text("nodes:\n  - {name: n, host: h}\nregistry: none\n")
    (d / "b.yaml").write_text("nodes:\n  - {name: n, host: h}\n")
    (d / "c.yaml").write_text("nodes:\n  - {name: n, host: h}\nregistry: {mirror: 10.0.0.1:5001}\n")
    (d / "r.yaml").write_text("nodes:\n  - {name: n, host: h}\nregistry: {address: 10.0.0.1:5000}\n")
    for name in "abc":
        env = envs.load_environment(name, d)
        assert env.registry.address is None and A.registryless(env)
    assert not A.registryless(envs.load_environment("r", d))
    c = envs.load_environment("c", d)
    assert A.needs_transfer(c, {"web": loopback_ref("p/web", DIGEST)}, {})
    assert A.needs_transfer(c, {"web": "p/web:v1"}, {"web": "p/web:v1"})
    assert not A.needs_transfer(c, {"cache": "busybox@" + DIGEST}, {})


# --------------------------------------------------------------------------- errors


def test_a_full_disk_names_node_and_layer():
    layer = "sha256:" + "b" * 64
    body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "unknown error",
                                   "detail": {"DriverName": "filesystem", "Enclosed": {"Op": "write", "Err": 28}}}]})
    for text in (body, "write /var/lib/x: no space left on device"):
        err = X.upload_failure("prod-2", layer, 210_000_000, 500, text)
        assert isinstance(err, X.NodeOutOfDisk)
        assert "prod-2" in err.message and "bbbbbbbbbbbb" in err.message and "210.0 MB" in err.message
        assert err.details == {"node": "prod-2", "layer": layer, "size": 210_000_000}
        assert "prune" in err.fix
    other = X.upload_failure("prod-2", layer, 5, 502, "bad gateway")
    assert not isinstance(other, X.NodeOutOfDisk) and "HTTP 502" in other.message and "prod-2" in other.message
    assert "connection lost" in X.upload_failure("n", layer, 5, None, "").message


def test_room_is_checked_before_sending():
    small, big = ("sha256:" + "1" * 64, 10 << 20), ("sha256:" + "2" * 64, 300 << 20)
    X.check_room("n1", [small, big], free=1 << 30)
    with pytest.raises(X.NodeOutOfDisk) as err:
        X.check_room("n1", [small, big], free=200 << 20)
    assert "222222222222" in err.value.message and "n1" in err.value.message


# --------------------------------------------------------------------------- the forward


class Echo:
    """A fake paramiko Transport: each channel is a socket to an echo thread."""

    def __init__(self, fail=False):
        self.fail = fail
        self.opened = []

    def open_channel(self, kind, dest, src, timeout=None):
        if self.fail:
            raise EOFError("channel refused")
        self.opened.append((kind, dest))
        ours, theirs = socket.socketpair()

        def echo():
            while True:
                data = theirs.recv(65536)
                if not data:
                    theirs.close()
                    return
                theirs.sendall(data.upper())

        threading.Thread(target=echo, daemon=True).start()
        return ours


def test_a_forward_pipes_each_connection_through_its_own_channel_and_counts_bytes():
    transport = Echo()
    with X.Forward(transport, "dev-1") as fwd:
        assert fwd.address.startswith("127.0.0.1:")
        for word in (b"hello", b"again"):
            with socket.create_connection(("127.0.0.1", fwd.port), timeout=5) as c:
                c.sendall(word)
                assert c.recv(100) == word.upper()
        assert transport.opened == [("direct-tcpip", ("127.0.0.1", 47055))] * 2
        assert fwd.sent == 10 and fwd.received == 10


def test_a_forward_whose_channel_is_refused_closes_the_connection():
    with X.Forward(Echo(fail=True), "dev-1") as fwd:
        with socket.create_connection(("127.0.0.1", fwd.port), timeout=5) as c:
            c.sendall(b"GET /v2/ HTTP/1.1\r\n\r\n")
            c.settimeout(5)
            try:
                got = c.recv(100)
            except ConnectionResetError:
                got = b""
            assert got == b""  # closed or reset: the HTTP client fails at once, no hang


# --------------------------------------------------------------------------- registry to registry


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Resp:
    def __init__(self, data: bytes = b"", status: int = 200, text: str = ""):
        self.data, self.status_code, self.text = data, status, text

    def iter_content(self, n):
        for i in range(0, len(self.data), n):
            yield self.data[i:i + n]

    def close(self):
        pass


class MemRegistry:
    """The RegistryClient methods copy_image uses, over dicts."""

    def __init__(self, full_after: int | None = None):
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.uploads = 0
        self.full_after = full_after

    def manifest(self, repository, digest, accept=()):
        from orchestrator.io.registry_client import Manifest

        media, body = self.manifests[digest]
        return Manifest(media_type=media, digest=digest, body=body)

    def manifest_digest(self, repository, reference):
        return reference if reference in self.manifests else None

    def blob_exists(self, repository, digest):
        return digest in self.blobs

    def open_blob(self, repository, digest):
        return Resp(self.blobs[digest])

    def upload_blob(self, repository, digest, chunks):
        data = b"".join(chunks)
        self.uploads += 1
        if self.full_after is not None and self.uploads > self.full_after:
            return Resp(status=500, text='{"errors":[{"code":"UNKNOWN","detail":"write: no space left on device"}]}')
        assert _d(data) == digest
        self.blobs[digest] = data
        return None

    def put_manifest(self, repository, reference, media_type, body):
        self.manifests[_d(body)] = (media_type, body)
        return _d(body)


def _image(reg: MemRegistry, layers: list[bytes]) -> tuple[str, list[str]]:
    config = b'{"rootfs": {}}'
    reg.blobs[_d(config)] = config
    for data in layers:
        reg.blobs[_d(data)] = data
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
           "config": {"digest": _d(config), "size": len(config)},
           "layers": [{"digest": _d(x), "size": len(x)} for x in layers]}
    body = json.dumps(doc).encode()
    reg.manifests[_d(body)] = (doc["mediaType"], body)
    return _d(body), [_d(x) for x in layers]


def test_copy_sends_only_the_missing_blobs_and_keeps_the_digest():
    src, dst = MemRegistry(), MemRegistry()
    base, app = b"B" * 3_000_000, b"app v2"
    digest, (base_d, app_d) = _image(src, [base, app])
    dst.blobs[base_d] = base  # the node has the base layer from the last release
    seen = []
    moved = X.copy_image(src, dst, "shop/web", digest, "test-1", on_layer=lambda *a: seen.append(a), source="dev-1")
    assert dst.manifest_digest("shop/web", digest) == digest
    assert (moved.layers_sent, moved.layers_present) == (2, 1)  # the config and the app layer
    assert moved.bytes_sent == len(app) + len(b'{"rootfs": {}}') and moved.via == "dev-1"
    assert ("test-1", app_d, len(app), len(app)) in seen and not any(s[1] == base_d for s in seen)
    again = X.copy_image(src, dst, "shop/web", digest, "test-1")
    assert (again.bytes_sent, again.layers_sent) == (0, 0)


def test_a_node_filling_up_mid_copy_is_named_with_the_layer_and_nothing_is_half_there():
    src, dst = MemRegistry(), MemRegistry(full_after=1)
    digest, (first, second) = _image(src, [b"x" * 100, b"y" * 200])
    with pytest.raises(X.NodeOutOfDisk) as err:
        X.copy_image(src, dst, "shop/web", digest, "prod-2")
    assert "prod-2" in err.value.message and first.split(":")[1][:12] in err.value.message
    assert digest not in dst.manifests  # no manifest: no node can pull a half image
    with pytest.raises(X.NodeOutOfDisk):
        X.copy_image(src, MemRegistry(), "shop/web", digest, "prod-2", free_bytes=10)


# --------------------------------------------------------------------------- progress


def test_progress_is_per_node_and_layer_at_most_once_a_second(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(A.time, "monotonic", lambda: now[0])
    p = Progress()
    p.json = True
    meter = A.Meter(p, "web")
    meter("n1", DIGEST, 0, 4_000_000)
    for done in (1_000_000, 2_000_000):
        now[0] += 0.3
        meter("n1", DIGEST, done, 4_000_000)  # within the second: not shown
    meter("n2", DIGEST, 0, 4_000_000)  # another node: its own
    now[0] += 0.5
    meter("n1", DIGEST, 3_000_000, 4_000_000)
    meter("n1", DIGEST, 4_000_000, 4_000_000)  # the end always
    got = [(e["node"], e["bytes"], e["rate"]) for e in p.events if e["event"] == "transfer"]
    assert got == [("n1", 0, 0), ("n2", 0, 0), ("n1", 3_000_000, 2_727_273), ("n1", 4_000_000, 3_636_364)]
    assert all(e["layer"] == "a" * 12 and e["total"] == 4_000_000 for e in p.events)


def test_nodes_check_names_a_missing_docker_registry_without_a_registry():
    from orchestrator.app.nodes import NodeCheck, judge_transfer

    ok = NodeCheck("dev-1", "10.0.0.1")
    judge_transfer(ok, TransferInfo(running=True, free_bytes=5).to_dict())
    assert ok.ok and ok.transfer == {"installed": True, "running": True, "free_bytes": 5, "stored_bytes": 0}
    bad = NodeCheck("dev-1", "10.0.0.1")
    judge_transfer(bad, TransferInfo(running=False, installed=False).to_dict())
    assert not bad.ok and "docker-registry" in bad.problems[0]["message"]
    assert bad.problems[0]["fix"] == "apt-get install docker-registry"


def test_a_copy_to_many_reads_each_blob_once_and_a_full_node_does_not_stop_the_others():
    src = MemRegistry()
    base, app = b"B" * 2_000_000, b"app v3"
    digest, (base_d, app_d) = _image(src, [base, app])
    opened = []
    real_open = src.open_blob
    src.open_blob = lambda repo, d: (opened.append(d), real_open(repo, d))[1]
    has_base, empty, full = MemRegistry(), MemRegistry(), MemRegistry(full_after=0)
    has_base.blobs[base_d] = base
    moved, failed = X.copy_to_many(src, {"n1": has_base, "n2": empty, "n3": full}, "shop/web", digest,
                                   source="dev-1")
    assert sorted(moved) == ["n1", "n2"] and list(failed) == ["n3"] and isinstance(failed["n3"], X.NodeOutOfDisk)
    assert sorted(opened) == sorted([_d(b'{"rootfs": {}}'), base_d, app_d])  # once each, for all nodes
    assert moved["n1"].bytes_sent == len(app) + 14 and moved["n2"].bytes_sent == len(base) + len(app) + 14
    assert digest in empty.manifests and digest in has_base.manifests and digest not in full.manifests


def test_a_registry_string_other_than_none_is_bad_input_naming_the_line(tmp_path):
    from orchestrator.errors import InputError

    d = tmp_path / "environments"
    d.mkdir()
    (d / "a.yaml").write_text("nodes:\n  - {name: n, host: h}\nregistry: nothing\n")
    with pytest.raises(InputError) as err:
        envs.load_environment("a", d)
    text = str(err.value)
    assert "a.yaml:3" in text and "registry: none" in text and "'nothing'" in text


# --------------------------------------------------------------------------- deliver, as up / promote run it


class StubNode:
    def __init__(self, name):
        self.name = name
        self.conn = type("Conn", (), {"transport": object()})()
        self.calls = []

    def call(self, op, args=None, on_event=None, timeout=None):
        self.calls.append(op)
        return TransferInfo(running=True, free_bytes=1 << 30).to_dict()


def _wire(monkeypatch, registries):
    class FakeForward:
        def __init__(self, transport, node):
            self.node, self.address = node, f"127.0.0.1:{1000 + len(node)}"

        def close(self):
            pass

    monkeypatch.setattr(X, "Forward", FakeForward)
    monkeypatch.setattr(A, "_client", lambda fwd: registries[fwd.node])


def test_deliver_pushes_to_the_first_node_and_copies_from_it_to_the_others(monkeypatch):
    regs = {n: MemRegistry() for n in ("prod-1", "prod-2", "prod-3")}
    _wire(monkeypatch, regs)
    pushed = []

    def push(engine, ref, forward, repository, tag, on_layer):
        pushed.append((forward.node, ref))
        digest, _ = _image(regs[forward.node], [b"L" * 1000])
        return X.Moved(node=forward.node, digest=digest, bytes_sent=1000, layers_sent=1, via="engine")

    monkeypatch.setattr(X, "push_from_engine", push)
    nodes = {n: StubNode(n) for n in regs}
    env = type("Env", (), {"registry": type("R", (), {"address": None})()})()
    report = A.deliver(env, nodes, {"web": "shop/web:v1"}, Progress(), local={"web": "shop/web:v1"}, engine=object())
    pin = report.pins["web"]
    assert pushed == [("prod-1", "shop/web:v1")] and is_transferred(pin) and pin.startswith(LOOPBACK_REGISTRY + "/shop/web@")
    digest = split_ref(pin)[1]
    assert all(digest in r.manifests for r in regs.values())
    assert [(m.node, m.via) for m in report.moved] == [("prod-1", "engine"), ("prod-2", "prod-1"), ("prod-3", "prod-1")]
    assert all(n.calls == ["transfer_start"] for n in nodes.values())
    again = A.deliver(env, nodes, {"web": pin}, Progress())  # a rollback: every node has it
    assert again.moved == [] and again.pins == {}


def test_deliver_without_any_holder_and_no_source_says_how_to_get_it_back(monkeypatch):
    regs = {"dev-1": MemRegistry()}
    _wire(monkeypatch, regs)
    env = type("Env", (), {"registry": type("R", (), {"address": None})()})()
    with pytest.raises(X.TransferFailed) as err:
        A.deliver(env, {"dev-1": StubNode("dev-1")}, {"web": loopback_ref("shop/web", DIGEST)}, Progress())
    assert "no node holds shop/web@" in err.value.message and "orch up" in err.value.fix


def test_transfer_start_runs_the_registry_once_and_reuses_it(tmp_path, monkeypatch):
    from agent import transfer as T

    spawned, up = [], [False]
    monkeypatch.setattr(T.procs, "which", lambda program: "/usr/bin/docker-registry")
    monkeypatch.setattr(T.procs, "spawn", lambda argv, log: (spawned.append(argv), up.__setitem__(0, True), 4242)[2])
    monkeypatch.setattr(T.procs, "alive", lambda pid: True)
    monkeypatch.setattr(T, "answers", lambda timeout=1.0: up[0])
    monkeypatch.setattr(T, "running_pid", lambda p: 4242 if spawned else None)
    ctx = _ctx(tmp_path)
    first = TransferInfo.from_dict(T.op_transfer_start(ctx, {}))
    again = TransferInfo.from_dict(T.op_transfer_start(ctx, {}))
    assert (first.started, first.running, first.pid) == (True, True, 4242)
    assert (again.started, again.running) == (False, True) and len(spawned) == 1
    p = T.paths(ctx)
    assert spawned[0] == ["/usr/bin/docker-registry", "serve", p.config]
    assert oct(os.stat(p.config).st_mode & 0o777) == "0o600" and oct(os.stat(p.secret).st_mode & 0o777) == "0o600"
    assert json.load(open(p.config))["http"]["secret"] == open(p.secret).read()  # kept across restarts

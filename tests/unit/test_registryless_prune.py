"""`orch prune` without a registry: each node's loopback registry loses the manifests no
registry-less environment keeps (the plan as data, sparing what the node's containers
run), then the agent's garbage collection (read-only meanwhile) frees their blobs."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from agent.context import Context
from agent.fake import FakeEngine
from agent.wire.prune import ImageItem, NodeScan
from agent.wire.transfer import LOOPBACK_REGISTRY, GcResult, TransferInfo
from orchestrator.app import prune as AP
from orchestrator.app import transfer as AT
from orchestrator.core import prune as P
from orchestrator.core import releases as R
from orchestrator.core.progress import Progress
from tests.unit.fakes import digest


class FakeRegistry:
    """A loopback registry's manifests as prune reads and deletes them."""

    def __init__(self, refs=()):
        self.manifests = set(refs)  # (repository, digest)
        self.deleted = []

    def manifest_digest(self, repository, reference):
        return reference if (repository, reference) in self.manifests else None

    def delete_manifest(self, repository, digest_):
        self.deleted.append(f"{repository}@{digest_}")
        self.manifests.discard((repository, digest_))
        return True


def _release(env, rid, status, version):
    return R.Release(project="hello", env=env, id=rid, status=status, manifest={}, project_hash="",
                     services={"web": f"{LOOPBACK_REGISTRY}/hello/web@{digest(version)}"},
                     performer={}, created="", updated="")


def _histories():
    dev = R.History("hello", "xdev", [_release("xdev", i, R.LIVE if i == 3 else R.SUPERSEDED, f"v{i}")
                                      for i in (3, 2, 1)])
    far = R.History("hello", "xfar", [_release("xfar", 1, R.LIVE, "v1")])  # v1 kept by another environment
    return dev, far


def _scan(*running):
    return NodeScan(images=tuple(ImageItem(id="i" + r[-4:], refs=(r,), users=("hello-web-3",), size=1)
                                 for r in running))


def test_each_node_loses_only_what_no_environment_keeps_and_no_container_runs():
    dev, far = _histories()
    cands, _ = P.registry_candidates({"xdev": dev, "xfar": far}, LOOPBACK_REGISTRY, "hello", keep=1)
    assert cands == {("hello/web", digest("v2")): ("xdev#2",)}
    present = {"n1": [("hello/web", digest("v2"))], "n2": [("hello/web", digest("v2"))], "n3": []}
    v2 = f"{LOOPBACK_REGISTRY}/hello/web@{digest('v2')}"
    plans = P.plan_node_registries(cands, present, {"n1": _scan(), "n2": _scan(v2), "n3": _scan()})
    assert [(r.node, [m.ref for m in r.manifests]) for r in plans] == [
        ("n1", [f"hello/web@{digest('v2')}"]), ("n2", []), ("n3", [])]  # n2 still runs v2 (a stopped rollback)
    plan = P.PrunePlan("hello", "xdev", node_registries=plans)
    assert not plan.empty and plan.to_dict()["node_registries"][0]["address"] == LOOPBACK_REGISTRY


class Node:
    def __init__(self, name, gc):
        self.name, self.gc, self.calls = name, gc, []

    def call(self, op, args=None, **kw):
        self.calls.append(op)
        return self.gc.to_dict()


def _world(monkeypatch, tmp_path, regs, dev, far, unreadable=False):
    started = []

    @contextmanager
    def node_registries(nodes, start=True):
        started.append(start)
        yield {n: regs[n] for n in nodes}, {n: TransferInfo(running=True) for n in nodes}

    monkeypatch.setattr(AT, "node_registries", node_registries)
    envs = {"xdev": SimpleNamespace(name="xdev", registry=SimpleNamespace(address=None)),
            "xfar": SimpleNamespace(name="xfar", registry=SimpleNamespace(address="")),
            "reg": SimpleNamespace(name="reg", registry=SimpleNamespace(address="reg:5000"))}
    monkeypatch.setattr("orchestrator.core.environments.load_all", lambda d: envs)
    envs["xdev"].file = tmp_path / "xdev.yaml"
    ws = SimpleNamespace(environment=envs["xdev"], project=SimpleNamespace(name="hello"))
    read = []

    def reader(env, project):
        read.append(env.name)
        if unreadable:
            raise OSError("node down")
        return far

    return ws, reader, read, started


def test_dry_run_starts_nothing_and_prune_deletes_exactly_that_then_collects(monkeypatch, tmp_path):
    dev, far = _histories()
    v2 = ("hello/web", digest("v2"))
    regs = {"n1": FakeRegistry({v2, ("hello/web", digest("v3"))}), "n2": FakeRegistry()}
    ws, reader, read, started = _world(monkeypatch, tmp_path, regs, dev, far)
    nodes = {n: Node(n, GcResult(ran=True, bytes_before=5000, bytes_after=1200, read_only=True)) for n in regs}
    with AP_stack() as stack:
        _, dry, notes = AP._node_registry_plan(ws, dev, {}, 1, reader, nodes, True, stack, Progress())
    assert read == ["xfar"] and started == [False] and notes == []  # "reg" has a registry: not read
    assert [(r.node, [m.ref for m in r.manifests]) for r in dry] == [("n1", [f"{v2[0]}@{v2[1]}"]), ("n2", [])]

    with AP_stack() as stack:
        got, plans, _ = AP._node_registry_plan(ws, dev, {}, 1, reader, nodes, False, stack, Progress())
        assert plans == dry and started[-1] is True
        plan = P.PrunePlan("hello", "xdev", node_registries=tuple(plans))
        outcome = P.PruneOutcome(plan)
        AP._apply_node_registries(plan, nodes, got, outcome, Progress())
    assert regs["n1"].deleted == [f"{v2[0]}@{v2[1]}"] and regs["n2"].deleted == []
    assert nodes["n1"].calls == ["transfer_gc"] and nodes["n2"].calls == []  # nothing deleted there: no GC
    doc = outcome.to_dict()
    assert doc["bytes_freed"]["node_registries"] == {"n1": 3800}
    assert doc["node_registries"]["n1"]["deleted"] == [f"{v2[0]}@{v2[1]}"]
    assert doc["node_registries"]["n2"] == {"deleted": [], "gc": None}


def test_an_unreadable_environment_leaves_every_loopback_registry_alone(monkeypatch, tmp_path):
    dev, far = _histories()
    regs = {"n1": FakeRegistry({("hello/web", digest("v2"))})}
    ws, reader, _, started = _world(monkeypatch, tmp_path, regs, dev, far, unreadable=True)
    with AP_stack() as stack:
        _, plans, notes = AP._node_registry_plan(ws, dev, {}, 1, reader, {"n1": Node("n1", None)}, False, stack,
                                                 Progress())
    assert plans == [] and started == [] and "xfar could not be read" in notes[0]


def AP_stack():
    from contextlib import ExitStack

    return ExitStack()


# --------------------------------------------------------------------------- the agent's garbage collection


def _ctx(tmp_path):
    engine = FakeEngine()
    return Context(engine_factory=lambda: engine, state_dir=str(tmp_path), engine_id=lambda: "ENG:1")


def _fake_registry_program(tmp_path, code=0):
    """A docker-registry stand-in: `garbage-collect CONFIG` drops the blob named 'unused'."""
    prog = tmp_path / "docker-registry"
    prog.write_text("#!/bin/sh\n[ \"$1\" = garbage-collect ] || exit 9\n"
                    "grep -q '\"readonly\"' \"$2\" && exit 8\n"  # the stopped registry's config is the normal one
                    "find \"$(dirname \"$2\")/storage\" -name unused -delete\n"
                    f"echo 'blob eligible for deletion'; exit {code}\n")
    prog.chmod(prog.stat().st_mode | stat.S_IEXEC)
    return str(prog)


def _storage(ctx):
    from agent import transfer as T

    p = T.paths(ctx)
    blobs = os.path.join(p.storage, "docker", "registry", "v2", "blobs", "sha256", "ab")
    os.makedirs(blobs)
    for name, size in (("unused", 3000), ("kept", 500)):
        with open(os.path.join(blobs, name), "wb") as fh:
            fh.write(b"x" * size)
    return p


def test_gc_of_a_stopped_registry_frees_the_unreferenced_blobs(tmp_path, monkeypatch):
    from agent import transfer as T

    ctx = _ctx(tmp_path / "state")
    _storage(ctx)
    monkeypatch.setattr(T.procs, "which", lambda name: _fake_registry_program(tmp_path))
    res = GcResult.from_dict(T.op_transfer_gc(ctx, {}))
    assert (res.ran, res.bytes_before, res.bytes_after, res.freed, res.read_only) == (True, 3500, 500, 3000, False)


def test_gc_of_a_running_registry_serves_read_only_meanwhile_and_restarts_it_normally(tmp_path, monkeypatch):
    from agent import transfer as T

    ctx = _ctx(tmp_path / "state")
    _storage(ctx)
    prog = tmp_path / "docker-registry"
    prog.write_text("#!/bin/sh\nexit 0\n")
    prog.chmod(0o755)
    monkeypatch.setattr(T.procs, "which", lambda name: str(prog))
    pids = iter([41, 42])
    monkeypatch.setattr(T, "running_pid", lambda p: next(pids, None))
    events = []
    monkeypatch.setattr(T.procs, "stop", lambda found: events.append(("stop", found)))
    monkeypatch.setattr(T, "_start", lambda p, read_only=False: events.append(("start", read_only)))
    res = GcResult.from_dict(T.op_transfer_gc(ctx, {}))
    assert res.read_only and events == [("stop", [41]), ("start", True), ("stop", [42]), ("start", False)]


def test_a_failed_gc_restarts_the_registry_normally_and_says_so(tmp_path, monkeypatch):
    from agent import transfer as T
    from agent.wire.protocol import AgentError

    ctx = _ctx(tmp_path / "state")
    _storage(ctx)
    prog = tmp_path / "docker-registry"
    prog.write_text("#!/bin/sh\necho 'filesystem: permission denied'; exit 3\n")
    prog.chmod(0o755)
    monkeypatch.setattr(T.procs, "which", lambda name: str(prog))
    pids = iter([41, 42])
    monkeypatch.setattr(T, "running_pid", lambda p: next(pids, None))
    events = []
    monkeypatch.setattr(T.procs, "stop", lambda found: events.append(("stop", found)))
    monkeypatch.setattr(T, "_start", lambda p, read_only=False: events.append(("start", read_only)))
    with pytest.raises(AgentError) as err:
        T.op_transfer_gc(ctx, {})
    assert "garbage-collect failed (exit 3): filesystem: permission denied" in err.value.message
    assert events[-2:] == [("stop", [42]), ("start", False)]


def test_gc_without_storage_does_nothing(tmp_path):
    from agent import transfer as T

    assert GcResult.from_dict(T.op_transfer_gc(_ctx(tmp_path), {})) == GcResult(ran=False)

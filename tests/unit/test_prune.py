"""`orch prune`: the plan as data (core/prune.py), the agent's re-checks (agent/prune.py),
and the use case over the fake world (app/prune.py): --dry-run's plan is exactly what
prune then removes, on the nodes and in the registry, and the live release keeps running."""

import os

import pytest

from agent.wire.protocol import BadRequest
from agent.wire.prune import (ContainerItem, FilesItem, ImageItem, NodeScan, RemoveRequest, RemoveResult,
                              VolumeItem)
from orchestrator.app import prune as AP
from orchestrator.core import prune as P
from orchestrator.core import releases as R
from orchestrator.core.progress import Progress
from tests.unit.fakes import digest

LABELS = {"io.orch.project": "hello", "io.orch.env": "dev"}


class FakeRegistry:
    """The RegistryClient calls prune makes: HEAD a manifest, DELETE it by digest."""

    def __init__(self, refs=()):
        self.manifests = set(refs)  # (repository, digest)
        self.deleted = []

    def manifest_digest(self, repository, reference):
        return reference if (repository, reference) in self.manifests else None

    def delete_manifest(self, repository, digest_):
        self.deleted.append(f"{repository}@{digest_}")
        present = (repository, digest_) in self.manifests
        self.manifests.discard((repository, digest_))
        return present


# --------------------------------------------------------------------------- the wire


def test_scan_and_results_round_trip_through_the_wire():
    scan = NodeScan((ContainerItem("hello-api-1", "api", "exited", "2", "sha256:a"),),
                    (ImageItem("sha256:a", ("r/hello/api@sha256:1",), 10, ("hello-api-1",)),),
                    (VolumeItem("hello_data", "data", ()),), (FilesItem("hello/old", 5),), ("qa",))
    assert NodeScan.parse(scan.to_dict()) == scan
    res = RemoveResult({"containers": ("a",), "images": (), "volumes": (), "files": ("hello/x",)}, (), 7)
    assert RemoveResult.parse(res.to_dict()) == res
    req = RemoveRequest("hello", "dev", ("a",), ("sha256:b",), ("hello_data",), ("hello/x",), True)
    assert RemoveRequest.parse(req.to_dict()) == req


@pytest.mark.parametrize("args", [
    {"project": "hello", "env": "dev", "volumes": ["hello_data"]},  # volumes without allow_volumes
    {"project": "hello", "env": "dev", "files": ["other/api"]},  # another project's files
    {"project": "hello", "env": "dev", "files": ["hello/../x"]},
    {"project": "hello", "env": "dev", "networks": ["x"]},  # unknown key
    {"project": "hello"},  # no env
])
def test_remove_requests_outside_the_rules_are_refused(args):
    with pytest.raises(BadRequest):
        RemoveRequest.parse(args)


# --------------------------------------------------------------------------- the plan as data


def test_node_plan_keeps_what_the_live_release_counts_on():
    scan = NodeScan(
        containers=(ContainerItem("hello-api-1", "api", "running", "3", "sha256:live"),
                    ContainerItem("hello-api-1-prev", "api", "exited", "3", "sha256:old"),
                    ContainerItem("hello-job-1", "job", "exited", "3", "sha256:job"),  # one-shot of the live release
                    ContainerItem("hello-web-1", "web", "exited", "2", "sha256:web")),
        images=(ImageItem("sha256:live", ("r/hello/api@" + digest("3"),), 30, ("hello-api-1",)),
                ImageItem("sha256:old", ("r/hello/api@" + digest("2"),), 20, ("hello-api-1-prev",)),
                ImageItem("sha256:kept", ("r/hello/api@" + digest("k"),), 20, ()),
                ImageItem("sha256:web", ("r/hello/web@" + digest("w"),), 5, ("hello-web-1",)),
                ImageItem("sha256:other", ("r/hello/x@" + digest("x"),), 5, ("someone-else",))),
        volumes=(VolumeItem("hello_data", "data", ("hello-api-1",)), VolumeItem("hello_cache", "cache", ()),
                 VolumeItem("hello_logs", "logs", ("hello-web-1",)), VolumeItem("hello_db", "db", ())),
        files=(FilesItem("hello/api", 1), FilesItem("hello/web", 2), FilesItem("hello/gone", 3)))
    keep = {"r/hello/api@" + digest("k")}
    plan, notes = P.plan_node("d1", scan, keep=keep, live_release="3", declared_volumes={"db"})
    assert [(i.kind, i.name) for i in plan.items] == [
        ("containers", "hello-api-1-prev"), ("containers", "hello-web-1"),
        ("images", "sha256:old"), ("images", "sha256:web"),
        ("files", "hello/web"), ("files", "hello/gone")]
    assert notes == []
    with_volumes, _ = P.plan_node("d1", scan, keep=keep, live_release="3", declared_volumes={"db"}, volumes=True)
    assert with_volumes.of("volumes") == ("hello_cache", "hello_logs")  # not mounted (after the plan), not declared
    assert with_volumes.request("hello", "dev").allow_volumes and not plan.request("hello", "dev").allow_volumes
    shared = NodeScan(images=scan.images, other_envs=("qa",))
    none, notes = P.plan_node("d1", shared, keep=set(), live_release="3")
    assert none.of("images") == () and "qa" in notes[0]


def _release(env, rid, status, refs):
    return R.Release(project="hello", env=env, id=rid, status=status, services=refs, manifest={}, project_hash="",
                     performer={}, created="", updated="")


def test_registry_manifests_are_those_no_environment_keeps():
    ref = lambda v: f"reg.test:5000/hello/api@{digest(v)}"  # noqa: E731
    dev = R.History("hello", "dev", [_release("dev", i, R.LIVE if i == 3 else R.SUPERSEDED, {"api": ref(f"v{i}")})
                                     for i in (3, 2, 1)])
    prod = R.History("hello", "prod", [_release("prod", 1, R.LIVE, {"api": ref("v1")})])
    foreign = R.History("hello", "test", [_release("test", 1, R.SUPERSEDED, {"api": "reg.test:5000/other/api@"
                                                                             + digest("z"), "db": "busybox"})])
    cands, kept = P.registry_candidates({"dev": dev, "prod": prod, "test": foreign}, "reg.test:5000", "hello", keep=1)
    assert cands == {("hello/api", digest("v2")): ("dev#2",)}  # v1: prod's live; v3: dev's live
    assert ref("v1") in kept and ref("v3") in kept
    reg = P.plan_registry("reg.test:5000", cands, present=[], gc="lab")
    assert reg.manifests == () and reg.gc == "none"  # already gone: nothing to delete, no GC


# --------------------------------------------------------------------------- the use case


def _setup(world):
    """Three releases on dev, each version's images on d1; a stopped container of an old
    release, files of a service that is gone, an image without orch's labels."""
    node = world.nodes["d1"]
    refs = {}
    for v in (1, 2, 3):
        world.version = v
        for svc, ref in world.pins(world.workspaces("dev")[0].project).items():
            refs[(svc, v)] = ref
            node.engine.add_image(ref, {"io.orch.project": "hello"})
        world.up()
    node.engine.add_foreign("hello-old-1", dict(LABELS, **{"io.orch.service": "old", "io.orch.release": "1"}),
                            state="exited")
    node.engine.add_foreign("not-ours", {}, state="exited")
    node.engine.add_image("busybox@" + digest("bb"), {})
    files = os.path.join(str(node.state_dir), "engines", "FAKE-d1", "files", "hello", "old", "secrets")
    os.makedirs(files)
    with open(os.path.join(files, "token.1"), "w") as fh:
        fh.write("x" * 10)
    registry = FakeRegistry({tuple(r.split("/", 1)[1].split("@")) for r in refs.values()})
    return node, refs, registry


def _prune(world, registry, **kw):
    ws = world.workspaces("dev")[0]
    return AP.prune(ws, keep=1, progress=Progress(), seams=world.seams(), registry=registry,
                    history_reader=lambda env, project: world.history(env.name), **kw)


def test_dry_run_lists_exactly_what_prune_removes_and_the_live_release_keeps_running(world):
    node, refs, registry = _setup(world)
    running = world.running("dev")
    dry = _prune(world, registry, dry_run=True)
    assert dry.removed == {} and registry.deleted == [] and world.nodes["d1"].ops("prune_remove") == []
    planned = P.plan_items(dry.plan)
    assert planned == {"d1": {
        "containers": ["hello-old-1"],
        "images": sorted(node.engine._image_id(refs[(s, v)]) for s in ("api", "web") for v in (1, 2)),
        "volumes": [], "files": ["hello/old"]}}
    assert [m.ref for m in dry.plan.registry.manifests] == sorted(
        refs[(s, v)].split("/", 1)[1] for s in ("api", "web") for v in (1, 2))
    assert dry.plan.registry.gc == "command" and "garbage-collect" in dry.plan.registry.gc_command

    done = _prune(world, registry)
    assert done.plan == dry.plan  # the plan it carried out is the one --dry-run printed
    assert done.removed == planned and done.refused == {}
    assert done.deleted == [m.ref for m in dry.plan.registry.manifests] == registry.deleted
    assert done.node_bytes["d1"] == 4 * 1000 + 10 and done.registry_bytes is None  # not the lab's: unknown
    assert world.running("dev") == running  # the live release keeps running
    assert {refs[(s, 3)] for s in ("api", "web")} <= node.engine.images
    assert node.engine.container("not-ours") is not None and "busybox@" + digest("bb") in node.engine.images
    again = _prune(world, registry, dry_run=True)
    assert again.plan.empty
    assert done.to_dict()["bytes_freed"] == {"nodes": {"d1": 4010}, "registry": "unknown"}


def test_the_registry_is_left_alone_when_another_environment_cannot_be_read(world):
    _, _, registry = _setup(world)

    def unreadable(env, project):
        raise OSError("no route to host")

    ws = world.workspaces("dev")[0]
    res = AP.prune(ws, keep=1, progress=Progress(), seams=world.seams(), registry=registry,
                   history_reader=unreadable)
    assert res.plan.registry.manifests == () and "could not be read" in res.plan.registry.skipped
    assert registry.deleted == [] and res.removed["d1"]["images"]  # the nodes are still pruned


def test_an_unreadable_registry_is_left_alone_and_the_nodes_still_pruned(world):
    from orchestrator.io.registry_client import RegistryUnavailable

    _, _, registry = _setup(world)

    def down(repository, reference):
        raise RegistryUnavailable("registry reg.test:5000 is not answering", registry="reg.test:5000")

    registry.manifest_digest = down
    res = _prune(world, registry)
    assert res.plan.registry.manifests == () and "could not be read" in res.plan.registry.skipped
    assert registry.deleted == [] and res.removed["d1"]["images"]


def test_the_lab_registry_is_garbage_collected_after_deleting(world, monkeypatch):
    _, _, registry = _setup(world)
    monkeypatch.setattr(AP, "gc_for", lambda address: ("lab", "docker-registry garbage-collect cfg", None))
    collected = []
    res = _prune(world, registry, collect=lambda reg: collected.append(reg.address) or (5000, 1200))
    assert collected == ["reg.test:5000"] and res.gc_ran and res.registry_bytes == 3800


def test_the_agent_re_checks_every_item(world):
    node, refs, _ = _setup(world)
    live = next(r["info"] for r in node.engine.records.values() if r["info"]["state"] == "running")
    used = live["image_id"]
    unlabelled = node.engine._image_id("busybox@" + digest("bb"))
    service = live["labels"]["io.orch.service"]
    res = RemoveResult.parse(node.call("prune_remove", {
        "project": "hello", "env": "dev", "containers": [live["name"], "not-ours"],
        "images": [used, unlabelled], "files": ["hello/" + service]}))
    assert all(v == () for v in res.removed.values()) and res.reclaimed == 0
    reasons = {(r.kind, r.name): r.reason for r in res.refused}
    assert reasons[("containers", live["name"])] == "it is running"
    assert "not a container" in reasons[("containers", "not-ours")]
    assert "uses it" in reasons[("images", used)] and "no image of hello" in reasons[("images", unlabelled)]
    assert "has a container" in reasons[("files", "hello/" + service)]
    node.engine.create_volume("qa_data", "local", {}, {"io.orch.project": "hello", "io.orch.env": "qa"})
    res = RemoveResult.parse(node.call("prune_remove", {
        "project": "hello", "env": "dev", "images": [node.engine._image_id(refs[("api", 1)])],
        "volumes": ["qa_data", "nope"], "allow_volumes": True}))
    reasons = {(r.kind, r.name): r.reason for r in res.refused}
    assert "environment qa" in reasons[("volumes", "qa_data")] and "not a volume" in reasons[("volumes", "nope")]
    assert "environment qa also runs hello" in reasons[("images", node.engine._image_id(refs[("api", 1)]))]
    assert node.engine.container(live["name"]).state == "running" and "qa_data" in node.engine.vols
    assert refs[("api", 1)] in node.engine.images


def test_the_lab_registry_is_found_by_its_address(tmp_path):
    from orchestrator.lab import registry as lab_registry
    from orchestrator.lab.model import LabPaths, LabSpec, NodeSpec
    import json

    spec = LabSpec("orch-lab", "10.250.0.0/24", (NodeSpec("dev-1", "dev", 1, "10.250.0.11", "172.28.11.1/24"),))
    paths = LabPaths.for_name("orch-lab", tmp_path)
    assert lab_registry.for_address(spec.registry, tmp_path) is None
    paths.state.mkdir(parents=True)
    paths.spec_file.write_text(json.dumps(spec.to_json()))
    assert lab_registry.for_address(spec.registry, tmp_path) is None  # no registry config: not set up
    paths.registry_config.parent.mkdir(parents=True, exist_ok=True)
    paths.registry_config.write_text("version: 0.1\n")
    found = lab_registry.for_address(spec.registry, tmp_path)
    assert found is not None and found.name == "orch-lab"
    assert lab_registry.for_address("10.9.9.9:5000", tmp_path) is None
    assert lab_registry.gc_argv(paths.registry_config)[:2] == ["docker-registry", "garbage-collect"]


def test_half_written_file_transfers_whose_writer_is_gone_are_removed(world):
    node, refs, registry = _setup(world)
    live = next(r["info"] for r in node.engine.records.values() if r["info"]["state"] == "running")
    service = live["labels"]["io.orch.service"]
    folder = os.path.join(str(node.state_dir), "engines", "FAKE-d1", "files", "hello", service, "secrets")
    os.makedirs(folder, exist_ok=True)
    gone, running = "token.abc.tmp-4194399", f"token.abc.tmp-{os.getpid()}"  # beyond pid_max; this process
    for name in (gone, running, "token.abc"):
        with open(os.path.join(folder, name), "w") as fh:
            fh.write("12345")
    dry = _prune(world, registry, dry_run=True)
    planned = P.plan_items(dry.plan)["d1"]["files"]
    assert planned == ["hello/old", f"hello/{service}/secrets/{gone}"]  # not the running writer's, nor the file
    done = _prune(world, registry)
    assert done.removed["d1"]["files"] == planned
    assert sorted(os.listdir(folder)) == ["token.abc", running]
    res = RemoveResult.parse(node.call("prune_remove", {"project": "hello", "env": "dev",
                                                        "files": [f"hello/{service}/secrets/{running}"]}))
    assert "still runs" in res.refused[0].reason and os.path.exists(os.path.join(folder, running))
    for bad in (f"hello/{service}/secrets/token.abc", f"hello/{service}/../x.tmp-1", f"hello/{service}/other/x.tmp-1"):
        with pytest.raises(BadRequest):
            RemoveRequest.parse({"project": "hello", "env": "dev", "files": [bad]})

"""save / load / promote --from-archive for environments without a registry: the images
read from a node's loopback registry, loaded into every node's, named 127.0.0.1:PORT/...
by the same digests (app.archive with fake node registries)."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from agent.wire.transfer import LOOPBACK_REGISTRY, TransferInfo, loopback_ref
from orchestrator.app import archive as AR
from orchestrator.app import transfer as AT
from orchestrator.core.progress import Progress
from orchestrator.core.releases import Release
from orchestrator.errors import EXIT_BAD_INPUT, InputError, OrchError
from orchestrator.io import archive as A
from tests.unit.fakes import FakeBlobRegistry


def _env(name, address=None):
    return SimpleNamespace(name=name, registry=SimpleNamespace(address=address))


class Node:
    closed = 0

    def close(self):
        Node.closed += 1


@pytest.fixture
def free():
    """node -> its free bytes (default 1 GB)."""
    return {}


@pytest.fixture
def world(monkeypatch, free):
    """Two environments' nodes, each with its own loopback registry (a FakeBlobRegistry)."""
    regs = {env: {n: FakeBlobRegistry(LOOPBACK_REGISTRY) for n in nodes}
            for env, nodes in {"edge": ("e-1", "e-2"), "far": ("f-1", "f-2")}.items()}
    opened = []

    @contextmanager
    def node_registries(nodes):
        env = next(e for e, r in regs.items() if set(r) == set(nodes))
        opened.append(env)
        yield regs[env], {n: TransferInfo(running=True, free_bytes=free.get(n, 1 << 30)) for n in nodes}

    monkeypatch.setattr(AT, "node_registries", node_registries)
    connector = lambda env, progress, project: {n: Node() for n in regs[env.name]}  # noqa: E731
    return regs, connector, opened


def _live(regs):
    """edge's live release, its image only on e-2 (e-1 lost it)."""
    digest = regs["edge"]["e-2"].add_image("shop/web", [b"base" * 100, b"app" * 100])
    return Release.from_record({"project": "shop", "env": "edge", "id": 3, "status": "live",
                                "services": {"web": loopback_ref("shop/web", digest)},
                                "extra": {"base": {"name": "shop"}}}), digest


def test_save_reads_from_the_node_that_holds_the_image_and_load_fills_every_node(world, tmp_path, monkeypatch):
    regs, connector, opened = world
    live, digest = _live(regs)
    monkeypatch.setattr(AR, "live_release", lambda *a: live)
    path = tmp_path / "release.tar"
    saved = AR.save("shop", _env("edge"), path, Progress(), connector=connector)
    assert saved.images["web"]["digest"] == digest and A.read(path).source_registry == LOOPBACK_REGISTRY
    assert not regs["edge"]["e-1"].manifests  # a read: nothing written to the source

    far = regs["far"]
    base = "sha256:" + hashlib.sha256(b"base" * 100).hexdigest()
    far["f-2"].put_blob("shop/web", base, b"base" * 100)  # f-2 has one layer already: not sent again
    res = AR.load(path, _env("far"), Progress(), connector=connector)
    assert res.registry == LOOPBACK_REGISTRY
    assert [x.ref for x in res.loaded] == [loopback_ref("shop/web", digest)]
    assert all(("shop/web", digest) in r.manifests for r in far.values())
    doc = res.to_json()
    assert doc["nodes"]["f-1"]["web"] == {"blobs_pushed": 3, "blobs_present": 0}
    assert doc["nodes"]["f-2"]["web"] == {"blobs_pushed": 2, "blobs_present": 1}
    assert doc["images"]["web"]["blobs_pushed"] == 5 and opened == ["edge", "far"]

    _, source = AR.archived_source(path, _env("far"))
    assert source.services == {"web": loopback_ref("shop/web", digest)} and source.ref == live.ref


def test_a_registry_archive_loads_into_a_registryless_environment_under_loopback_names(world, tmp_path):
    regs, connector, _ = world
    src = FakeBlobRegistry("reg.dev:5000")
    digest = src.add_image("shop/api", [b"x" * 64])
    record = {"project": "shop", "env": "dev", "id": 1, "status": "live",
              "services": {"api": f"reg.dev:5000/shop/api@{digest}"}, "extra": {"base": {"name": "shop"}}}
    path = tmp_path / "r.tar"
    A.save(path, record, "reg.dev:5000", lambda p: src)
    res = AR.load(path, _env("far"), Progress(), connector=connector)
    assert res.loaded[0].ref == f"{LOOPBACK_REGISTRY}/shop/api@{digest}"
    assert AR.archived_source(path, _env("far"))[1].services["api"] == f"{LOOPBACK_REGISTRY}/shop/api@{digest}"
    assert AR.archived_source(path, _env("prod", "reg.prod:5000"))[1].services["api"] == \
        f"reg.prod:5000/shop/api@{digest}"


def test_save_names_an_image_no_node_holds_any_more(world, tmp_path, monkeypatch):
    regs, connector, _ = world
    live, digest = _live(regs)
    regs["edge"]["e-2"].manifests.clear()
    monkeypatch.setattr(AR, "live_release", lambda *a: live)
    with pytest.raises(OrchError) as err:
        AR.save("shop", _env("edge"), tmp_path / "x.tar", Progress(), connector=connector)
    assert "no node of edge holds shop/web@" + digest in err.value.message
    assert not (tmp_path / "x.tar").exists() and not list(tmp_path.iterdir())


def test_a_truncated_archive_touches_no_node(world, tmp_path, monkeypatch):
    regs, connector, opened = world
    live, _ = _live(regs)
    monkeypatch.setattr(AR, "live_release", lambda *a: live)
    path = tmp_path / "release.tar"
    AR.save("shop", _env("edge"), path, Progress(), connector=connector)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        AR.load(path, _env("far"), Progress(), connector=connector)
    assert err.value.exit_code == EXIT_BAD_INPUT and opened == ["edge"]
    assert not any(r.manifests or r.blobs for r in regs["far"].values())


def test_a_node_that_fails_is_named(world, tmp_path, monkeypatch):
    regs, connector, _ = world
    live, _ = _live(regs)
    monkeypatch.setattr(AR, "live_release", lambda *a: live)
    path = tmp_path / "release.tar"
    AR.save("shop", _env("edge"), path, Progress(), connector=connector)

    def full(repo, digest, data):
        raise OrchError("HTTP 500: no space left on device")

    monkeypatch.setattr(regs["far"]["f-2"], "put_blob", full)
    with pytest.raises(OrchError) as err:
        AR.load(path, _env("far"), Progress(), connector=connector)
    assert err.value.message.startswith("f-2: loading the archive") and "no space left" in err.value.message
    assert regs["far"]["f-1"].manifests  # the other node got it: a re-run sends f-2 only what it lacks


def test_a_node_without_room_for_the_archive_is_named_before_anything_is_sent(world, free, tmp_path, monkeypatch):
    regs, connector, _ = world
    live, _ = _live(regs)
    monkeypatch.setattr(AR, "live_release", lambda *a: live)
    path = tmp_path / "release.tar"
    AR.save("shop", _env("edge"), path, Progress(), connector=connector)
    free["f-1"] = 10 << 20  # less than the 64 MB margin
    with pytest.raises(OrchError) as err:
        AR.load(path, _env("far"), Progress(), connector=connector)
    assert err.value.message.startswith("f-1: loading the archive") and "ran out of disk space" in err.value.message
    assert not regs["far"]["f-1"].blobs

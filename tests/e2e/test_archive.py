"""Save / load for air-gapped sites, on the lab with a copy of examples/hello:

up dev -> `orch image save --env dev -o release.tar` -> the images' manifests deleted from
the registry (as if the target site had never seen them) -> bad archives (missing, foreign,
truncated, corrupt) refused with exit 2 and nothing pushed -> `orch image load release.tar
--env test` pushes them back by digest -> `orch promote APP --to test --from-archive
release.tar` deploys them: the same digests as dev, lineage "test #1 <- dev #1".
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from .hello_app import Hello
from .helpers import last_json

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def app(lab, tmp_path_factory):
    a = Hello(tmp_path_factory.mktemp("archive"), "arch")
    yield a
    a.down_everywhere()
    a.remove_local_images()


@pytest.fixture(scope="module")
def dev(app):
    final, _ = app.up("dev")
    assert final["status"] == "ok" and final["release_id"] == 1
    return final


@pytest.fixture(scope="module")
def saved(app, dev):
    path = app.dir / "release.tar"
    cp = app.run("image", "save", "--env", "dev", "-p", app.name, "-o", str(path), "--json")
    return path, last_json(cp.stdout)


def _registry(app):
    from orchestrator.core.environments import load_environment
    from orchestrator.io.images import registry_client

    return registry_client(load_environment("test", None, app.dir))


def _manifests(app, images: dict) -> dict:
    client = _registry(app)
    return {svc: client.manifest_digest(ref.split("/", 1)[1].split("@")[0], ref.split("@")[1])
            for svc, ref in images.items()}


def test_save_writes_the_live_release_and_its_images(app, dev, saved):
    path, final = saved
    assert final["status"] == "ok" and final["release"] == {"env": "dev", "id": 1}
    assert {s: i["ref"] for s, i in final["images"].items()} == dev["images"]
    with tarfile.open(path) as tar:
        index = json.load(tar.extractfile("orch-archive.json"))
        names = tar.getnames()
    assert index["release"]["services"] == dev["images"] and index["release"]["extra"]["base"]
    for img in index["images"].values():
        assert f"blobs/sha256/{img['digest'].split(':')[1]}" in names


def test_bad_archives_are_refused_with_exit_2_and_nothing_pushed(app, dev, saved):
    path, _ = saved
    client = _registry(app)
    for svc, ref in dev["images"].items():  # the target "site" does not have them
        assert client.delete_manifest(ref.split("/", 1)[1].split("@")[0], ref.split("@")[1])
    assert set(_manifests(app, dev["images"]).values()) == {None}

    data = path.read_bytes()
    truncated = app.dir / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = app.dir / "foreign.tar"
    with tarfile.open(foreign, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    corrupt = app.dir / "corrupt.tar"
    with tarfile.open(path) as src, tarfile.open(corrupt, "w") as dst:
        first = True
        for m in src.getmembers():
            body = src.extractfile(m).read()
            if first and m.name.startswith("blobs/") and len(body) > 100:
                body = body[:50] + bytes([body[50] ^ 1]) + body[51:]
                first = False
            dst.addfile(m, io.BytesIO(body))
    for bad, words in ((app.dir / "missing.tar", "no such archive"), (foreign, "not an orch release archive"),
                       (truncated, "truncated"), (corrupt, "corrupt")):
        cp = app.run("image", "load", str(bad), "--env", "test", "--json", check=False)
        assert cp.returncode == 2, (bad, cp.stdout, cp.stderr)
        assert words in cp.stderr and "nothing was changed" in cp.stderr, (bad, cp.stderr)
    assert set(_manifests(app, dev["images"]).values()) == {None}


def test_load_pushes_by_digest_and_promote_from_archive_deploys_with_lineage(app, dev, saved):
    path, _ = saved
    cp = app.run("image", "load", str(path), "--env", "test", "--json")
    loaded = last_json(cp.stdout)
    assert loaded["status"] == "ok" and loaded["release"] == {"env": "dev", "id": 1}
    assert {s: i["ref"] for s, i in loaded["images"].items()} == dev["images"]
    assert _manifests(app, dev["images"]) == {s: r.split("@")[1] for s, r in dev["images"].items()}

    final, _ = app.promote("test", "--from-archive", str(path))
    assert final["status"] == "ok" and final["source"] == {"env": "dev", "id": 1}
    assert final["images"] == dev["images"] and final["lineage"] == "test #1 <- dev #1"
    assert app.digests("test") == app.digests("dev")
    (rel,) = app.history("test")["releases"]
    assert rel["lineage_text"] == "test #1 <- dev #1" and rel["command"] == "promote"

    again, _ = app.promote("test", "--from-archive", str(path))
    assert again["status"] == "ok" and not again["new_release"]

"""orchestrator.io.archive: a release archive written from a (fake) registry, read back and
verified whole (missing, foreign, truncated, corrupt: InputError, exit 2), pushed into
another registry by digest and read back."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from orchestrator.errors import EXIT_BAD_INPUT, InputError, OrchError
from orchestrator.io import archive as A
from orchestrator.io.registry_client import parse_reference
from tests.unit.fakes import FakeBlobRegistry

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


SRC = "reg.dev:5000"


@pytest.fixture
def saved(tmp_path):
    reg = FakeBlobRegistry(SRC)
    api = reg.add_image("shop/api", [b"layer-a" * 50, b"layer-b" * 50])
    web = reg.add_image("shop/web", [b"layer-a" * 50, b"layer-c" * 50])  # a shared layer, stored once
    record = {"project": "shop", "env": "dev", "id": 4, "status": "live",
              "services": {"api": f"{SRC}/shop/api@{api}", "web": f"{SRC}/shop/web@{web}",
                           "db": "docker.io/library/postgres@" + sha(b"elsewhere")},
              "extra": {"base": {"name": "shop"}}}
    path = tmp_path / "release.tar"

    class Other(FakeBlobRegistry):  # docker.io: an image the archive carries too, not pushed on load
        pass

    other = Other("docker.io")
    pg = other.add_image("library/postgres", [b"pg" * 40])
    record["services"]["db"] = f"docker.io/library/postgres@{pg}"
    seen = []
    index = A.save(path, record, SRC, lambda p: reg if p.registry == SRC else other,
                   on_image=lambda svc, ref, size: seen.append(svc))
    return path, record, index, seen


def test_save_writes_the_record_and_every_blob_once(saved):
    path, record, index, seen = saved
    assert seen == ["api", "db", "web"] and not path.with_name(".release.tar.part").exists()
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names.count("blobs/" + sha(b"layer-a" * 50).replace(":", "/")) == 1
    arch = A.read(path)
    assert arch.release == record and arch.source_registry == SRC
    assert {s: i["digest"] for s, i in arch.images.items()} == {
        s: parse_reference(r).digest for s, r in record["services"].items()}


def test_load_pushes_the_source_registry_images_by_digest_and_reads_them_back(saved):
    path, record, _, _ = saved
    target = FakeBlobRegistry("reg.prod:5000")
    target.blobs[("shop/api", sha(b"layer-a" * 50))] = b"layer-a" * 50  # already there: not sent again
    loaded = A.push(A.read(path), target)
    assert [x.service for x in loaded] == ["api", "web"]  # db lives in docker.io: not pushed
    api = next(x for x in loaded if x.service == "api")
    assert api.ref == "reg.prod:5000/shop/api@" + parse_reference(record["services"]["api"]).digest
    assert (api.blobs_pushed, api.blobs_present) == (2, 1)
    manifests = [w for w in target.writes if w[0] == "manifest"]
    assert manifests == [("manifest", "shop/api", api.digest), ("manifest", "shop/web", loaded[1].digest)]
    assert target.writes.index(manifests[0]) > target.writes.index(("blob", "shop/api", sha(b"layer-b" * 50)))


def test_load_refuses_a_registry_that_stores_another_digest(saved):
    path, _, _, _ = saved

    class Rewriting(FakeBlobRegistry):
        def put_manifest(self, repo, ref, media, body):
            return sha(body + b" ")

    with pytest.raises(OrchError, match="stored manifest"):
        A.push(A.read(path), Rewriting("reg.prod:5000"))


def _bad(path):
    with pytest.raises(InputError) as exc:
        A.read(path)
    assert exc.value.exit_code == EXIT_BAD_INPUT and "nothing was changed" in exc.value.render()
    return exc.value.render()


def test_missing_foreign_truncated_and_corrupt_archives_are_bad_input(saved, tmp_path):
    path, _, _, _ = saved
    assert "no such archive" in _bad(tmp_path / "nope.tar")
    (tmp_path / "text.tar").write_text("hello\n")
    assert "not a readable orch archive" in _bad(tmp_path / "text.tar")
    with tarfile.open(tmp_path / "foreign.tar", "w") as tar:
        info = tarfile.TarInfo("x.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert "not an orch release archive" in _bad(tmp_path / "foreign.tar")
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        index_at = tar.getmember(A.INDEX).offset_data
    for cut, words in ((len(data) // 3, "truncated"), (index_at + 10, "truncated"),
                       (index_at - 512, "not an orch release archive")):
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        assert words in _bad(tmp_path / "cut.tar")
    with tarfile.open(path) as src, tarfile.open(tmp_path / "corrupt.tar", "w") as dst:
        for m in src.getmembers():
            body = src.extractfile(m).read()
            if m.name.endswith(sha(b"layer-c" * 50).split(":")[1]):
                body = body[:-1] + b"X"
            dst.addfile(m, io.BytesIO(body))
    assert "corrupt" in _bad(tmp_path / "corrupt.tar")
    with tarfile.open(path) as src, tarfile.open(tmp_path / "short.tar", "w") as dst:  # a blob left out
        for m in src.getmembers():
            if not m.name.endswith(sha(b"layer-c" * 50).split(":")[1]):
                dst.addfile(m, src.extractfile(m))
    assert "is missing" in _bad(tmp_path / "short.tar")


def test_target_ref_renames_only_the_source_registry():
    img = {"registry": SRC, "repository": "shop/api", "digest": "sha256:" + "a" * 64, "ref": "x"}
    assert A.target_ref(img, SRC, "reg.prod:5000") == "reg.prod:5000/shop/api@sha256:" + "a" * 64
    assert A.target_ref(dict(img, registry="docker.io"), SRC, "reg.prod:5000") == "x"


def test_promote_from_archive_deploys_its_digests_with_lineage(cli_world, tmp_path):
    """dev's live release archived (its images made up in a fake registry), then promoted into
    test from the file: the archive's digests, lineage "test #1 <- dev #1"; again: a no-op."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    def cli(*args):
        r = CliRunner().invoke(app, list(args), catch_exceptions=False)
        return r, (json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {})

    assert cli("up", "--env", "dev", "--json")[0].exit_code == 0
    record = cli_world.history("dev").live().to_record()
    reg = FakeBlobRegistry("reg.test:5000")
    record["services"] = {svc: f"reg.test:5000/hello/{svc}@" + reg.add_image(f"hello/{svc}", [svc.encode() * 99])
                          for svc in record["services"]}
    for node in cli_world.nodes.values():
        for ref in record["services"].values():
            node.engine.registry.add(ref)
    path = tmp_path / "release.tar"
    A.save(path, record, "reg.test:5000", lambda p: reg)

    r, doc = cli("promote", "hello", "--to", "test", "--from-archive", str(path), "--json")
    assert r.exit_code == 0, r.output
    assert doc["source"] == {"env": "dev", "id": 1} and doc["lineage"] == "test #1 <- dev #1"
    assert doc["images"] == record["services"]
    live = cli_world.history("test").live()
    assert live.services == record["services"] and live.command == "promote" and live.extra["base"]
    r, doc = cli("promote", "hello", "--to", "test", "--from-archive", str(path), "--json")
    assert r.exit_code == 0 and not doc["new_release"]

    r, _ = cli("promote", "hello", "--to", "test", "--from", "dev", "--from-archive", str(path), "--json")
    assert r.exit_code == 2 and "two sources" in r.stderr
    r, _ = cli("promote", "other", "--to", "test", "--from-archive", str(path), "--json")
    assert r.exit_code == 2 and "not of other" in r.stderr
    r, _ = cli("promote", "hello", "--to", "test", "--from-archive", str(tmp_path / "nope.tar"), "--json")
    assert r.exit_code == 2 and "no such archive" in r.stderr

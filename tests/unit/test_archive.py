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
from orchestrator.io.registry_client import Manifest, parse_reference

MEDIA = "application/vnd.docker.distribution.manifest.v2+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """Blobs and manifests by digest, per repository; records every write."""

    def __init__(self, address: str):
        self.address = address
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.writes: list[tuple[str, str, str]] = []

    def add_image(self, repo: str, layers: list[bytes]) -> str:
        config = json.dumps({"rootfs": {"diff_ids": [sha(x) for x in layers]}}).encode()
        for b in [config, *layers]:
            self.blobs[(repo, sha(b))] = b
        body = json.dumps({"schemaVersion": 2, "mediaType": MEDIA,
                           "config": {"digest": sha(config), "size": len(config)},
                           "layers": [{"digest": sha(x), "size": len(x)} for x in layers]}).encode()
        self.manifests[(repo, sha(body))] = (MEDIA, body)
        return sha(body)

    def manifest(self, repo, digest, accept=()):
        media, body = self.manifests[(repo, digest)]
        return Manifest(media, digest, body)

    def blob(self, repo, digest):
        return self.blobs[(repo, digest)]

    def put_blob(self, repo, digest, data):
        assert sha(data) == digest
        if (repo, digest) in self.blobs:
            return False
        self.blobs[(repo, digest)] = data
        self.writes.append(("blob", repo, digest))
        return True

    def put_manifest(self, repo, ref, media, body):
        self.manifests[(repo, ref)] = (media, body)
        self.writes.append(("manifest", repo, ref))
        return sha(body)

    def manifest_digest(self, repo, ref):
        return ref if (repo, ref) in self.manifests else None


SRC = "reg.dev:5000"


@pytest.fixture
def saved(tmp_path):
    reg = FakeRegistry(SRC)
    api = reg.add_image("shop/api", [b"layer-a" * 50, b"layer-b" * 50])
    web = reg.add_image("shop/web", [b"layer-a" * 50, b"layer-c" * 50])  # a shared layer, stored once
    record = {"project": "shop", "env": "dev", "id": 4, "status": "live",
              "services": {"api": f"{SRC}/shop/api@{api}", "web": f"{SRC}/shop/web@{web}",
                           "db": "docker.io/library/postgres@" + sha(b"elsewhere")},
              "extra": {"base": {"name": "shop"}}}
    path = tmp_path / "release.tar"

    class Other(FakeRegistry):  # docker.io: an image the archive carries too, not pushed on load
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
    target = FakeRegistry("reg.prod:5000")
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

    class Rewriting(FakeRegistry):
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

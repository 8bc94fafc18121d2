"""Release archives for air-gapped sites (`orch image save` / `orch image load`).

An archive is a plain tar:

  orch-archive.json        what orch recorded: the release (its ledger record: digests,
                           rendered and base project, lineage) and, per service, the image's
                           repository, digest and the manifests it is made of
  blobs/sha256/<hex>       every manifest, config and layer, as the registry serves them

The images are the source registry's own bytes (no `docker save`), so pushing them into
another registry gives them the very same digests. Reading an archive checks every blob
against its name before anything is pushed: a corrupt, truncated or foreign file is bad
input (exit 2) and nothing is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, OrchError, Problem
from orchestrator.io.registry_client import DIGEST_RE, MANIFEST_TYPES, RegistryClient, parse_reference

FORMAT = "orch-release-archive"
FORMAT_VERSION = 1
INDEX = "orch-archive.json"
MAX_MANIFEST = 4 << 20  # the index and manifests are read whole; layers are only hashed


def blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Archive:
    """A read and verified archive: its index, and where each blob is in the file (read one
    at a time when pushed, so an archive of big images never sits in memory whole)."""

    path: Path
    doc: dict
    members: dict[str, Any] = field(repr=False, default_factory=dict)  # digest -> tarfile.TarInfo

    def blob(self, digest: str) -> bytes:
        """One blob's bytes, checked again (the file may have changed since it was read)."""
        try:
            with tarfile.open(self.path, "r:") as tar:
                f = tar.extractfile(self.members[digest])
                data = f.read() if f is not None else b""
        except (tarfile.TarError, EOFError, OSError) as err:
            raise _bad(self.path, f"blob {digest} cannot be read again ({err})") from None
        if _sha(data) != digest:
            raise _bad(self.path, f"blob {digest} changed since it was verified")
        return data

    @property
    def release(self) -> dict:
        return self.doc["release"]

    @property
    def images(self) -> dict[str, dict]:
        return self.doc["images"]

    @property
    def source_registry(self) -> str:
        return self.doc.get("source_registry") or ""

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members.values())


def _bad(path: Path, why: str, fix: str = "") -> InputError:
    return InputError(Problem(f"{path}: {why}; nothing was changed",
                              fix=fix or "save the release again (`orch image save --env ENV -o FILE`) and copy "
                                          "the whole file"))


# --------------------------------------------------------------------------- save


def save(path: Path, release_record: Mapping[str, Any], source_registry: str,
         client_for: Callable[[Any], RegistryClient], on_image: Callable[[str, str, int], None] | None = None) -> dict:
    """Write the release's images and record into PATH (via a temporary file: never half
    an archive). client_for(parsed ref) -> the RegistryClient that holds it. Returns the index."""
    images: dict[str, dict] = {}
    tmp = path.with_name(f".{path.name}.part")
    written: set[str] = set()
    try:
        with tarfile.open(tmp, "w") as tar:
            def add(data: bytes, name: str) -> None:
                if name in written:
                    return
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                import io

                tar.addfile(info, io.BytesIO(data))
                written.add(name)

            for svc, ref in sorted((release_record.get("services") or {}).items()):
                parsed = parse_reference(ref)
                if not parsed.digest:
                    raise InputError(Problem(f"service {svc}: {ref} is not pinned by digest; cannot archive it"))
                client = client_for(parsed)
                manifests: list[dict] = []
                size = 0

                def fetch_manifest(digest: str) -> None:
                    nonlocal size
                    m = client.manifest(parsed.repository, digest, accept=MANIFEST_TYPES)
                    if _sha(m.body) != digest:
                        raise OrchError(f"{client.address}/{parsed.repository}@{digest}: the registry served a "
                                        f"manifest whose digest is {_sha(m.body)}")
                    doc = m.json()
                    children = [c["digest"] for c in doc.get("manifests") or []]
                    for child in children:
                        fetch_manifest(child)
                    for blob in ([doc["config"]] if doc.get("config") else []) + list(doc.get("layers") or []):
                        d = blob["digest"]
                        if blob_name(d) not in written:
                            data = client.blob(parsed.repository, d)
                            if _sha(data) != d:
                                raise OrchError(f"{client.address}/{parsed.repository}: blob {d} has digest "
                                                f"{_sha(data)}")
                            add(data, blob_name(d))
                            size += len(data)
                    add(m.body, blob_name(digest))
                    manifests.append({"digest": digest, "media_type": m.media_type or doc.get("mediaType", "")})

                fetch_manifest(parsed.digest)
                images[svc] = {"ref": ref, "registry": parsed.registry, "repository": parsed.repository,
                               "digest": parsed.digest, "manifests": manifests, "bytes": size}
                if on_image:
                    on_image(svc, ref, size)
            index = {"format": FORMAT, "version": FORMAT_VERSION, "release": dict(release_record), "images": images,
                     "source_registry": source_registry}
            add(json.dumps(index, indent=1, sort_keys=True).encode(), INDEX)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return index


# --------------------------------------------------------------------------- read (and verify)


def read(path: Path) -> Archive:
    """Read PATH and verify it whole: the index, and every blob's bytes against its digest.
    InputError (exit 2) for a missing, foreign, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise _bad(path, "no such archive file", fix="name the file `orch image save` wrote")
    members: dict[str, Any] = {}
    manifests: dict[str, bytes] = {}  # small: kept to check that every blob they list is there
    doc = None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                f = tar.extractfile(member)
                h, n, head = hashlib.sha256(), 0, b""
                while f is not None:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    n += len(chunk)
                    if n <= MAX_MANIFEST:
                        head += chunk
                if n != member.size:
                    raise _bad(path, f"{member.name} is cut short (the file is truncated)")
                if member.name == INDEX:
                    doc = json.loads(head)
                elif member.name.startswith("blobs/sha256/"):
                    digest = "sha256:" + member.name.rsplit("/", 1)[1]
                    if not DIGEST_RE.match(digest):
                        raise _bad(path, f"{member.name} is not a blob name")
                    if "sha256:" + h.hexdigest() != digest:
                        raise _bad(path, f"blob {digest} has digest sha256:{h.hexdigest()} (the file is corrupt)")
                    members[digest] = member
                    if n <= MAX_MANIFEST:
                        manifests[digest] = head
    except InputError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise _bad(path, f"not a readable orch archive ({err.__class__.__name__}: {str(err)[:120]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(path, f"not an orch release archive (no {INDEX})",
                   fix="`orch image load` takes what `orch image save` writes")
    if doc.get("version") != FORMAT_VERSION:
        raise _bad(path, f"archive format version {doc.get('version')!r}; this orch reads {FORMAT_VERSION}",
                   fix="load it with the orch version that saved it")
    try:
        release, images = doc["release"], doc["images"]
        for svc, ref in (release.get("services") or {}).items():
            img = images[svc]
            if parse_reference(ref).digest != img["digest"]:
                raise _bad(path, f"service {svc}: the release records {ref}, the archive holds {img['digest']}")
            for m in img["manifests"]:
                if m["digest"] not in manifests:
                    raise _bad(path, f"service {svc}: manifest {m['digest']} is missing (the file is truncated)")
                body = json.loads(manifests[m["digest"]])
                for b in ([body["config"]] if body.get("config") else []) + list(body.get("layers") or []):
                    if b["digest"] not in members:
                        raise _bad(path, f"service {svc}: blob {b['digest']} is missing (the file is truncated)")
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise _bad(path, f"its index is not an orch archive's ({err.__class__.__name__}: {err})") from None
    return Archive(path, doc, members)


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Loaded:
    service: str
    ref: str  # the image as the target environment will pull it (pinned by the same digest)
    digest: str
    blobs_pushed: int
    blobs_present: int


def target_ref(image: Mapping[str, Any], source_registry: str, target_registry: str) -> str:
    """The service's image in the target: the source environment's registry replaced by the
    target's (same repository, same digest); images from elsewhere keep their reference."""
    if image["registry"] == source_registry and target_registry:
        return f"{target_registry}/{image['repository']}@{image['digest']}"
    return image["ref"]


def push(archive: Archive, client: RegistryClient, on_image: Callable[[Loaded], None] | None = None,
         target_registry: str = "") -> list[Loaded]:
    """Push every image that lived in the source environment's registry into CLIENT's
    registry by digest, then read each digest back: it must be the recorded one. The
    images are named in target_registry (default: CLIENT's address; a node's loopback
    registry is reached at another address than the one its engine pulls from)."""
    out = []
    source_registry = archive.source_registry
    for svc, img in sorted(archive.images.items()):
        if img["registry"] != source_registry:
            continue
        repo = img["repository"]
        pushed = present = 0
        manifests = img["manifests"]  # children before their index
        for m in manifests:
            raw = archive.blob(m["digest"])
            body = json.loads(raw)
            for b in ([body["config"]] if body.get("config") else []) + list(body.get("layers") or []):
                if client.blob_exists(repo, b["digest"]):
                    present += 1
                else:
                    client.put_blob(repo, b["digest"], archive.blob(b["digest"]))
                    pushed += 1
            media = m.get("media_type") or body.get("mediaType") or MANIFEST_TYPES[0]
            got = client.put_manifest(repo, m["digest"], media, raw)
            if got != m["digest"]:
                raise OrchError(f"service {svc}: {client.address}/{repo} stored manifest {m['digest']} as {got}",
                                fix="the registry rewrote the manifest; push into a registry that keeps it as is")
        back = client.manifest_digest(repo, img["digest"])
        if back != img["digest"]:
            raise OrchError(f"service {svc}: {client.address}/{repo}@{img['digest']} reads back as {back}")
        item = Loaded(svc, target_ref(img, source_registry, target_registry or client.address), img["digest"],
                      pushed, present)
        out.append(item)
        if on_image:
            on_image(item)
    return out

"""`orch image save` and `orch image load`: a live release carried to an air-gapped site.

save: the source environment's live release (its ledger record) and its images, fetched
from the environment's registry by digest, into one tar (orchestrator.io.archive).
load: the archive read and verified whole (every blob against its digest; bad input,
exit 2, before anything is touched), then its images pushed into the target
environment's registry by digest and read back. `orch promote --from-archive` (in
orchestrator.app.release) then deploys the archived release with its lineage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.progress import Progress
from orchestrator.errors import InputError, Problem


@dataclass
class SaveResult:
    project: str
    env: str
    release: Any  # core.releases.Release
    path: Path
    images: dict[str, dict] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_json(self) -> dict:
        return {"project": self.project, "env": self.env, "release": self.release.ref.to_dict(),
                "archive": str(self.path), "bytes": self.path.stat().st_size,
                "images": {s: {"ref": i["ref"], "digest": i["digest"], "bytes": i["bytes"]}
                           for s, i in sorted(self.images.items())},
                "duration_s": round(self.duration_s, 2)}


@dataclass
class LoadResult:
    env: str
    registry: str
    archive: Any  # io.archive.Archive
    loaded: list = field(default_factory=list)  # io.archive.Loaded
    duration_s: float = 0.0

    def to_json(self) -> dict:
        rel = self.archive.release
        return {"env": self.env, "registry": self.registry, "archive": str(self.archive.path),
                "project": rel["project"], "release": {"env": rel["env"], "id": rel["id"]},
                "images": {x.service: {"ref": x.ref, "digest": x.digest, "blobs_pushed": x.blobs_pushed,
                                       "blobs_present": x.blobs_present} for x in self.loaded},
                "duration_s": round(self.duration_s, 2)}


def live_release(project: str, environment: Any, progress: Progress, connector: Any = None) -> Any:
    """The live release of PROJECT in ENVIRONMENT (read-only, no lock); InputError when none."""
    from orchestrator.io.ledger import ReleaseLedger
    from orchestrator.io.nodes import close_nodes, ssh_connect

    progress.phase("source", f"reading the live release of {project} in {environment.name}")
    nodes = (connector or ssh_connect)(environment, progress, project)
    try:
        history = ReleaseLedger(nodes, project, environment.name, on_warning=progress.warning).history(limit=200)
    finally:
        close_nodes(nodes)
    live = history.live()
    if live is None:
        raise InputError(Problem(f"{project} has no live release in {environment.name} to save",
                                 fix=f"deploy it first (`orch up --env {environment.name}`)"))
    if not (live.extra or {}).get("base"):
        raise InputError(Problem(f"{live.ref} records no base project (deployed by an older orch)",
                                 fix=f"deploy {environment.name} again, then save"))
    return live


def save(project: str, environment: Any, output: Path, progress: Progress | None = None,
         connector: Any = None) -> SaveResult:
    from orchestrator.io import archive as A
    from orchestrator.io import images as I

    progress = progress or Progress()
    t0 = time.monotonic()
    output = Path(output)
    if not output.parent.is_dir():
        raise InputError(Problem(f"{output.parent}: no such directory for the archive"))
    live = live_release(project, environment, progress, connector)
    progress.phase("images", f"fetching {live.ref}'s images from their registry into {output}")
    clients: dict = {}
    index = A.save(output, live.to_record(), environment.registry.address or "",
                   lambda parsed: I.client_for_image(parsed, environment, clients),
                   on_image=lambda svc, ref, size: progress.event("image_saved", service=svc, image=ref, bytes=size))
    return SaveResult(project, environment.name, live, output, index["images"], time.monotonic() - t0)


def load(path: Path, environment: Any, progress: Progress | None = None) -> LoadResult:
    from orchestrator.io import archive as A
    from orchestrator.io import images as I

    progress = progress or Progress()
    t0 = time.monotonic()
    progress.phase("verify", f"reading {path} and checking every blob's digest")
    archive = A.read(Path(path))
    if not environment.registry.address:
        raise InputError(Problem(f"environment {environment.name} names no registry: loading an archive needs one",
                                 fix="add `registry:` to the environment file"))
    client = I.registry_client(environment)
    I.check_registry(environment, client=client)
    progress.phase("images", f"pushing the archive's images into {environment.registry.address} by digest")
    loaded = A.push(archive, client, on_image=lambda x: progress.event(
        "image_loaded", service=x.service, image=x.ref, blobs_pushed=x.blobs_pushed, blobs_present=x.blobs_present))
    return LoadResult(environment.name, environment.registry.address, archive, loaded, time.monotonic() - t0)


def archived_source(path: Path, target: Any) -> tuple[Any, Any]:
    """For `orch promote --from-archive`: the archive read and verified, and its release as
    the promotion's source, its images named in TARGET's registry (same digests)."""
    from dataclasses import replace

    from orchestrator.core.releases import Release
    from orchestrator.io import archive as A

    archive = A.read(Path(path))
    live = Release.from_record(archive.release)
    services = {svc: A.target_ref(archive.images[svc], archive.source_registry, target.registry.address or "")
                for svc in live.services}
    return archive, replace(live, services=services)

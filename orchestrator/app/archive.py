"""`orch image save` and `orch image load`: a live release carried to an air-gapped site.

save: the source environment's live release (its ledger record) and its images, fetched
from the environment's registry by digest, into one tar (orchestrator.io.archive).
load: the archive read and verified whole (every blob against its digest; bad input,
exit 2, before anything is touched), then its images pushed into the target
environment's registry by digest and read back. `orch promote --from-archive` (in
orchestrator.app.release) then deploys the archived release with its lineage.

Without a registry (app.transfer): save reads the images from a node's loopback registry
and load pushes them into every node's (through the SSH forwards the transfer uses), named
127.0.0.1:PORT/<repository>@<digest> there, so a promotion finds them on the nodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.wire.transfer import LOOPBACK_REGISTRY
from orchestrator.core.progress import Progress
from orchestrator.errors import InputError, OrchError, Problem


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
    loaded: list = field(default_factory=list)  # io.archive.Loaded (without a registry: summed over nodes)
    duration_s: float = 0.0
    nodes: dict = field(default_factory=dict)  # without a registry: node -> [io.archive.Loaded]

    def to_json(self) -> dict:
        rel = self.archive.release
        doc = {"env": self.env, "registry": self.registry, "archive": str(self.archive.path),
               "project": rel["project"], "release": {"env": rel["env"], "id": rel["id"]},
               "images": {x.service: {"ref": x.ref, "digest": x.digest, "blobs_pushed": x.blobs_pushed,
                                      "blobs_present": x.blobs_present} for x in self.loaded},
               "duration_s": round(self.duration_s, 2)}
        if self.nodes:
            doc["nodes"] = {n: {x.service: {"blobs_pushed": x.blobs_pushed, "blobs_present": x.blobs_present}
                                for x in items} for n, items in sorted(self.nodes.items())}
        return doc


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

    def client_for(parsed: Any) -> Any:
        return I.client_for_image(parsed, environment, clients)

    with _node_sources(project, environment, progress, connector, client_for) as pick:
        index = A.save(output, live.to_record(), environment.registry.address or LOOPBACK_REGISTRY, pick,
                       on_image=lambda svc, ref, size: progress.event("image_saved", service=svc, image=ref,
                                                                       bytes=size))
    return SaveResult(project, environment.name, live, output, index["images"], time.monotonic() - t0)


@contextmanager
def _node_sources(project: str, environment: Any, progress: Progress, connector: Any,
                  client_for: Callable[[Any], Any]) -> Iterator[Callable[[Any], Any]]:
    """client_for, except that without a registry a 127.0.0.1:PORT image is read from the
    loopback registry of a node that holds it."""
    from orchestrator.app.transfer import node_registries, registryless

    if not registryless(environment):
        yield client_for
        return
    from orchestrator.io import transfer as X
    from orchestrator.io.nodes import close_nodes, ssh_connect

    nodes = (connector or ssh_connect)(environment, progress, project)
    try:
        with node_registries(nodes) as (regs, _):
            def pick(parsed: Any) -> Any:
                if parsed.registry != LOOPBACK_REGISTRY:
                    return client_for(parsed)
                for name in sorted(regs):
                    if X.has_image(regs[name], parsed.repository, parsed.digest):
                        return regs[name]
                raise X.TransferFailed(
                    f"no node of {environment.name} holds {parsed.repository}@{parsed.digest} any more",
                    fix=f"deploy it again (`orch up --env {environment.name}`), then save")

            yield pick
    finally:
        close_nodes(nodes)


def load(path: Path, environment: Any, progress: Progress | None = None, connector: Any = None) -> LoadResult:
    from orchestrator.io import archive as A
    from orchestrator.io import images as I

    progress = progress or Progress()
    t0 = time.monotonic()
    progress.phase("verify", f"reading {path} and checking every blob's digest")
    archive = A.read(Path(path))
    if not environment.registry.address:
        return _load_into_nodes(archive, environment, progress, connector, t0)
    client = I.registry_client(environment)
    I.check_registry(environment, client=client)
    progress.phase("images", f"pushing the archive's images into {environment.registry.address} by digest")
    loaded = A.push(archive, client, on_image=lambda x: progress.event(
        "image_loaded", service=x.service, image=x.ref, blobs_pushed=x.blobs_pushed, blobs_present=x.blobs_present))
    return LoadResult(environment.name, environment.registry.address, archive, loaded, time.monotonic() - t0)


def _load_into_nodes(archive: Any, environment: Any, progress: Progress, connector: Any, t0: float) -> LoadResult:
    """Without a registry: the archive's images into every node's loopback registry, in
    parallel (each node gets only the blobs it lacks), named 127.0.0.1:PORT/... ."""
    from orchestrator.app.transfer import node_registries
    from orchestrator.io import archive as A
    from orchestrator.io import transfer as X
    from orchestrator.io import transport as T
    from orchestrator.io.nodes import close_nodes, ssh_connect

    nodes = (connector or ssh_connect)(environment, progress, archive.release["project"])
    try:
        names = sorted(nodes)
        progress.phase("images", f"pushing the archive's images into the loopback registries of {', '.join(names)}")
        with node_registries(nodes) as (regs, infos):
            def one(name: str) -> list:
                X.check_room(name, _missing(archive, regs[name]), infos[name].free_bytes)  # before the first byte
                return A.push(archive, regs[name], target_registry=LOOPBACK_REGISTRY, on_image=lambda x: progress.event(
                    "image_loaded", node=name, service=x.service, image=x.ref, blobs_pushed=x.blobs_pushed,
                    blobs_present=x.blobs_present))

            per_node, errors = T.parallel(names, one, key=lambda n: n)
    finally:
        close_nodes(nodes)
    if errors:  # what other nodes received stays: blobs are content-addressed, a re-run sends only the rest
        name, err = sorted(errors.items())[0]
        raise OrchError(f"{name}: loading the archive into its loopback registry failed: "
                        f"{getattr(err, 'message', None) or err}",
                        fix=getattr(err, "fix", None) or "run `orch image load` again: what arrived is not sent again")
    total = []
    for first in per_node[names[0]]:
        items = [x for n in names for x in per_node[n] if x.service == first.service]
        total.append(replace(first, blobs_pushed=sum(x.blobs_pushed for x in items),
                             blobs_present=sum(x.blobs_present for x in items)))
    return LoadResult(environment.name, LOOPBACK_REGISTRY, archive, total, time.monotonic() - t0, nodes=per_node)


def _missing(archive: Any, client: Any) -> list[tuple[str, int]]:
    """(digest, size) of the archive's blobs CLIENT's registry lacks, in the repositories
    load pushes them to."""
    import json

    out: dict[str, int] = {}
    for img in archive.images.values():
        if img["registry"] != archive.source_registry:
            continue
        for m in img["manifests"]:
            body = json.loads(archive.blob(m["digest"]))
            for b in ([body["config"]] if body.get("config") else []) + list(body.get("layers") or []):
                if b["digest"] not in out and not client.blob_exists(img["repository"], b["digest"]):
                    out[b["digest"]] = archive.members[b["digest"]].size
    return sorted(out.items())


def archived_source(path: Path, target: Any) -> tuple[Any, Any]:
    """For `orch promote --from-archive`: the archive read and verified, and its release as
    the promotion's source, its images named in TARGET's registry (same digests)."""
    from dataclasses import replace

    from orchestrator.core.releases import Release
    from orchestrator.io import archive as A

    archive = A.read(Path(path))
    live = Release.from_record(archive.release)
    services = {svc: A.target_ref(archive.images[svc], archive.source_registry,
                                  target.registry.address or LOOPBACK_REGISTRY)
                for svc in live.services}
    return archive, replace(live, services=services)

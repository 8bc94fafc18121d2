"""`orch prune`'s plan (pure): from each node's `prune_scan` (agent.wire.prune.NodeScan) and
the releases the environments keep, what would be removed on every node and in the
registry. `orch prune --dry-run` prints this plan; `orch prune` sends exactly it
(`NodePrune.request`) and deletes exactly its manifests.

Rules, per node (only objects with the project's labels for this environment):
- containers: stopped ones the live release does not count on: kept (`*-prev`) ones, and
  any whose release label is not the live release's (a stopped one-shot container of the
  live release stays: `orch up` would run it again);
- images: the project's images no container uses (after the planned removals) and none
  of whose digests a kept release references (`releases.images_to_keep`); none at all on
  a node where another environment holds the project;
- volumes (only when asked): the project's volumes no container mounts (after the planned
  removals) and the live release does not declare;
- files: the secret/config file versions of services with no container left, and the
  half-written transfers of such files whose writer (an agent process) is gone.
Registry: digests in the project's repositories that some environment's release recorded
and no environment keeps. Without a registry, the same rule for each node's loopback
registry (agent.transfer), over every registry-less environment's releases, sparing what
a container on that node runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.wire import labels as L
from agent.wire.transfer import LOOPBACK_REGISTRY
from agent.wire.prune import KINDS, NodeScan, RemoveRequest, is_leftover
from orchestrator.core.images import repo_component
from orchestrator.core.releases import History, images_to_keep


@dataclass(frozen=True)
class PruneItem:
    kind: str  # containers | images | volumes | files
    name: str  # what the agent is asked to remove: container name, image id, volume name, project/service
    label: str = ""  # what people read (an image's reference)
    size: int = 0  # bytes, when known (images, files)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "label": self.label or self.name, "size": self.size}


@dataclass(frozen=True)
class NodePrune:
    node: str
    items: tuple[PruneItem, ...] = ()

    def of(self, kind: str) -> tuple[str, ...]:
        return tuple(i.name for i in self.items if i.kind == kind)

    def request(self, project: str, env: str) -> RemoveRequest:
        return RemoveRequest(project, env, *(self.of(k) for k in KINDS), allow_volumes=bool(self.of("volumes")))

    def to_dict(self) -> dict:
        return {"node": self.node, "items": [i.to_dict() for i in self.items],
                "size": sum(i.size for i in self.items)}


@dataclass(frozen=True)
class Manifest:
    repository: str  # inside the registry: "hello/web"
    digest: str
    releases: tuple[str, ...] = ()  # "dev#3", ... that recorded it

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"

    def to_dict(self) -> dict:
        return {"repository": self.repository, "digest": self.digest, "releases": list(self.releases)}


@dataclass(frozen=True)
class RegistryPrune:
    address: str
    manifests: tuple[Manifest, ...] = ()
    gc: str = "none"  # lab: orch runs the lab registry's garbage collection | command: printed for the operator
    gc_command: str = ""
    skipped: str = ""  # why the registry is left alone (an environment's releases could not be read, ...)

    def to_dict(self) -> dict:
        return {"address": self.address, "manifests": [m.to_dict() for m in self.manifests], "gc": self.gc,
                "gc_command": self.gc_command, "skipped": self.skipped}


@dataclass(frozen=True)
class NodeRegistryPrune:
    """One node's loopback registry (an environment without a registry): its manifests to delete."""

    node: str
    manifests: tuple[Manifest, ...] = ()

    def to_dict(self) -> dict:
        return {"node": self.node, "address": LOOPBACK_REGISTRY, "manifests": [m.to_dict() for m in self.manifests]}


@dataclass(frozen=True)
class PrunePlan:
    project: str
    env: str
    nodes: tuple[NodePrune, ...] = ()
    registry: RegistryPrune | None = None
    volumes: bool = False
    notes: tuple[str, ...] = ()
    node_registries: tuple[NodeRegistryPrune, ...] = ()

    @property
    def empty(self) -> bool:
        return (not any(n.items for n in self.nodes) and not (self.registry and self.registry.manifests)
                and not any(r.manifests for r in self.node_registries))

    def to_dict(self) -> dict:
        return {"project": self.project, "environment": self.env, "volumes": self.volumes,
                "nodes": [n.to_dict() for n in self.nodes],
                "registry": self.registry.to_dict() if self.registry else None, "notes": list(self.notes),
                "node_registries": [r.to_dict() for r in self.node_registries]}


def live_release_id(history: History) -> str:
    live = history.live()
    return str(live.id) if live is not None else ""


def live_volumes(history: History) -> set[str]:
    """The Compose names of the volumes the live release's recorded project declares."""
    live = history.live()
    return set(((live.manifest or {}).get("volumes") or {}).keys()) if live is not None else set()


def plan_node(node: str, scan: NodeScan, *, keep: Iterable[str], live_release: str,
              declared_volumes: Iterable[str] = (), volumes: bool = False) -> tuple[NodePrune, list[str]]:
    """One node's part of the plan, and notes for people."""
    keep, declared = set(keep), set(declared_volumes)
    notes: list[str] = []
    items: list[PruneItem] = []
    gone: set[str] = set()
    for c in scan.containers:
        if c.stopped and (L.is_retired(c.name) or c.release != live_release or not live_release):
            items.append(PruneItem("containers", c.name, f"{c.name} ({c.state})"))
            gone.add(c.name)
    left = {c.service for c in scan.containers if c.name not in gone}
    if scan.other_envs:
        notes.append(f"{node}: environment {', '.join(scan.other_envs)} also holds the project here; "
                     "its images are left alone")
    else:
        for img in scan.images:
            if set(img.users) - gone or keep.intersection(img.refs):
                continue
            items.append(PruneItem("images", img.id, img.name, img.size))
    if volumes:
        for v in scan.volumes:
            if set(v.users) - gone or (v.volume and v.volume in declared):
                continue
            items.append(PruneItem("volumes", v.name, v.name))
    folders = {f.path for f in scan.files if not is_leftover(f.path) and f.path.split("/", 1)[-1] not in left}
    for f in scan.files:
        if f.path in folders:
            items.append(PruneItem("files", f.path, f.path, f.size))
        elif is_leftover(f.path) and "/".join(f.path.split("/")[:2]) not in folders:
            items.append(PruneItem("files", f.path, f"{f.path} (half-written)", f.size))
    return NodePrune(node, tuple(items)), notes


def registry_candidates(histories: Mapping[str, History], address: str, project: str,
                        keep: int) -> tuple[dict[tuple[str, str], tuple[str, ...]], set[str]]:
    """({(repository, digest): releases that recorded it}, kept references) over every
    environment's releases, in the project's repositories of the registry at `address`."""
    prefix = f"{address}/{repo_component(project)}/"
    kept: set[str] = set()
    found: dict[tuple[str, str], list[str]] = {}
    for env, history in sorted(histories.items()):
        kept |= images_to_keep(history, keep)
        for r in history.releases:
            for ref in r.services.values():
                repo, at, digest = ref.partition("@")
                if ref.startswith(prefix) and at and digest.startswith("sha256:"):
                    found.setdefault((repo[len(address) + 1:], digest), []).append(f"{env}#{r.id}")
    out = {key: tuple(sorted(set(rels))) for key, rels in found.items()
           if f"{address}/{key[0]}@{key[1]}" not in kept}
    return dict(sorted(out.items())), kept


def plan_registry(address: str, candidates: Mapping[tuple[str, str], tuple[str, ...]], present: Iterable[tuple[str, str]],
                  in_use: Iterable[str] = (), *, gc: str = "none", gc_command: str = "") -> RegistryPrune:
    """The manifests to delete: the candidates still in the registry (`present`) that no
    container on the nodes runs (`in_use`: references)."""
    present, used = set(present), set(in_use)
    manifests = tuple(Manifest(repo, digest, rels) for (repo, digest), rels in sorted(candidates.items())
                      if (repo, digest) in present and f"{address}/{repo}@{digest}" not in used)
    return RegistryPrune(address, manifests, gc if manifests else "none", gc_command if manifests else "")


def plan_node_registries(candidates: Mapping[tuple[str, str], tuple[str, ...]],
                         present: Mapping[str, Iterable[tuple[str, str]]],
                         scans: Mapping[str, NodeScan]) -> tuple[NodeRegistryPrune, ...]:
    """Per node (present: what its loopback registry holds of the candidates), the manifests
    to delete: registry_candidates' rule, sparing the images that node's containers run."""
    out = []
    for node, held in sorted(present.items()):
        scan = scans.get(node)
        used = {ref for i in scan.images if i.users for ref in i.refs} if scan is not None else set()
        out.append(NodeRegistryPrune(node, plan_registry(LOOPBACK_REGISTRY, candidates, held, used).manifests))
    return tuple(out)


def plan_prune(project: str, env: str, scans: Mapping[str, NodeScan], history: History, *, keep: int,
               volumes: bool = False, registry: RegistryPrune | None = None,
               notes: Iterable[str] = (), node_registries: Iterable[NodeRegistryPrune] = ()) -> PrunePlan:
    kept = images_to_keep(history, keep)
    live = live_release_id(history)
    declared = live_volumes(history)
    nodes: list[NodePrune] = []
    all_notes = list(notes)
    for node, scan in sorted(scans.items()):
        np, n = plan_node(node, scan, keep=kept, live_release=live, declared_volumes=declared, volumes=volumes)
        nodes.append(np)
        all_notes += n
    return PrunePlan(project, env, tuple(nodes), registry, volumes, tuple(all_notes), tuple(node_registries))


@dataclass
class PruneOutcome:
    """What `orch prune` did: per node the agent's answer, the registry's deletions and
    the bytes freed ("unknown" when they cannot be measured)."""
    plan: PrunePlan
    removed: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # node -> kind -> names
    refused: dict[str, list[dict]] = field(default_factory=dict)
    node_bytes: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)  # repository@digest
    registry_errors: list[str] = field(default_factory=list)
    registry_bytes: int | None = None
    gc_ran: bool = False
    dry_run: bool = False
    node_registry_deleted: dict[str, list[str]] = field(default_factory=dict)  # node -> repository@digest
    node_registry_gc: dict[str, Any] = field(default_factory=dict)  # node -> agent.wire.transfer.GcResult

    def to_dict(self) -> dict[str, Any]:
        doc = {"plan": self.plan.to_dict(), "dry_run": self.dry_run, "removed": self.removed,
               "refused": self.refused, "deleted": self.deleted, "registry_errors": self.registry_errors,
               "bytes_freed": {"nodes": self.node_bytes,
                               "registry": "unknown" if self.registry_bytes is None else self.registry_bytes},
               "gc_ran": self.gc_ran}
        if self.plan.node_registries:
            doc["node_registries"] = {
                r.node: {"deleted": self.node_registry_deleted.get(r.node, []),
                         "gc": self.node_registry_gc[r.node].to_dict() if r.node in self.node_registry_gc else None}
                for r in self.plan.node_registries}
            doc["bytes_freed"]["node_registries"] = {n: g.freed for n, g in sorted(self.node_registry_gc.items())}
        return doc


def plan_items(plan: PrunePlan) -> dict[str, dict[str, list[str]]]:
    """{node: {kind: names}} of a plan, in the shape of PruneOutcome.removed."""
    return {n.node: {k: list(n.of(k)) for k in KINDS} for n in plan.nodes if n.items}

"""`orch prune` on a node: `prune_scan` reports what the project holds on this engine
(agent.wire.prune.NodeScan), `prune_remove` removes what the controller planned from it,
re-checking every item first: it must carry the project's labels and no other
environment's, a container must be stopped, an image and a volume must have no container
at all (anyone's, any state), files must belong to a service with no container. What
fails a check is refused (named in the answer), never removed.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List

from agent.context import Context
from agent.owner import owners
from agent.wire import labels as L
from agent.wire.protocol import AgentError
from agent.wire.prune import (
    KINDS,
    STOPPED,
    ContainerItem,
    FilesItem,
    ImageItem,
    NodeScan,
    Refused,
    RemoveRequest,
    RemoveResult,
    ScanRequest,
    VolumeItem,
    is_leftover,
    leftover_pid,
)


def _files_root(ctx: Context, project: str) -> str:
    return os.path.join(ctx.data_dir(), "files", project)


def _size(path: str) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(folder, n)).st_size
            except OSError:
                pass
    return total


def _writer_gone(path: str) -> bool:
    """The agent process named in a leftover's name no longer runs (this node's PIDs)."""
    try:
        os.kill(leftover_pid(path), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive (someone else's process: EPERM)
        return False
    return False


def _leftovers(root: str, project: str, services: List[str]) -> List[FilesItem]:
    out = []
    for s in services:
        for kind in ("secrets", "configs"):
            folder = os.path.join(root, s, kind)
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                continue
            for n in names:
                rel = "%s/%s/%s/%s" % (project, s, kind, n)
                full = os.path.join(folder, n)
                if is_leftover(rel) and os.path.isfile(full) and not os.path.islink(full) and _writer_gone(rel):
                    out.append(FilesItem(rel, os.lstat(full).st_size))
    return out


def _users(ctx: Context) -> List[Dict[str, Any]]:
    return ctx.engine.container_users()


def scan(ctx: Context, req: ScanRequest) -> NodeScan:
    project, env = req.project, req.env
    everyone = _users(ctx)
    mine = [c for c in ctx.engine.containers(L.filters(project)) if not L.other_env(c.labels, env)]
    containers = tuple(ContainerItem(c.name, c.service, c.state, c.labels.get(L.RELEASE, ""), c.image_id)
                       for c in mine)
    images = tuple(ImageItem(img["id"], tuple(list(img.get("repo_digests") or []) + list(img.get("repo_tags") or [])),
                             int(img.get("size") or 0),
                             tuple(sorted(u["name"] for u in everyone if u["image_id"] == img["id"])))
                   for img in sorted(ctx.engine.list_images(["%s=%s" % (L.PROJECT, project)]), key=lambda i: i["id"]))
    volumes = tuple(VolumeItem(v["name"], v["labels"].get(L.NAME, ""),
                               tuple(sorted(u["name"] for u in everyone if v["name"] in u["volumes"])))
                    for v in ctx.engine.volumes(L.filters(project)) if not L.other_env(v["labels"], env))
    root = _files_root(ctx, project)
    services = sorted(os.listdir(root)) if os.path.isdir(root) else []
    files = tuple(FilesItem("%s/%s" % (project, s), _size(os.path.join(root, s))) for s in services)
    files += tuple(_leftovers(root, project, services))
    others = tuple(sorted(e for e in owners(ctx, project) if e != env))
    return NodeScan(containers, images, volumes, files, others)


def remove(ctx: Context, req: RemoveRequest) -> RemoveResult:
    project, env = req.project, req.env
    removed: Dict[str, List[str]] = {k: [] for k in KINDS}
    refused: List[Refused] = []
    reclaimed = 0

    def refuse(kind: str, name: str, reason: str) -> None:
        refused.append(Refused(kind, name, reason))
        ctx.emit("prune.refused", kind=kind, name=name, reason=reason)

    if req.containers:
        ours = {c.name: c for c in ctx.engine.containers(L.filters(project))}
        for name in req.containers:
            c = ours.get(name)
            if c is None:
                refuse("containers", name, "not a container of %s on this node" % project)
            elif L.other_env(c.labels, env):
                refuse("containers", name, "it belongs to environment %s" % L.env_of(c.labels))
            elif c.state not in STOPPED:
                refuse("containers", name, "it is %s" % c.state)
            else:
                ctx.engine.remove(c.id)
                removed["containers"].append(name)
    everyone = _users(ctx)
    if req.images:
        others = sorted(e for e in owners(ctx, project) if e != env)
        labelled = {i["id"]: i for i in ctx.engine.list_images(["%s=%s" % (L.PROJECT, project)])}
        for image_id in req.images:
            img = labelled.get(image_id)
            users = sorted(u["name"] for u in everyone if u["image_id"] == image_id)
            if img is None:
                refuse("images", image_id, "no image of %s with that id on this node" % project)
            elif others:
                refuse("images", image_id, "environment %s also runs %s here" % (", ".join(others), project))
            elif users:
                refuse("images", image_id, "container %s uses it" % ", ".join(users))
            else:
                try:
                    ctx.engine.remove_image(image_id)
                except AgentError as err:  # in use meanwhile, or already gone
                    refuse("images", image_id, err.message)
                    continue
                removed["images"].append(image_id)
                reclaimed += int(img.get("size") or 0)
    if req.volumes:
        vols = {v["name"]: v for v in ctx.engine.volumes(L.filters(project))}
        for name in req.volumes:
            v = vols.get(name)
            users = sorted(u["name"] for u in everyone if name in u["volumes"])
            if v is None:
                refuse("volumes", name, "not a volume of %s on this node" % project)
            elif L.other_env(v["labels"], env):
                refuse("volumes", name, "it belongs to environment %s" % L.env_of(v["labels"]))
            elif users:
                refuse("volumes", name, "container %s mounts it" % ", ".join(users))
            else:
                ctx.engine.remove_volume(name)
                removed["volumes"].append(name)
    if req.files:
        services = set(c.service for c in ctx.engine.containers(L.filters(project)))
        root = _files_root(ctx, project)
        for path in req.files:
            if is_leftover(path):
                full = os.path.join(root, *path.split("/")[1:])
                if not os.path.isfile(full) or os.path.islink(full):
                    refuse("files", path, "no such file")
                elif not _writer_gone(path):
                    refuse("files", path, "its writer (process %d) still runs" % leftover_pid(path))
                else:
                    reclaimed += os.lstat(full).st_size
                    os.unlink(full)
                    removed["files"].append(path)
                continue
            service = path.split("/", 1)[1]
            folder = os.path.join(root, service)
            if service in services:
                refuse("files", path, "service %s has a container on this node" % service)
            elif not os.path.isdir(folder) or os.path.islink(folder):
                refuse("files", path, "no such directory")
            else:
                size = _size(folder)
                shutil.rmtree(folder, ignore_errors=True)
                removed["files"].append(path)
                reclaimed += size
    return RemoveResult({k: tuple(v) for k, v in removed.items()}, tuple(refused), reclaimed)


def op_prune_scan(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    return scan(ctx, ScanRequest.parse(args)).to_dict()


def op_prune_remove(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    return remove(ctx, RemoveRequest.parse(args)).to_dict()


PRUNE_OPERATIONS = {
    "prune_scan": op_prune_scan,
    "prune_remove": op_prune_remove,
}

"""`orch prune`'s contract: what a node holds that a prune may remove (`prune_scan`'s
answer, `NodeScan`), what the controller asks it to remove (`prune_remove`,
`RemoveRequest`) and what it did (`RemoveResult`). The controller decides (core/prune.py);
the agent re-checks every item against the labels and the engine before removing it.
Pure: stdlib only, no I/O, Python 3.9 compatible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from agent.wire.protocol import (
    BadRequest,
    check_bool,
    check_int,
    check_keys,
    check_name,
    check_object,
    check_project,
    check_str,
    check_str_list,
    require,
)

KINDS = ("containers", "images", "volumes", "files")  # the order prune_remove removes them in
STOPPED = ("exited", "created", "dead")  # a container in one of these states runs nothing


def _strs(d: Dict[str, Any], key: str, what: str) -> Tuple[str, ...]:
    return tuple(check_str_list(d.get(key) or [], "%s.%s" % (what, key)))


@dataclass(frozen=True)
class ScanRequest:
    project: str
    env: str

    def to_dict(self) -> Dict[str, Any]:
        return {"project": self.project, "env": self.env}

    @classmethod
    def parse(cls, args: Dict[str, Any]) -> "ScanRequest":
        check_keys(args, ("project", "env"), "prune_scan")
        return cls(check_project(require(args, "project", "prune_scan")),
                   check_name(require(args, "env", "prune_scan"), "env"))


@dataclass(frozen=True)
class ContainerItem:
    """A container of the project for this environment (any state)."""
    name: str
    service: str
    state: str
    release: str = ""  # its io.orch.release label
    image_id: str = ""

    @property
    def stopped(self) -> bool:
        return self.state in STOPPED


@dataclass(frozen=True)
class ImageItem:
    """An image carrying the project's label; `users`: the containers (anyone's, any
    state) created from it."""
    id: str
    refs: Tuple[str, ...] = ()  # repo@sha256:... and repo:tag references
    size: int = 0
    users: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.refs[0] if self.refs else self.id


@dataclass(frozen=True)
class VolumeItem:
    """A named volume of the project for this environment; `users`: the containers
    (anyone's, any state) mounting it."""
    name: str  # the engine's name (project_volume)
    volume: str = ""  # the Compose name (io.orch.name)
    users: Tuple[str, ...] = ()


_LEFTOVER_RE = re.compile(r"^[^/]+/[^/]+/(secrets|configs)/[^/]+\.tmp-[0-9]{1,10}$")


def is_leftover(path: str) -> bool:
    """"project/service/secrets/NAME.tmp-PID": a file transfer the agent process PID left
    half-written (agent.steps.write_files writes to such a name, then renames)."""
    return bool(_LEFTOVER_RE.match(path)) and ".." not in path.split("/")


def leftover_pid(path: str) -> int:
    return int(path.rsplit(".tmp-", 1)[1])


@dataclass(frozen=True)
class FilesItem:
    """A service's secret/config file versions under the agent's state directory:
    "project/service" (prune removes them once the service has no container on the node),
    or one half-written transfer of a file whose writer is gone (`is_leftover`)."""
    path: str
    size: int = 0


@dataclass(frozen=True)
class NodeScan:
    containers: Tuple[ContainerItem, ...] = ()
    images: Tuple[ImageItem, ...] = ()
    volumes: Tuple[VolumeItem, ...] = ()
    files: Tuple[FilesItem, ...] = ()
    other_envs: Tuple[str, ...] = ()  # environments that also hold the project on this engine

    def to_dict(self) -> Dict[str, Any]:
        return {
            "containers": [{"name": c.name, "service": c.service, "state": c.state, "release": c.release,
                            "image_id": c.image_id} for c in self.containers],
            "images": [{"id": i.id, "refs": list(i.refs), "size": i.size, "users": list(i.users)}
                       for i in self.images],
            "volumes": [{"name": v.name, "volume": v.volume, "users": list(v.users)} for v in self.volumes],
            "files": [{"path": f.path, "size": f.size} for f in self.files],
            "other_envs": list(self.other_envs),
        }

    @classmethod
    def parse(cls, d: Any) -> "NodeScan":
        d = check_object(d, "prune_scan result")
        w = "prune_scan result"
        return cls(
            containers=tuple(ContainerItem(
                check_str(c.get("name"), "container name"), str(c.get("service") or ""), str(c.get("state") or ""),
                str(c.get("release") or ""), str(c.get("image_id") or ""))
                for c in (check_object(x, w + ".containers[]") for x in d.get("containers") or [])),
            images=tuple(ImageItem(
                check_str(i.get("id"), "image id"), _strs(i, "refs", w), check_int(i.get("size") or 0, "size", 0),
                _strs(i, "users", w))
                for i in (check_object(x, w + ".images[]") for x in d.get("images") or [])),
            volumes=tuple(VolumeItem(check_str(v.get("name"), "volume name"), str(v.get("volume") or ""),
                                     _strs(v, "users", w))
                          for v in (check_object(x, w + ".volumes[]") for x in d.get("volumes") or [])),
            files=tuple(FilesItem(check_str(f.get("path"), "files path"), check_int(f.get("size") or 0, "size", 0))
                        for f in (check_object(x, w + ".files[]") for x in d.get("files") or [])),
            other_envs=_strs(d, "other_envs", w),
        )


@dataclass(frozen=True)
class RemoveRequest:
    """What to remove on one node: container names, image ids, volume names, files paths
    ("project/service"). `volumes` is refused unless `allow_volumes` is set."""
    project: str
    env: str
    containers: Tuple[str, ...] = ()
    images: Tuple[str, ...] = ()
    volumes: Tuple[str, ...] = ()
    files: Tuple[str, ...] = ()
    allow_volumes: bool = False

    @property
    def empty(self) -> bool:
        return not (self.containers or self.images or self.volumes or self.files)

    def items(self, kind: str) -> Tuple[str, ...]:
        return getattr(self, kind)

    def to_dict(self) -> Dict[str, Any]:
        return {"project": self.project, "env": self.env, "containers": list(self.containers),
                "images": list(self.images), "volumes": list(self.volumes), "files": list(self.files),
                "allow_volumes": self.allow_volumes}

    @classmethod
    def parse(cls, args: Dict[str, Any]) -> "RemoveRequest":
        w = "prune_remove"
        check_keys(args, ("project", "env") + KINDS + ("allow_volumes",), w)
        project = check_project(require(args, "project", w))
        req = cls(project, check_name(require(args, "env", w), "env"), _strs(args, "containers", w),
                  _strs(args, "images", w), _strs(args, "volumes", w), _strs(args, "files", w),
                  check_bool(args.get("allow_volumes", False), "allow_volumes"))
        if req.volumes and not req.allow_volumes:
            raise BadRequest("prune_remove: volumes are removed only with allow_volumes (data!)")
        for path in req.files:
            p, sep, s = path.partition("/")
            if p != project or not sep or not s or s.split("/")[0] in (".", ".."):
                raise BadRequest("prune_remove: files %r must be %s/SERVICE" % (path, project))
            if "/" in s and not is_leftover(path):
                raise BadRequest("prune_remove: files %r must be %s/SERVICE or a leftover "
                                 "%s/SERVICE/secrets/NAME.tmp-PID" % (path, project, project))
        return req


@dataclass(frozen=True)
class Refused:
    kind: str
    name: str
    reason: str


@dataclass(frozen=True)
class RemoveResult:
    removed: Dict[str, Tuple[str, ...]] = field(default_factory=dict)  # kind -> names, in the request's terms
    refused: Tuple[Refused, ...] = ()
    reclaimed: int = 0  # bytes: the removed images' sizes and files

    def to_dict(self) -> Dict[str, Any]:
        return {"removed": {k: list(self.removed.get(k, ())) for k in KINDS},
                "refused": [{"kind": r.kind, "name": r.name, "reason": r.reason} for r in self.refused],
                "reclaimed": self.reclaimed}

    @classmethod
    def parse(cls, d: Any) -> "RemoveResult":
        d = check_object(d, "prune_remove result")
        removed = check_object(d.get("removed") or {}, "removed")
        refused: List[Refused] = []
        for r in d.get("refused") or []:
            r = check_object(r, "refused[]")
            refused.append(Refused(str(r.get("kind") or ""), str(r.get("name") or ""), str(r.get("reason") or "")))
        return cls({k: _strs(removed, k, "removed") for k in KINDS}, tuple(refused),
                   check_int(d.get("reclaimed") or 0, "reclaimed", 0))

"""The deploy path's typed requests and results: what `orch up`, `down`, `ps` and the
rollback send to the agent and what they get back.

Each request is a frozen dataclass with `to_dict()` (the JSON the controller sends) and
`from_dict()` (the agent's parse: every field checked, an unknown key or a bad value is
`BadRequest`). Each result has the same pair the other way round: the agent answers
`to_dict()`, the controller reads `from_dict()`.

    state     StateRequest    -> StateResult     containers (ContainerState), ingress, owners, ...
    rollout   RolloutRequest  -> RolloutResult   one batch: each replica with its `order`
    restore   RestoreRequest  -> RestoreResult   put replicas back on their kept containers
    retire    RetireRequest   -> RetireResult    stop and keep replicas no longer wanted
    discard   DiscardRequest  -> DiscardResult   remove the kept containers (release live)
    remove    RemoveRequest   -> RemoveResult    remove a service's or project's objects

The per-replica `order` of a rollout comes from the controller's plan
(orchestrator.core.rollout_plan); the agent does not decide it again (agent.rollout).
Stdlib only, no I/O, Python 3.9: the controller imports it, the nodes run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from agent.wire.ingress import IngressSettings
from agent.wire.protocol import (
    BadRequest,
    canonical_registry,
    check_bool,
    check_int,
    check_keys,
    check_name,
    check_number,
    check_object,
    check_project,
    check_str,
    image_registry,
    require,
)
from agent.wire.spec import ServiceSpec

STOP_FIRST, START_FIRST = "stop-first", "start-first"
ORDERS = (STOP_FIRST, START_FIRST)
# What a rollout (or `apply`) waits for before it answers (the controller asks for the
# strongest depends_on condition any dependent of the service has):
#   running    running (for min_running, or healthy when it has a healthcheck); a
#              one-shot (restart no / on-failure) that exits 0 counts as done
#   healthy    healthy; a container without any healthcheck is an error
#   completed  exited with code 0 (service_completed_successfully), within `timeout`
WAIT_MODES = ("running", "healthy", "completed")
DEFAULT_MIN_RUNNING = 1.0  # a container without healthcheck must stay up this long
DEFAULT_HEALTH_MARGIN = 5.0
DEFAULT_COMPLETION_TIMEOUT = 600.0
MAX_REPLICA = 10000


def pull_auth(value: Any, image: str) -> Optional[Dict[str, str]]:
    """The pull credentials of one image. The engine sends them to whatever registry the
    image names, so they are refused unless their serveraddress is that registry."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("auth must be an object")
    check_keys(value, ("username", "password", "serveraddress", "identitytoken"), "auth")
    auth = {k: check_str(v, "auth." + k) for k, v in value.items() if v}
    if not auth:
        return None
    server = auth.get("serveraddress", "")
    registry = image_registry(image)
    if canonical_registry(server) != registry:
        # Names the addresses only: never a user name or password in an error.
        raise BadRequest(
            "auth.serveraddress %r is not the registry of image %s (%s): credentials go only to their own "
            "registry" % (server, image, registry), {"image": image, "registry": registry})
    return auth


def _obj(d: Any, what: str, keys: Tuple[str, ...]) -> Dict[str, Any]:
    if not isinstance(d, dict):
        raise BadRequest("%s must be an object" % what)
    check_keys(d, keys, what)
    return d


def _env(d: Dict[str, Any], what: str) -> str:
    return check_name(d["env"], what + ".env") if d.get("env") else ""


def _opt_name(d: Dict[str, Any], key: str, what: str) -> Optional[str]:
    return check_name(d[key], "%s.%s" % (what, key)) if d.get(key) else None


def _replicas(value: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(value, list):
        raise BadRequest("%s must be a list of replica numbers" % what)
    return tuple(sorted(set(check_int(r, "%s[%d]" % (what, i), 1, MAX_REPLICA) for i, r in enumerate(value))))


def _str(d: Dict[str, Any], key: str, what: str) -> str:
    value = d.get(key)
    return "" if value is None else check_str(value, "%s.%s" % (what, key))


def _opt_str(value: Any, what: str) -> Optional[str]:
    return None if value is None else check_str(value, what)


def _ingress_dict(ingress: Optional[IngressSettings]) -> Optional[Dict[str, Any]]:
    return ingress.to_dict() if ingress is not None else None


# ----------------------------------------------------------------------------- state


@dataclass(frozen=True)
class StateRequest:
    """`state`: the containers of a project (or of everything orch made), optionally of
    one service and environment; with `mesh`, that environment's mesh on the node."""

    project: Optional[str] = None
    service: Optional[str] = None
    env: Optional[str] = None
    mesh: str = ""

    @classmethod
    def from_dict(cls, d: Any, what: str = "state") -> "StateRequest":
        d = _obj(d, what, ("project", "service", "env", "mesh"))
        return cls(project=check_project(d["project"], what + ".project") if d.get("project") else None,
                   service=_opt_name(d, "service", what), env=_opt_name(d, "env", what),
                   mesh=check_name(d["mesh"], what + ".mesh") if d.get("mesh") else "")

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"project": self.project}
        if self.service:
            out["service"] = self.service
        if self.env:
            out["env"] = self.env
        if self.mesh:
            out["mesh"] = self.mesh
        return out


@dataclass(frozen=True)
class ContainerState:
    """One container as `state` reports it (agent.engine.ContainerInfo.summary)."""

    id: str
    name: str
    project: str = ""
    service: str = ""
    replica: int = 0
    env: str = ""
    release: str = ""
    config_hash: str = ""
    config_parts: Dict[str, str] = field(default_factory=dict)
    image: str = ""
    image_id: str = ""
    state: str = ""
    health: str = ""
    exit_code: int = 0
    restart_count: int = 0
    ports: List[Dict[str, Any]] = field(default_factory=list)
    created: str = ""
    started_at: str = ""
    finished_at: str = ""
    networks: List[Any] = field(default_factory=list)
    retired: bool = False

    _STR = ("id", "name", "project", "service", "env", "release", "config_hash", "image", "image_id", "state",
            "health", "created", "started_at", "finished_at")

    @classmethod
    def from_dict(cls, d: Any, what: str = "container") -> "ContainerState":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object" % what)
        kw: Dict[str, Any] = {k: _str(d, k, what) for k in cls._STR if k in d}
        kw["id"], kw["name"] = kw.get("id", ""), kw.get("name", "")
        for k in ("replica", "exit_code", "restart_count"):
            if d.get(k) is not None:
                kw[k] = check_int(d[k], "%s.%s" % (what, k))
        ports = [] if d.get("ports") is None else d["ports"]
        if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
            raise BadRequest("%s.ports must be a list of objects" % what)
        nets = [] if d.get("networks") is None else d["networks"]
        if not isinstance(nets, list):
            raise BadRequest("%s.networks must be a list" % what)
        parts = {} if d.get("config_parts") is None else d["config_parts"]
        if not isinstance(parts, dict):
            raise BadRequest("%s.config_parts must be an object" % what)
        return cls(ports=[dict(p) for p in ports], networks=list(nets),
                   config_parts={str(k): str(v) for k, v in parts.items()},
                   retired=check_bool(d.get("retired", False), what + ".retired"), **kw)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "name": self.name, "project": self.project, "service": self.service,
                "replica": self.replica, "env": self.env, "release": self.release, "config_hash": self.config_hash,
                "config_parts": dict(self.config_parts), "image": self.image, "image_id": self.image_id,
                "state": self.state, "health": self.health, "exit_code": self.exit_code,
                "restart_count": self.restart_count, "ports": [dict(p) for p in self.ports], "created": self.created,
                "started_at": self.started_at, "finished_at": self.finished_at, "networks": list(self.networks),
                "retired": self.retired}


@dataclass(frozen=True)
class StateResult:
    """`state`'s answer. With a project: its ingress frontends on the node, which
    environments own objects of it (agent.owner) and the host ports other projects hold
    (None without a project); with a mesh, the node's MeshState as a dict."""

    containers: Tuple[ContainerState, ...] = ()
    ingress: Optional[Dict[str, Any]] = None
    owners: Optional[Dict[str, Any]] = None
    ports_elsewhere: Optional[List[Any]] = None
    mesh: Optional[Dict[str, Any]] = None

    @classmethod
    def from_dict(cls, d: Any, what: str = "state") -> "StateResult":
        d = _obj(d, what, ("containers", "ingress", "owners", "ports_elsewhere", "mesh"))
        raw = _list(d, "containers", what)
        for key in ("ingress", "owners", "mesh"):
            if d.get(key) is not None:
                check_object(d[key], "%s.%s" % (what, key))
        if d.get("ports_elsewhere") is not None and not isinstance(d["ports_elsewhere"], list):
            raise BadRequest("%s.ports_elsewhere must be a list" % what)
        return cls(containers=tuple(ContainerState.from_dict(c, "%s.containers[%d]" % (what, i))
                                    for i, c in enumerate(raw)),
                   ingress=d.get("ingress"), owners=d.get("owners"), ports_elsewhere=d.get("ports_elsewhere"),
                   mesh=d.get("mesh"))

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"containers": [c.to_dict() for c in self.containers]}
        for key in ("ingress", "owners", "ports_elsewhere", "mesh"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


# ----------------------------------------------------------------------------- rollout


@dataclass(frozen=True)
class ReplicaOrder:
    """One replica of a rollout batch and how it is replaced (from the plan)."""

    replica: int
    order: str = STOP_FIRST

    @classmethod
    def from_dict(cls, d: Any, what: str, default_order: str = STOP_FIRST) -> "ReplicaOrder":
        if not isinstance(d, dict):  # a bare replica number: the request's `order`
            return cls(check_int(d, what, 1, MAX_REPLICA), default_order)
        check_keys(d, ("replica", "order"), what)
        return cls(check_int(require(d, "replica", what), what + ".replica", 1, MAX_REPLICA),
                   check_order(d.get("order", default_order), what + ".order"))

    def to_dict(self) -> Dict[str, Any]:
        return {"replica": self.replica, "order": self.order}


def check_order(value: Any, what: str = "order") -> str:
    if value not in ORDERS:
        raise BadRequest("%s must be one of %s, not %r" % (what, ", ".join(ORDERS), value))
    return value


@dataclass(frozen=True)
class RolloutRequest:
    """`rollout`: replace `replicas` of the service of `spec` on the node, each in its
    own order. An empty `replicas` only waits for the spec's replicas and converges
    the service's ingress. `spec` is the ServiceSpec's wire form (`service_spec` its
    parse, set by from_dict)."""

    spec: Dict[str, Any]
    replicas: Tuple[ReplicaOrder, ...] = ()
    wait: str = "running"
    min_running: float = DEFAULT_MIN_RUNNING
    health_margin: float = DEFAULT_HEALTH_MARGIN
    timeout: float = DEFAULT_COMPLETION_TIMEOUT
    min_healthy: float = 0.0
    deadline: Optional[float] = None
    batch: int = 0
    auth: Optional[Dict[str, str]] = None
    ingress: Optional[IngressSettings] = None
    service_spec: Optional[ServiceSpec] = field(default=None, compare=False, repr=False)

    KEYS = ("spec", "replicas", "order", "wait", "min_running", "health_margin", "timeout", "min_healthy",
            "deadline", "auth", "ingress", "batch")

    @classmethod
    def from_dict(cls, d: Any, what: str = "rollout") -> "RolloutRequest":
        d = _obj(d, what, cls.KEYS)
        svc = ServiceSpec.from_dict(require(d, "spec", what))
        # `order` (default stop-first) is for replicas sent as bare numbers; the controller
        # sends {replica, order} for each.
        default = check_order(d.get("order") or STOP_FIRST, "order")
        raw = d.get("replicas", list(svc.replicas))
        if not isinstance(raw, list):
            raise BadRequest("replicas must be a list of replica numbers or {replica, order}")
        items = [ReplicaOrder.from_dict(r, "replicas[%d]" % i, default) for i, r in enumerate(raw)]
        by_replica: Dict[int, ReplicaOrder] = {}
        for item in items:
            if by_replica.setdefault(item.replica, item).order != item.order:
                raise BadRequest("replicas: replica %d is sent twice with different orders" % item.replica)
        extra = sorted(r for r in by_replica if r not in svc.replicas)
        if extra:
            raise BadRequest("replicas %s are not replicas of the spec (%s)" % (extra, svc.replicas))
        wait = d.get("wait") or "running"
        if wait not in WAIT_MODES:
            raise BadRequest("wait must be one of %s" % ", ".join(WAIT_MODES))
        return cls(
            spec=d["spec"], replicas=tuple(by_replica[r] for r in sorted(by_replica)), wait=wait,
            min_running=check_number(d.get("min_running", DEFAULT_MIN_RUNNING), "min_running"),
            health_margin=check_number(d.get("health_margin", DEFAULT_HEALTH_MARGIN), "health_margin"),
            timeout=check_number(d.get("timeout", DEFAULT_COMPLETION_TIMEOUT), "timeout"),
            min_healthy=check_number(d.get("min_healthy", 0), "min_healthy"),
            deadline=check_number(d["deadline"], "deadline") if d.get("deadline") is not None else None,
            batch=check_int(d.get("batch", 0), "batch", 0),
            auth=pull_auth(d.get("auth"), svc.container.image),
            ingress=IngressSettings.parse(d.get("ingress")), service_spec=svc)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"spec": self.spec, "replicas": [r.to_dict() for r in self.replicas],
                               "wait": self.wait, "min_running": self.min_running,
                               "health_margin": self.health_margin, "timeout": self.timeout,
                               "min_healthy": self.min_healthy, "batch": self.batch,
                               "ingress": _ingress_dict(self.ingress)}
        if self.deadline is not None:
            out["deadline"] = self.deadline
        if self.auth:
            out["auth"] = dict(self.auth)
        return out

    def order_of(self, replica: int) -> str:
        return next((r.order for r in self.replicas if r.replica == replica), STOP_FIRST)


@dataclass(frozen=True)
class KeptContainer:
    """The container a replica had before: stopped (or still serving) under its kept name."""

    id: str
    name: str
    was_running: bool = False
    release: str = ""
    image: str = ""

    @classmethod
    def from_dict(cls, d: Any, what: str) -> "KeptContainer":
        d = _obj(d, what, ("id", "name", "was_running", "release", "image"))
        return cls(check_str(require(d, "id", what), what + ".id"), check_str(require(d, "name", what), what + ".name"),
                   check_bool(d.get("was_running", False), what + ".was_running"), _str(d, "release", what),
                   _str(d, "image", what))

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "name": self.name, "was_running": self.was_running, "release": self.release,
                "image": self.image}


@dataclass(frozen=True)
class NewContainer:
    id: str
    name: str

    @classmethod
    def from_dict(cls, d: Any, what: str) -> "NewContainer":
        d = _obj(d, what, ("id", "name"))
        return cls(check_str(require(d, "id", what), what + ".id"), check_str(require(d, "name", what), what + ".name"))

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True)
class ReplicaChange:
    """What a rollout (or retire) did to one replica: the journal of a rollback."""

    replica: int
    old: Optional[KeptContainer] = None  # None: the replica is new in this release
    new: Optional[NewContainer] = None  # None: retired (no successor on the node)

    @classmethod
    def from_dict(cls, d: Any, what: str) -> "ReplicaChange":
        d = _obj(d, what, ("replica", "old", "new"))
        return cls(check_int(require(d, "replica", what), what + ".replica", 1, MAX_REPLICA),
                   KeptContainer.from_dict(d["old"], what + ".old") if d.get("old") is not None else None,
                   NewContainer.from_dict(d["new"], what + ".new") if d.get("new") is not None else None)

    def to_dict(self) -> Dict[str, Any]:
        return {"replica": self.replica, "old": self.old.to_dict() if self.old is not None else None,
                "new": self.new.to_dict() if self.new is not None else None}


@dataclass(frozen=True)
class ContainerOutcome:
    """A replica of the spec after the rollout: created, recreated or unchanged."""

    replica: int
    id: str
    name: str
    action: str
    state: str = ""
    health: str = ""

    ACTIONS = ("created", "recreated", "unchanged")

    @classmethod
    def from_dict(cls, d: Any, what: str) -> "ContainerOutcome":
        d = _obj(d, what, ("replica", "id", "name", "action", "state", "health"))
        action = require(d, "action", what)
        if action not in cls.ACTIONS:
            raise BadRequest("%s.action must be one of %s" % (what, ", ".join(cls.ACTIONS)))
        return cls(check_int(require(d, "replica", what), what + ".replica", 1, MAX_REPLICA),
                   check_str(require(d, "id", what), what + ".id"), check_str(require(d, "name", what), what + ".name"),
                   action, _str(d, "state", what), _str(d, "health", what))

    def to_dict(self) -> Dict[str, Any]:
        return {"replica": self.replica, "id": self.id, "name": self.name, "action": self.action,
                "state": self.state, "health": self.health}


@dataclass(frozen=True)
class RolloutResult:
    service: str
    changed: bool = False
    batch: int = 0
    containers: Tuple[ContainerOutcome, ...] = ()
    replaced: Tuple[ReplicaChange, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, what: str = "rollout result") -> "RolloutResult":
        d = _obj(d, what, ("service", "changed", "batch", "containers", "replaced"))
        return cls(check_name(require(d, "service", what), what + ".service"),
                   check_bool(d.get("changed", False), what + ".changed"), check_int(d.get("batch", 0), what + ".batch", 0),
                   tuple(ContainerOutcome.from_dict(c, "%s.containers[%d]" % (what, i))
                         for i, c in enumerate(_list(d, "containers", what))),
                   tuple(ReplicaChange.from_dict(c, "%s.replaced[%d]" % (what, i))
                         for i, c in enumerate(_list(d, "replaced", what))))

    def to_dict(self) -> Dict[str, Any]:
        return {"service": self.service, "changed": self.changed, "batch": self.batch,
                "containers": [c.to_dict() for c in self.containers], "replaced": [r.to_dict() for r in self.replaced]}


def _list(d: Dict[str, Any], key: str, what: str) -> List[Any]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("%s.%s must be a list" % (what, key))
    return value


# ----------------------------------------------------------------------------- restore, retire


@dataclass(frozen=True)
class RestoreItem:
    replica: int
    was_running: bool = True

    @classmethod
    def from_dict(cls, d: Any, what: str) -> "RestoreItem":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object {replica, was_running}" % what)
        check_keys(d, ("replica", "was_running"), what)
        return cls(check_int(require(d, "replica", what), what + ".replica", 1, MAX_REPLICA),
                   check_bool(d.get("was_running", True), what + ".was_running"))

    def to_dict(self) -> Dict[str, Any]:
        return {"replica": self.replica, "was_running": self.was_running}


@dataclass(frozen=True)
class RestoreRequest:
    """`restore`: put replicas replaced by earlier rollouts of the release back on their
    kept containers (started again when they ran)."""

    project: str
    service: str
    replicas: Tuple[RestoreItem, ...]
    env: str = ""
    ingress: Optional[IngressSettings] = None

    @classmethod
    def from_dict(cls, d: Any, what: str = "restore") -> "RestoreRequest":
        d = _obj(d, what, ("project", "service", "env", "replicas", "ingress"))
        raw = require(d, "replicas", what)
        if not isinstance(raw, list):
            raise BadRequest("replicas must be a list of {replica, was_running}")
        return cls(check_project(require(d, "project", what)), check_name(require(d, "service", what), "service"),
                   tuple(RestoreItem.from_dict(r, "replicas[%d]" % i) for i, r in enumerate(raw)), _env(d, what),
                   IngressSettings.parse(d.get("ingress")))

    def to_dict(self) -> Dict[str, Any]:
        return {"project": self.project, "service": self.service, "env": self.env,
                "ingress": _ingress_dict(self.ingress), "replicas": [r.to_dict() for r in self.replicas]}


@dataclass(frozen=True)
class Restored:
    replica: int
    removed: Optional[str] = None  # the new container's id, when it was removed
    restored: Optional[str] = None  # the kept container's id, when it is back

    @classmethod
    def from_dict(cls, d: Any, what: str) -> "Restored":
        d = _obj(d, what, ("replica", "removed", "restored"))
        return cls(check_int(require(d, "replica", what), what + ".replica", 1, MAX_REPLICA),
                   _opt_str(d.get("removed"), what + ".removed"), _opt_str(d.get("restored"), what + ".restored"))

    def to_dict(self) -> Dict[str, Any]:
        return {"replica": self.replica, "removed": self.removed, "restored": self.restored}


@dataclass(frozen=True)
class RestoreResult:
    service: str
    restored: Tuple[Restored, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, what: str = "restore result") -> "RestoreResult":
        d = _obj(d, what, ("service", "restored"))
        return cls(check_name(require(d, "service", what), what + ".service"),
                   tuple(Restored.from_dict(r, "%s.restored[%d]" % (what, i))
                         for i, r in enumerate(_list(d, "restored", what))))

    def to_dict(self) -> Dict[str, Any]:
        return {"service": self.service, "restored": [r.to_dict() for r in self.restored]}


@dataclass(frozen=True)
class RetireRequest:
    """`retire`: stop and keep (renamed) `replicas` of the service on the node (None: all)."""

    project: str
    service: str
    env: str = ""
    replicas: Optional[Tuple[int, ...]] = None
    ingress: Optional[IngressSettings] = None

    @classmethod
    def from_dict(cls, d: Any, what: str = "retire") -> "RetireRequest":
        d = _obj(d, what, ("project", "service", "env", "replicas", "ingress"))
        wanted = d.get("replicas")
        if wanted is not None and not isinstance(wanted, list):
            raise BadRequest("replicas must be a list of replica numbers (or absent: all)")
        return cls(check_project(require(d, "project", what)), check_name(require(d, "service", what), "service"),
                   _env(d, what), None if wanted is None else _replicas(wanted, "replicas"),
                   IngressSettings.parse(d.get("ingress")))

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"project": self.project, "service": self.service, "env": self.env,
                               "ingress": _ingress_dict(self.ingress)}
        if self.replicas is not None:
            out["replicas"] = list(self.replicas)
        return out


@dataclass(frozen=True)
class RetireResult:
    service: str
    retired: Tuple[ReplicaChange, ...] = ()  # each with `old` only

    @classmethod
    def from_dict(cls, d: Any, what: str = "retire result") -> "RetireResult":
        d = _obj(d, what, ("service", "retired"))
        return cls(check_name(require(d, "service", what), what + ".service"),
                   tuple(ReplicaChange.from_dict(r, "%s.retired[%d]" % (what, i))
                         for i, r in enumerate(_list(d, "retired", what))))

    def to_dict(self) -> Dict[str, Any]:
        return {"service": self.service, "retired": [r.to_dict() for r in self.retired]}


# ----------------------------------------------------------------------------- discard, remove


@dataclass(frozen=True)
class RemovedContainer:
    id: str
    name: str
    service: str = ""
    replica: int = 0

    @classmethod
    def from_dict(cls, d: Any, what: str) -> "RemovedContainer":
        d = _obj(d, what, ("id", "name", "service", "replica"))
        return cls(check_str(require(d, "id", what), what + ".id"), check_str(require(d, "name", what), what + ".name"),
                   _str(d, "service", what), check_int(d.get("replica") or 0, what + ".replica", 0))

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "name": self.name, "service": self.service, "replica": self.replica}


@dataclass(frozen=True)
class DiscardRequest:
    """`discard`: remove the containers kept for a rollback (the release is live)."""

    project: str
    service: Optional[str] = None
    env: str = ""

    @classmethod
    def from_dict(cls, d: Any, what: str = "discard") -> "DiscardRequest":
        d = _obj(d, what, ("project", "service", "env"))
        return cls(check_project(require(d, "project", what)), _opt_name(d, "service", what), _env(d, what))

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"project": self.project, "env": self.env}
        if self.service:
            out["service"] = self.service
        return out


@dataclass(frozen=True)
class DiscardResult:
    removed: Tuple[RemovedContainer, ...] = ()
    pruned_files: Tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, what: str = "discard result") -> "DiscardResult":
        d = _obj(d, what, ("removed", "pruned_files"))
        return cls(tuple(RemovedContainer.from_dict(r, "%s.removed[%d]" % (what, i))
                         for i, r in enumerate(_list(d, "removed", what))),
                   tuple(check_str(f, what + ".pruned_files[]") for f in _list(d, "pruned_files", what)))

    def to_dict(self) -> Dict[str, Any]:
        return {"removed": [r.to_dict() for r in self.removed], "pruned_files": list(self.pruned_files)}


@dataclass(frozen=True)
class RemoveRequest:
    """`remove`: a project's (or one service's, or some replicas') containers; with the
    whole project also its networks (remove_networks, default: when whole), files and,
    with remove_volumes, its volumes. Only `env`'s objects."""

    project: str
    service: Optional[str] = None
    replicas: Optional[Tuple[int, ...]] = None
    env: str = ""
    remove_volumes: bool = False
    remove_networks: Optional[bool] = None  # None: when the whole project goes

    @classmethod
    def from_dict(cls, d: Any, what: str = "remove") -> "RemoveRequest":
        d = _obj(d, what, ("project", "service", "replicas", "env", "remove_volumes", "remove_networks"))
        return cls(check_project(require(d, "project", what)), _opt_name(d, "service", what),
                   None if d.get("replicas") is None else _replicas(d["replicas"], "replicas"), _env(d, what),
                   check_bool(d.get("remove_volumes", False), "remove_volumes"),
                   None if d.get("remove_networks") is None else check_bool(d["remove_networks"], "remove_networks"))

    @property
    def whole(self) -> bool:
        return self.service is None and self.replicas is None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"project": self.project, "env": self.env}
        if self.service:
            out["service"] = self.service
        if self.replicas is not None:
            out["replicas"] = list(self.replicas)
        if self.remove_volumes:
            out["remove_volumes"] = True
        if self.remove_networks is not None:
            out["remove_networks"] = self.remove_networks
        return out


@dataclass(frozen=True)
class RemoveResult:
    removed: Tuple[RemovedContainer, ...] = ()
    networks: Tuple[str, ...] = ()
    volumes: Tuple[str, ...] = ()
    ingress: Tuple[str, ...] = ()  # services whose ingress frontend went

    @classmethod
    def from_dict(cls, d: Any, what: str = "remove result") -> "RemoveResult":
        d = _obj(d, what, ("removed", "networks", "volumes", "ingress"))
        names = {k: tuple(check_str(x, "%s.%s[]" % (what, k)) for x in _list(d, k, what))
                 for k in ("networks", "volumes", "ingress")}
        return cls(tuple(RemovedContainer.from_dict(r, "%s.removed[%d]" % (what, i))
                         for i, r in enumerate(_list(d, "removed", what))), **names)

    def to_dict(self) -> Dict[str, Any]:
        return {"removed": [r.to_dict() for r in self.removed], "networks": list(self.networks),
                "volumes": list(self.volumes), "ingress": list(self.ingress)}

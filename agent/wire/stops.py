"""`await_stops`: the typed request and result for waiting on the stops a rollout left in
the background (agent.stops).

A start-first rollout stops the old container of a replica once it is out of rotation
and drained, in a thread of the agent, and answers without waiting: the next batch
starts at once. The controller calls `await_stops` on the nodes where that happened once
the last batch is through (orchestrator.app.deploy), so `orch up` still ends with every
kept container stopped, as when the stop was inside the batch.

    await_stops   AwaitStopsRequest -> AwaitStopsResult   each kept container of the
                  project (in env) that was still stopping, or still running, is stopped
                  when it answers; `stopped` says which, how, and how long it was waited for

Stdlib only, no I/O, Python 3.9: the controller imports it, the nodes run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

from agent.wire.protocol import BadRequest, check_int, check_keys, check_name, check_number, check_project, \
    check_str, require

AWAIT_STOPS = "await_stops"
# How a kept container came to be stopped when await_stops answered:
BACKGROUND = "background"  # its background stop finished (before or while await_stops waited)
NOW = "now"  # it was still running with no stop under way (e.g. the stopping thread died): stopped then
HOW = (BACKGROUND, NOW)


def _obj(d: Any, what: str, keys: Tuple[str, ...]) -> Dict[str, Any]:
    if not isinstance(d, dict):
        raise BadRequest("%s must be an object" % what)
    check_keys(d, keys, what)
    return d


@dataclass(frozen=True)
class AwaitStopsRequest:
    project: str
    env: str = ""

    @classmethod
    def from_dict(cls, d: Any, what: str = AWAIT_STOPS) -> "AwaitStopsRequest":
        d = _obj(d, what, ("project", "env"))
        return cls(check_project(require(d, "project", what)),
                   check_name(d["env"], what + ".env") if d.get("env") else "")

    def to_dict(self) -> Dict[str, Any]:
        return {"project": self.project, "env": self.env}


@dataclass(frozen=True)
class StoppedContainer:
    id: str
    name: str
    service: str
    replica: int
    how: str  # BACKGROUND | NOW
    seconds: float  # the stop's own duration (from the stop signal to its end), when known; else 0
    waited: float  # how long await_stops waited for it

    @classmethod
    def from_dict(cls, d: Any, what: str) -> "StoppedContainer":
        d = _obj(d, what, ("id", "name", "service", "replica", "how", "seconds", "waited"))
        how = check_str(require(d, "how", what), what + ".how")
        if how not in HOW:
            raise BadRequest("%s.how must be one of %s, not %r" % (what, ", ".join(HOW), how))
        return cls(check_str(require(d, "id", what), what + ".id"), check_str(require(d, "name", what), what + ".name"),
                   check_str(d.get("service") or "", what + ".service"),
                   check_int(d.get("replica") or 0, what + ".replica", 0), how,
                   float(check_number(d.get("seconds") or 0, what + ".seconds", 0)),
                   float(check_number(d.get("waited") or 0, what + ".waited", 0)))

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "name": self.name, "service": self.service, "replica": self.replica, "how": self.how,
                "seconds": self.seconds, "waited": self.waited}


@dataclass(frozen=True)
class AwaitStopsResult:
    stopped: Tuple[StoppedContainer, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, what: str = "await_stops result") -> "AwaitStopsResult":
        d = _obj(d, what, ("stopped",))
        items = d.get("stopped") or []
        if not isinstance(items, list):
            raise BadRequest("%s.stopped must be a list" % what)
        return cls(tuple(StoppedContainer.from_dict(x, "%s.stopped[%d]" % (what, i)) for i, x in enumerate(items)))

    def to_dict(self) -> Dict[str, Any]:
        return {"stopped": [s.to_dict() for s in self.stopped]}

"""The wire protocol between controller and agent, and argument validation.

Framing (one JSON object per line, UTF-8):

  controller -> agent   {"v": 1, "id": 7, "op": "apply", "args": {...}}
                        {"v": 1, "id": 8, "op": "cancel", "args": {"target": 7}}
  agent -> controller   {"id": 7, "event": {"type": "progress", ...}}   zero or more
                        {"id": 7, "result": {...}}                       exactly one of
                        {"id": 7, "error": {"kind", "message", "details"}}  these two

Every request carries the protocol version; a mismatch is answered with an error of
kind "protocol" and nothing is done. Requests are handled one at a time, in order;
"cancel" is the exception: it is acted on at once (it stops a streaming operation such
as logs --follow, whose result then says "cancelled").

The controller's lease: the controller sends {"v": 1, "id": N, "op": "ping"} at least
every PING_SECONDS from a thread of its own (never answered; taken off the input at
once, like "cancel"). An agent that hears nothing at all from its controller for
LEASE_SECONDS treats it as gone, as on end of input: it frees its deploy locks, stops
the running operation (which puts its batch back) and ends. So a controller that lost
its network or power frees the environment within LEASE_SECONDS, whatever TCP and
sshd's ClientAlive settings would take; a controller that is merely busy keeps it.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from typing import Any, Dict, Iterable, List, Optional

PROTOCOL_VERSION = 1
PING = "ping"
PING_SECONDS = 5.0
LEASE_SECONDS = 30.0  # several missed pings: a busy controller or a slow link never loses it
LEASE_EXPIRED = "lease_expired"  # error kind: said (if it still can) by an agent giving up

# Error kinds the controller may branch on; anything else is "internal".
BAD_REQUEST = "bad_request"
PROTOCOL = "protocol"
NOT_FOUND = "not_found"
CONFLICT = "conflict"
ENGINE = "engine"
PULL = "pull"
EXITED = "exited"
UNHEALTHY = "unhealthy"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
INTERNAL = "internal"


class AgentError(Exception):
    """An error the agent reports to the controller as {"error": {...}}."""

    def __init__(self, kind: str, message: str, details: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "details": self.details}


class BadRequest(AgentError):
    def __init__(self, message: str, details: Optional[Dict[str, Any]] = None):
        super().__init__(BAD_REQUEST, message, details)


# ----------------------------------------------------------------------------- framing


def encode(obj: Dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str) + "\n").encode("utf-8")


def request(req_id: int, op: str, args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "op": op, "args": args or {}}


def event(req_id: Any, type_: str, **data: Any) -> Dict[str, Any]:
    body = {"type": type_}
    body.update(data)
    return {"id": req_id, "event": body}


def result(req_id: Any, data: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": req_id, "result": data}


def error(req_id: Any, err: AgentError) -> Dict[str, Any]:
    return {"id": req_id, "error": err.to_dict()}


def parse_request(line: bytes) -> Dict[str, Any]:
    """Decode and check one request line; raises AgentError (the id is kept if readable)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("request is not valid JSON: %s" % exc)
    if not isinstance(obj, dict):
        raise BadRequest("request must be a JSON object")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise AgentError(
            PROTOCOL,
            "protocol version mismatch: controller speaks %r, this agent speaks %d"
            % (version, PROTOCOL_VERSION),
            {"agent_protocol": PROTOCOL_VERSION, "request_protocol": version},
        )
    if not isinstance(obj.get("op"), str):
        raise BadRequest("request has no 'op'")
    if not isinstance(obj.get("args", {}), dict):
        raise BadRequest("'args' must be an object")
    obj.setdefault("args", {})
    return obj


# ----------------------------------------------------------------------------- validation

# Compose project names: lowercase letters, digits, dashes, underscores; start alnum.
_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Service / network / volume / secret names as Compose allows them.
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
# Docker's own rule for container names.
_CONTAINER_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}$")
_ENV_KEY_RE = re.compile(r"^[^=\x00]+$")
_HASH_RE = re.compile(r"^[0-9a-f]{12,64}$")
_DIGEST_RE = r"sha256:[0-9a-f]{64}"
# [registry[:port]/]path[:tag][@sha256:digest]; lowercase path components as Docker requires.
_IMAGE_RE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9.-]+(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>" + _DIGEST_RE + r"))?$"
)


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest("%s must be a string, not %s" % (what, _type_name(value)))
    if "\x00" in value:
        raise BadRequest("%s must not contain NUL" % what)
    return value


def check_project(value: Any, what: str = "project") -> str:
    check_str(value, what)
    if not _PROJECT_RE.match(value):
        raise BadRequest(
            "%s %r is not a valid project name (lowercase letters, digits, '-' and '_')" % (what, value)
        )
    return value


def check_name(value: Any, what: str) -> str:
    check_str(value, what)
    if not _NAME_RE.match(value):
        raise BadRequest("%s %r is not a valid name (letters, digits, '.', '-' and '_')" % (what, value))
    return value


def check_container_name(value: Any, what: str = "container") -> str:
    check_str(value, what)
    if not _CONTAINER_RE.match(value):
        raise BadRequest("%s %r is not a valid container name" % (what, value))
    return value.lstrip("/")


def check_hash(value: Any, what: str = "config_hash") -> str:
    check_str(value, what)
    if not _HASH_RE.match(value):
        raise BadRequest("%s must be 12-64 lowercase hex digits" % what)
    return value


def check_image(value: Any, what: str = "image") -> str:
    check_str(value, what)
    if len(value) > 512 or not _IMAGE_RE.match(value):
        raise BadRequest(
            "%s %r is not a valid image reference (repo[:tag] or repo@sha256:<64 hex>)" % (what, value)
        )
    return value


def split_image(ref: str) -> "tuple[str, Optional[str], Optional[str]]":
    """'reg:5000/a/b:1@sha256:..' -> ('reg:5000/a/b', '1', 'sha256:..')."""
    m = _IMAGE_RE.match(ref)
    if m is None:
        raise BadRequest("not a valid image reference: %r" % ref)
    repo = (m.group("registry") + "/" if m.group("registry") else "") + m.group("path")
    return repo, m.group("tag"), m.group("digest")


def check_abs_path(value: Any, what: str, roots: Optional[Iterable[str]] = None) -> str:
    """An absolute, normalised POSIX path; with roots, it must lie under one of them."""
    check_str(value, what)
    if not value.startswith("/"):
        raise BadRequest("%s %r must be an absolute path" % (what, value))
    norm = posixpath.normpath(value)
    if norm != value.rstrip("/") and not (value == "/" and norm == "/"):
        raise BadRequest("%s %r must be normalised (no '.', '..' or '//')" % (what, value))
    if roots is not None:
        roots = list(roots)
        if not any(norm == r or norm.startswith(r.rstrip("/") + "/") for r in roots):
            raise BadRequest("%s %r is outside the allowed roots %s" % (what, value, ", ".join(roots)))
    return norm


def check_int(value: Any, what: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("%s must be an integer, not %s" % (what, _type_name(value)))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadRequest("%s=%d is out of range [%s, %s]" % (what, value, lo, hi))
    return value


def check_number(value: Any, what: str, lo: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest("%s must be a number, not %s" % (what, _type_name(value)))
    if value < lo:
        raise BadRequest("%s must be >= %s" % (what, lo))
    return float(value)


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest("%s must be true or false, not %s" % (what, _type_name(value)))
    return value


def check_str_list(value: Any, what: str) -> List[str]:
    if not isinstance(value, list):
        raise BadRequest("%s must be a list of strings, not %s" % (what, _type_name(value)))
    return [check_str(v, "%s[%d]" % (what, i)) for i, v in enumerate(value)]


def check_str_map(value: Any, what: str) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise BadRequest("%s must be an object of strings, not %s" % (what, _type_name(value)))
    out = {}
    for k, v in value.items():
        check_str(k, "%s key" % what)
        out[k] = check_str(v, "%s[%r]" % (what, k))
    return out


def check_env_map(value: Any, what: str = "environment") -> Dict[str, str]:
    env = check_str_map(value, what)
    for k in env:
        if not _ENV_KEY_RE.match(k):
            raise BadRequest("%s key %r is not a valid variable name" % (what, k))
    return env


def check_keys(obj: Dict[str, Any], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise BadRequest("%s has unknown keys: %s" % (what, ", ".join(unknown)))


def require(obj: Dict[str, Any], key: str, what: str) -> Any:
    if key not in obj or obj[key] is None:
        raise BadRequest("%s needs '%s'" % (what, key))
    return obj[key]


def agent_version() -> str:
    from agent import __version__

    return __version__


def runs_from() -> str:
    """The bundle the agent runs from, or its unpacked copy (orch-agent-<hash>.d) once
    its stub made one (orchestrator.agent_bundle.MAIN_TEMPLATE)."""
    import agent

    return os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__)))


def bundle_name() -> str:
    """The file this agent runs from (orch-agent-<hash>.pyz), or '' when run from source."""
    import sys

    path = sys.argv[0] if sys.argv else ""
    return os.path.basename(path) if path.endswith(".pyz") else ""

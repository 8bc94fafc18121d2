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
import math
import posixpath
import re
from typing import Any, Dict, Iterable, List, Optional

PROTOCOL_VERSION = 1
DEFAULT_STATE_DIR = "/var/lib/orch-agent"  # the agent's state (bundles, ledger, locks) unless --state-dir
PING = "ping"
PING_SECONDS = 5.0
LEASE_SECONDS = 30.0  # several missed pings: a busy controller or a slow link never loses it
LEASE_EXPIRED = "lease_expired"  # error kind: said (if it still can) by an agent giving up

# Bounds of the wire (docs/operations.md, "The agent's wire"). A request carries at most a spec
# with its secret and config files (1 MiB each, base64), so 64 MiB is far above any real
# one; the agent's own lines (release_list, state) stay well under MAX_MESSAGE_BYTES.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_DEPTH = 64  # nesting of JSON arrays and objects in one request
MAX_INT = 2 ** 53 - 1  # JSON's exact integers; the default upper bound of check_int
MAX_NUMBER = 1e9  # seconds (31 years), CPUs...: the default upper bound of check_number
MAX_LOG_LINE = 64 * 1024  # bytes of one emitted log line; longer lines go out in pieces
MAX_MESSAGE_CHARS = 4096  # of an error message (details carry the long parts, e.g. logs)

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
        if len(message) > MAX_MESSAGE_CHARS:  # e.g. a refused megabyte value quoted whole
            half = MAX_MESSAGE_CHARS // 2  # the start names the value, the end says what is wrong
            message = "%s...(%d chars)...%s" % (message[:half], len(message), message[-half:])
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


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not a JSON number" % name)


def int_of_json(text: str) -> int:
    # Python < 3.11 converts any number of digits, in quadratic time.
    if len(text.lstrip("-")) > 20:
        raise ValueError("integer %s... has more than 20 digits" % text[:20])
    return int(text)


def loads(data: bytes, what: str = "request") -> Any:
    """Strict JSON: no NaN or Infinity, nesting at most MAX_DEPTH; raises BadRequest."""
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_int=int_of_json)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("%s is not valid JSON: %s" % (what, str(exc)[:200]))
    except RecursionError:
        raise BadRequest("%s is nested more than %d levels deep" % (what, MAX_DEPTH))
    # Iterative, so a deep value cannot exhaust the stack here either.
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise BadRequest("%s is nested more than %d levels deep" % (what, MAX_DEPTH))
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))
    return obj


def parse_request(line: bytes) -> Dict[str, Any]:
    """Decode and check one request line; raises AgentError (the id is kept if readable)."""
    if len(line) > MAX_REQUEST_BYTES:
        raise BadRequest("request is longer than %d bytes" % MAX_REQUEST_BYTES)
    obj = loads(line)
    if not isinstance(obj, dict):
        raise BadRequest("request must be a JSON object")
    req_id = obj.get("id")
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, int)
                               or not 0 <= req_id <= MAX_INT):
        raise BadRequest("request 'id' must be an integer in [0, %d]" % MAX_INT)
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise AgentError(
            PROTOCOL,
            "protocol version mismatch: controller speaks %s, this agent speaks %d"
            % (show(version), PROTOCOL_VERSION),
            {"agent_protocol": PROTOCOL_VERSION, "request_protocol": version},
        )
    if not isinstance(obj.get("op"), str):
        raise BadRequest("request has no 'op'")
    if not isinstance(obj.get("args", {}), dict):
        raise BadRequest("'args' must be an object")
    obj.setdefault("args", {})
    return obj


# ----------------------------------------------------------------------------- validation

# Patterns are applied with fullmatch: `$` alone also matches before a final newline.

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


def show(value: Any, limit: int = 80) -> str:
    """repr() for an error message, cut short: a request may carry megabytes in one string."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(%d chars)" % len(text)


def check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest("%s must be a string, not %s" % (what, _type_name(value)))
    if "\x00" in value:
        raise BadRequest("%s must not contain NUL" % what)
    return value


def check_project(value: Any, what: str = "project") -> str:
    check_str(value, what)
    if not _PROJECT_RE.fullmatch(value):
        raise BadRequest(
            "%s %s is not a valid project name (lowercase letters, digits, '-' and '_')" % (what, show(value))
        )
    return value


def check_name(value: Any, what: str) -> str:
    check_str(value, what)
    if not _NAME_RE.fullmatch(value):
        raise BadRequest("%s %s is not a valid name (letters, digits, '.', '-' and '_')" % (what, show(value)))
    return value


def check_container_name(value: Any, what: str = "container") -> str:
    check_str(value, what)
    if not _CONTAINER_RE.fullmatch(value):
        raise BadRequest("%s %s is not a valid container name" % (what, show(value)))
    return value.lstrip("/")


def check_hash(value: Any, what: str = "config_hash") -> str:
    check_str(value, what)
    if not _HASH_RE.fullmatch(value):
        raise BadRequest("%s must be 12-64 lowercase hex digits" % what)
    return value


def check_image(value: Any, what: str = "image") -> str:
    check_str(value, what)
    if len(value) > 512 or not _IMAGE_RE.fullmatch(value):
        raise BadRequest(
            "%s %s is not a valid image reference (repo[:tag] or repo@sha256:<64 hex>)" % (what, show(value))
        )
    return value


def split_image(ref: str) -> "tuple[str, Optional[str], Optional[str]]":
    """'reg:5000/a/b:1@sha256:..' -> ('reg:5000/a/b', '1', 'sha256:..')."""
    m = _IMAGE_RE.fullmatch(ref)
    if m is None:
        raise BadRequest("not a valid image reference: %s" % show(ref))
    repo = (m.group("registry") + "/" if m.group("registry") else "") + m.group("path")
    return repo, m.group("tag"), m.group("digest")


DOCKER_HUB = "docker.io"
# Names Docker Hub goes by (the last one is what `docker login` stores as serveraddress).
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/")
_REGISTRY_ADDRESS_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                                  r"(?::[0-9]{1,5})?$")


def canonical_registry(address: str) -> str:
    """A registry's host[:port] as compared for credentials: lowercase, Docker Hub's aliases as docker.io."""
    low = address.strip().lower()
    return DOCKER_HUB if low in _HUB_ALIASES else low


def check_registry_address(value: Any, what: str) -> str:
    """host[:port] as it appears in image names (no scheme, no path); ValueError if not."""
    if not isinstance(value, str) or not _REGISTRY_ADDRESS_RE.match(value):
        raise ValueError("%s %r is not a registry host[:port]" % (what, value))
    return value


def image_registry(ref: str) -> str:
    """The registry an image is pulled from, as Docker decides it: the first path part when it
    looks like a host (a '.' or ':', or localhost), else Docker Hub. 'reg:5000/a/b:1' -> 'reg:5000'."""
    repo = split_image(ref)[0]
    first, sep, _ = repo.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return canonical_registry(first)
    return DOCKER_HUB


def check_abs_path(value: Any, what: str, roots: Optional[Iterable[str]] = None) -> str:
    """An absolute, normalised POSIX path; with roots, it must lie under one of them."""
    check_str(value, what)
    if not value.startswith("/"):
        raise BadRequest("%s %s must be an absolute path" % (what, show(value)))
    norm = posixpath.normpath(value)
    if norm != value.rstrip("/") and not (value == "/" and norm == "/"):
        raise BadRequest("%s %s must be normalised (no '.', '..' or '//')" % (what, show(value)))
    if roots is not None:
        roots = list(roots)
        if not any(norm == r or norm.startswith(r.rstrip("/") + "/") for r in roots):
            raise BadRequest("%s %s is outside the allowed roots %s" % (what, show(value), ", ".join(roots)))
    return norm


def check_int(value: Any, what: str, lo: Optional[int] = None, hi: Optional[int] = MAX_INT) -> int:
    """An int (a bool is not one), within [lo, hi]; huge values are refused by default."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("%s must be an integer, not %s" % (what, _type_name(value)))
    lo_ = -MAX_INT if lo is None else lo
    hi_ = MAX_INT if hi is None else hi
    if value < lo_ or value > hi_:
        raise BadRequest("%s=%s is out of range [%s, %s]" % (what, show(value, 40), lo_, hi_))
    return value


def check_number(value: Any, what: str, lo: float = 0.0, hi: float = MAX_NUMBER) -> float:
    """A finite number (not a bool, not NaN or infinite) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest("%s must be a number, not %s" % (what, _type_name(value)))
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest("%s must be a finite number, not %s" % (what, value))
    if value < lo:
        raise BadRequest("%s must be >= %s" % (what, lo))
    if value > hi:  # (also a huge int, which float() would overflow)
        raise BadRequest("%s must be <= %s" % (what, hi))
    return float(value)


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest("%s must be true or false, not %s" % (what, _type_name(value)))
    return value


def check_list(value: Any, what: str) -> List[Any]:
    if not isinstance(value, list):
        raise BadRequest("%s must be a list, not %s" % (what, _type_name(value)))
    return value


def check_object(value: Any, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("%s must be an object, not %s" % (what, _type_name(value)))
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
        out[k] = check_str(v, "%s[%s]" % (what, show(k)))
    return out


def check_env_map(value: Any, what: str = "environment") -> Dict[str, str]:
    env = check_str_map(value, what)
    for k in env:
        if not _ENV_KEY_RE.fullmatch(k):
            raise BadRequest("%s key %s is not a valid variable name" % (what, show(k)))
    return env


def check_keys(obj: Dict[str, Any], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise BadRequest("%s has unknown keys: %s" % (what, ", ".join(unknown)))


def require(obj: Dict[str, Any], key: str, what: str) -> Any:
    if key not in obj or obj[key] is None:
        raise BadRequest("%s needs '%s'" % (what, key))
    return obj[key]

"""What the keeper (keeper.py) and its clients (kept.py) say to each other over the keeper's
Unix socket, and where that socket lives.

A client connects, sends one request line (JSON: the node, the SSH options, the command to
run, how long to keep the connection), and reads one answer line: {"ok": true, "warm": bool}
or {"ok": false, "error": {kind, message, fix, details}} (the TransportError the keeper's
own connect raised, rebuilt as the same class here). After "ok" the socket is the command's
channel: the client writes its stdin, and reads frames of its output (FRAME_OUT), its
stderr (FRAME_ERR) and, last, its exit status (FRAME_EXIT). Closing the socket closes the
channel: the agent sees the end of its input (and frees a deploy lock it held).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.core.environments import MAX_PERSIST, NodeSpec
from orchestrator.io.transport import errors as E
from orchestrator.io.transport.known_hosts import known_hosts
from orchestrator.io.transport.options import SSHOptions

VERSION = 1
MAX_REQUEST = 64 * 1024
FRAME_OUT, FRAME_ERR, FRAME_EXIT = b"o", b"e", b"x"
HEADER = struct.Struct("!cI")  # kind, length
PERSIST_ENV = "ORCH_SSH_PERSIST"  # seconds; overrides the environment file's ssh.persist ("0": off)
SOCKET_ENV = "ORCH_KEEPER_SOCKET"  # another socket path (tests: a keeper of their own)


def frame(kind: bytes, data: bytes) -> bytes:
    return HEADER.pack(kind, len(data)) + data


def persist_seconds(options: SSHOptions, environ: dict | None = None) -> float:
    """How long the keeper holds a node's connection between commands: ORCH_SSH_PERSIST if
    set (a number of seconds), else the environment file's ssh.persist; 0 is off."""
    raw = (environ if environ is not None else os.environ).get(PERSIST_ENV)
    if raw is None or raw.strip() == "":
        return float(getattr(options, "persist", 0.0) or 0.0)
    try:
        value = float(raw)
    except ValueError:
        return 0.0
    return min(max(value, 0.0), MAX_PERSIST)


def socket_path(environ: dict | None = None) -> Path:
    env = environ if environ is not None else os.environ
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    runtime = env.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "orch" if runtime and os.path.isdir(runtime) else \
        Path(tempfile.gettempdir()) / f"orch-{os.getuid()}"
    return base / "keeper.sock"


def private_dir(path: Path) -> Path:
    """The socket's directory, made 0700 if missing; refused (OSError) unless it is a real
    directory of this user that no one else may enter: another user's socket there could
    hand this user's commands to a node of theirs."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must be a directory of uid {os.getuid()} with mode 0700")
    return path


# --------------------------------------------------------------------------- requests


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def target_to_json(target: NodeSpec) -> dict:
    return {f.name: _plain(getattr(target, f.name)) for f in dataclasses.fields(target) if f.name != "line"}


def target_from_json(doc: dict) -> NodeSpec:
    doc = dict(doc)
    if doc.get("identity_file"):
        doc["identity_file"] = Path(doc["identity_file"])
    return NodeSpec(**doc)


def options_to_json(options: SSHOptions) -> dict:
    return {f.name: _plain(getattr(options, f.name)) for f in dataclasses.fields(options)}


def options_from_json(doc: dict) -> SSHOptions:
    doc = dict(doc)
    if doc.get("known_hosts"):
        doc["known_hosts"] = Path(doc["known_hosts"])
    return SSHOptions(**doc)


def _key_file_stamp(path: Path | None) -> list:
    """What tells a rotated key file: its inode, size and mtime (never its content: the
    keeper's key names no secret)."""
    if path is None:
        return []
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), None]
    return [str(path), st.st_ino, st.st_size, st.st_mtime_ns]


def _trusted_keys(target: NodeSpec, options: SSHOptions) -> list:
    """The host keys known_hosts holds for this node (the process's cached parse,
    known_hosts.known_hosts: read again only when the file changed)."""
    entries = known_hosts(options.known_hosts_path).lookup(target.known_hosts_name) or {}
    return sorted((kind, key.get_base64()) for kind, key in entries.items())


def connection_key(target: NodeSpec, options: SSHOptions) -> str:
    """What a kept connection is for: the node as the environment file names it, the SSH
    options, the host keys trusted for it and the identity file's stamp. A change to any of
    them (its host key removed, trusted or changed, a key rotated) means a new connection,
    whose host key is checked anew; the old one is never used again and closes when idle."""
    doc = [target_to_json(target), options_to_json(options), _trusted_keys(target, options),
           _key_file_stamp(target.identity_file)]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def request_line(target: NodeSpec, options: SSHOptions, argv: list[str], persist: float, spare: bool) -> bytes:
    doc = {"v": VERSION, "target": target_to_json(target), "options": options_to_json(options),
           "argv": list(argv), "persist": persist, "spare": spare}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


# --------------------------------------------------------------------------- errors

_KINDS = {cls.__name__: cls for cls in (E.TransportError, E.HostUnreachable, E.AuthenticationFailed,
                                         E.UnknownHostKey, E.HostKeyChanged, E.RemoteCommandFailed,
                                         E.NodeRequirementError, E.AgentProtocolError)}


def error_to_json(err: BaseException) -> dict:
    if isinstance(err, E.TransportError) and type(err).__name__ in _KINDS:
        return {"kind": type(err).__name__, "message": err.message, "fix": err.fix, "details": err.details,
                "node": err.node}
    return {"kind": "KeeperError", "message": f"{type(err).__name__}: {err}"}


def error_from_json(doc: dict) -> BaseException:
    """The keeper's error as the class it was raised as (a TransportError), or KeeperError."""
    cls = _KINDS.get(str(doc.get("kind")))
    if cls is None:
        return KeeperError(str(doc.get("message", "the keeper failed")))
    err = cls.__new__(cls)
    E.OrchError.__init__(err, str(doc.get("message", "")), fix=doc.get("fix"), details=dict(doc.get("details") or {}))
    err.node = doc.get("node")
    for attr in ("fingerprint", "key_type", "expected"):
        if attr in err.details:
            setattr(err, attr, err.details[attr])
    return err


class KeeperError(Exception):
    """The keeper itself failed (not the node): the client goes to the node directly."""

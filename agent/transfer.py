"""The node's loopback registry for deploying without a registry (agent.wire.transfer).

`transfer_start` runs Debian's docker-registry (Docker Distribution) on 127.0.0.1:PORT in
the node's network namespace, its storage under the agent's per-engine data directory,
started on demand and left running, so the layers it holds are not sent again by the next
transfer and the engine can pull from it at any time (a rollback, a restart). The
controller reaches it through an SSH forwarded channel; this module never speaks the
registry protocol itself beyond asking `/v2/` whether it answers.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Optional

from agent.context import Context
from agent.mesh import procs
from agent.wire.protocol import AgentError
from agent.wire.transfer import (
    LOOPBACK_REGISTRY,
    NOT_READY,
    REGISTRY_PACKAGE,
    TRANSFER_GC,
    TRANSFER_PORT,
    TRANSFER_START,
    TRANSFER_STATUS,
    GcResult,
    TransferInfo,
    check_request,
)

START_TIMEOUT = 10.0  # seconds for a started registry to answer /v2/
GC_TIMEOUT = 600.0  # seconds for docker-registry garbage-collect


class Paths:
    def __init__(self, base: str):
        self.base = base
        self.storage = os.path.join(base, "storage")
        self.config = os.path.join(base, "registry.json")
        self.secret = os.path.join(base, "http.secret")
        self.pid = os.path.join(base, "registry.pid")
        self.log = os.path.join(base, "registry.log")


def paths(ctx: Context) -> Paths:
    return Paths(os.path.join(ctx.data_dir(), "transfer"))


def config(p: Paths, secret: str, read_only: bool = False) -> Dict[str, Any]:
    """Distribution's configuration (JSON is YAML): loopback only, no auth (only this node's
    engine and SSH forwards reach it), unfinished uploads purged after a day (a killed
    transfer leaves nothing a pull could see: a blob exists only once its upload is
    committed with a matching digest). read_only: pulls only, for the garbage collection."""
    maintenance: Dict[str, Any] = {"uploadpurging": {"enabled": True, "age": "24h", "interval": "1h",
                                                     "dryrun": False}}
    if read_only:
        maintenance = {"uploadpurging": {"enabled": False}, "readonly": {"enabled": True}}
    return {
        "version": "0.1",
        "log": {"level": "warn", "fields": {"service": "orch-transfer"}},
        "storage": {
            "filesystem": {"rootdirectory": p.storage},
            "delete": {"enabled": True},
            "maintenance": maintenance,
        },
        # The secret signs upload state: kept in a file so a restarted registry still
        # accepts an upload begun before.
        "http": {"addr": LOOPBACK_REGISTRY, "secret": secret, "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }


def _secret(p: Paths) -> str:
    try:
        with open(p.secret) as fh:
            found = fh.read().strip()
        if found:
            return found
    except OSError:
        pass
    value = secrets.token_hex(32)
    fd = os.open(p.secret + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    os.replace(p.secret + ".tmp", p.secret)
    return value


def _write_config(p: Paths, read_only: bool = False) -> None:
    text = json.dumps(config(p, _secret(p), read_only), indent=1, sort_keys=True)
    fd = os.open(p.config + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(p.config + ".tmp", p.config)


def answers(timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen("http://%s/v2/" % LOOPBACK_REGISTRY, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def running_pid(p: Paths) -> Optional[int]:
    return procs.read_pid(p.pid, p.config)


def stored_bytes(p: Paths) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(os.path.join(p.storage, "docker", "registry", "v2", "blobs")):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _info(p: Paths, pid: Optional[int], started: bool) -> Dict[str, Any]:
    return TransferInfo(running=pid is not None, installed=procs.which("docker-registry") is not None,
                        port=TRANSFER_PORT, started=started,
                        free_bytes=free_bytes(p.storage if os.path.isdir(p.storage) else "/"),
                        stored_bytes=stored_bytes(p), pid=pid or 0).to_dict()


def op_transfer_start(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_request(args, TRANSFER_START)
    p = paths(ctx)
    os.makedirs(p.base, mode=0o700, exist_ok=True)
    # Agents of several environments (or commands) may share the node: one starts it.
    fd = os.open(os.path.join(p.base, "start.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _start(p)
    finally:
        os.close(fd)


def _start(p: Paths, read_only: bool = False) -> Dict[str, Any]:
    pid = running_pid(p)
    if pid is not None and answers():
        return _info(p, pid, False)
    program = procs.which("docker-registry")
    if program is None:
        raise AgentError(NOT_READY, "Docker Distribution (docker-registry) is not installed on the node; an environment "
                         "without a registry needs it to receive images", {"fix": "apt-get install %s" % REGISTRY_PACKAGE})
    if pid is not None:  # alive but not answering: start afresh
        procs.stop([pid])
    os.makedirs(p.storage, mode=0o700, exist_ok=True)
    _write_config(p, read_only)
    if answers():
        raise AgentError(NOT_READY, "port %d on the node's loopback is taken by another program" % TRANSFER_PORT,
                         {"fix": "stop what listens on 127.0.0.1:%d on the node" % TRANSFER_PORT})
    pid = procs.spawn([program, "serve", p.config], p.log)
    with open(p.pid + ".tmp", "w") as fh:
        fh.write(str(pid))
    os.replace(p.pid + ".tmp", p.pid)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if answers(0.5):
            return _info(p, pid, True)
        if not procs.alive(pid):
            break
        time.sleep(0.05)
    raise AgentError(NOT_READY, "docker-registry did not start on 127.0.0.1:%d: %s" % (TRANSFER_PORT, _tail(p.log)),
                     {"fix": "see %s on the node" % p.log})


def op_transfer_status(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_request(args, TRANSFER_STATUS)
    p = paths(ctx)
    pid = running_pid(p)
    return _info(p, pid if pid is not None and answers() else None, False)


def op_transfer_gc(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Distribution's garbage collection (blobs no manifest references, after orch prune
    deleted manifests). Distribution wants no writes meanwhile: a running registry is
    restarted read-only (the engine can still pull a live release's image) and then
    normally again; the start lock keeps this node's transfers out until it is done."""
    check_request(args, TRANSFER_GC)
    p = paths(ctx)
    if not os.path.isdir(p.storage):
        return GcResult(ran=False).to_dict()
    program = procs.which("docker-registry")
    if program is None:
        raise AgentError(NOT_READY, "Docker Distribution (docker-registry) is not installed on the node",
                         {"fix": "apt-get install %s" % REGISTRY_PACKAGE})
    fd = os.open(os.path.join(p.base, "start.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _collect(p, program).to_dict()
    finally:
        os.close(fd)


def _collect(p: Paths, program: str) -> GcResult:
    t0 = time.monotonic()
    before = stored_bytes(p)
    pid = running_pid(p)
    was_running = pid is not None
    try:
        if was_running:
            procs.stop([pid])
            _start(p, read_only=True)
        else:
            _write_config(p)
        out = subprocess.run([program, "garbage-collect", p.config], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=GC_TIMEOUT)
        if out.returncode != 0:
            text = out.stdout.decode("utf-8", "replace").strip().splitlines()
            raise AgentError(NOT_READY, "docker-registry garbage-collect failed (exit %d): %s"
                             % (out.returncode, " | ".join(text[-3:]) or "no output"),
                             {"fix": "run `orch prune` again; the manifests are already deleted"})
    finally:
        if was_running:  # back to normal, also after a failure
            ro = running_pid(p)
            if ro is not None:
                procs.stop([ro])
            _start(p)
        else:
            _write_config(p)
    return GcResult(ran=True, bytes_before=before, bytes_after=stored_bytes(p),
                    seconds=round(time.monotonic() - t0, 3), read_only=was_running)


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            return " | ".join(fh.read().decode("utf-8", "replace").strip().splitlines()[-lines:])
    except OSError:
        return "no log"


TRANSFER_OPERATIONS = {
    TRANSFER_START: op_transfer_start,
    TRANSFER_STATUS: op_transfer_status,
    TRANSFER_GC: op_transfer_gc,
}

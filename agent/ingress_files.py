"""The ingress's files on the node, under Context.data_dir()/ingress/ (per engine: lab
nodes share one filesystem): state.json (what the agent wants: services and servers,
the source of HAProxy's config), the lock that orders ingress changes, and where
HAProxy's own files and sockets go (Paths).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional

from agent.wire.ingress import INGRESS, ServiceIngress
from agent.wire.protocol import CANCELLED, AgentError

STATE_VERSION = 1
LOCK_TIMEOUT = 300.0
POLL = 0.1  # how often the ingress looks again (its lock, HAProxy's answers, a server's state)


@dataclass(frozen=True)
class Paths:
    dir: str  # Context.data_dir()/ingress
    run_dir: str  # short directory for the Unix sockets

    @property
    def config(self) -> str:
        return os.path.join(self.dir, "haproxy.cfg")

    @property
    def state(self) -> str:
        return os.path.join(self.dir, "state.json")

    @property
    def pid(self) -> str:
        return os.path.join(self.dir, "haproxy.pid")

    @property
    def server_state(self) -> str:
        return os.path.join(self.dir, "server-state")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "haproxy.log")

    @property
    def lock(self) -> str:
        return os.path.join(self.dir, "lock")

    @property
    def master_socket(self) -> str:
        return os.path.join(self.run_dir, "master.sock")

    @property
    def admin_socket(self) -> str:
        return os.path.join(self.run_dir, "admin.sock")

    def to_dict(self) -> Dict[str, str]:
        return {"dir": self.dir, "config": self.config, "pid": self.pid, "master_socket": self.master_socket,
                "admin_socket": self.admin_socket, "state": self.state, "log": self.log}


def paths_for(data_dir: str, run_base: Optional[str] = None) -> Paths:
    if run_base is None:
        run_base = "/run" if os.access("/run", os.W_OK) else "/tmp"
    digest = hashlib.sha256(os.path.abspath(data_dir).encode("utf-8")).hexdigest()[:16]
    return Paths(dir=os.path.join(data_dir, "ingress"), run_dir=os.path.join(run_base, "orch-ingress-" + digest))


def ensure_dirs(paths: Paths) -> None:
    os.makedirs(paths.dir, mode=0o700, exist_ok=True)
    try:
        os.mkdir(paths.run_dir, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(paths.run_dir)
    import stat as _stat

    if not _stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise AgentError(INGRESS, "%s is not a directory owned by this user; refusing to put the ingress "
                                  "sockets there" % paths.run_dir, {"fix": "remove it"})


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_state(paths: Paths) -> Dict[str, ServiceIngress]:
    try:
        with open(paths.state, "rb") as fh:
            raw = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AgentError(INGRESS, "cannot read %s: %s" % (paths.state, exc),
                         {"fix": "remove it and sync every ingress service again"})
    services = {}
    for d in (raw.get("services") or {}).values():
        svc = ServiceIngress.from_dict(d)
        services[svc.key] = svc
    return services


def save_state(paths: Paths, services: Dict[str, ServiceIngress]) -> None:
    body = {"version": STATE_VERSION, "services": {k: services[k].to_dict() for k in sorted(services)}}
    write_atomic(paths.state, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8"))


@contextmanager
def ingress_lock(paths: Paths, cancelled: Any = None, timeout: float = LOCK_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
                 ) -> Iterator[None]:
    """One ingress change at a time on this node (agents of several controllers may run)."""
    ensure_dirs(paths)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = clock() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if cancelled is not None and cancelled.is_set():
                raise AgentError(CANCELLED, "cancelled by the controller")
            if clock() > deadline:
                raise AgentError(INGRESS, "another ingress change on this node did not finish within %.0fs"
                                 % timeout)
            sleep(POLL)
        yield
    finally:
        os.close(fd)  # drops the flock



"""The deploy lock of an environment, held by this agent process for its controller.

The lock is an exclusive flock(2) on Context.data_dir()/locks/ENV.lock, taken by the
agent process that serves one controller's SSH channel and kept (the file descriptor
stays open) until `lock_release`, or until that process ends. The agent ends when its
stdin reaches end of file, which is what sshd gives it when the controller's channel
or connection closes, including when the controller is killed with SIGKILL or its CI
job is cancelled; the kernel then drops the flock. So there are no stale locks and no
lock files to clean up by hand.

While holding it, the agent writes who holds it (user, host, command, start time, CI
job, controller and agent pids) into the lock file itself; a second controller is
refused with error kind "locked" and that holder, or waits up to `wait_s` seconds
(sending "lock.waiting" events), and `lock_status` reads it without taking the lock
(/proc/locks), so looking never gets in a deployer's way.

Operations (registered in agent.operations.OPERATIONS):
  lock_acquire  {"env", "holder": {...}, "wait_s": 0} -> {"acquired": true, "holder", "waited",
                "waited_for_work"}; error kind "locked", details {"holder": {...}, "env"} when busy.
                Once it has the lock it also waits (up to WORK_WAIT) for operations on the
                environment still running in agents of a controller that went away.
  lock_release  {"env"} -> {"released": bool}
  lock_status   {"env"} -> {"env", "held": bool, "mine": bool, "holder": {...} or null}
  lock_break    {"env", "reason", "by": PERFORMER, "wait_s"?} -> {"env", "held", "broken", "holder", "pids",
                "killed", "record"}: an operator's override. SIGTERM to the agent process holding
                the flock (it gives up as on a lost lease: frees the lock, puts its batch back),
                SIGKILL if the lock is still held after BREAK_WAIT; recorded in the ledger.

A lock held for a controller that went silent without closing its connection (network or
power lost) is freed by the holder's lease (agent.rpc, agent.wire.protocol.LEASE_SECONDS).

Python 3.9 compatible, stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

from agent.wire.protocol import (
    CANCELLED,
    INTERNAL,
    AgentError,
    BadRequest,
    check_keys,
    check_name,
    check_number,
    check_str,
)

LOCKED = "locked"  # error kind: the lock is held by another controller
MAX_WAIT = 24 * 3600.0
POLL = 0.1
NOTE_EVERY = 5.0
SETTLE = 0.5  # how long to wait for a fresh holder to write its name
HOLDER_KEYS = ("user", "host", "command", "started", "ci_job", "pid", "project")


def lock_path(ctx: Any, env: str) -> str:
    return os.path.join(ctx.data_dir(), "locks", "%s.lock" % env)


def work_path(ctx: Any, env: str) -> str:
    return os.path.join(ctx.data_dir(), "locks", "%s.work" % env)


# Operations that change an environment's containers hold ENV.work shared while they
# run (agent.rpc), their put-back after a failure or a cancel included. An agent whose
# controller went away mid-rollout still puts its batch back; lock_acquire waits for
# that (ENV.work exclusive for a moment) so the next controller never works beside it.
WORK_WAIT = 600.0


@contextlib.contextmanager
def working(ctx: Any, env: Optional[str]) -> Iterator[None]:
    if not env:
        yield
        return
    path = work_path(ctx, env)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # blocks only while a lock_acquire looks (instant)
        yield
    finally:
        os.close(fd)


def wait_for_work(ctx: Any, env: str, wait_s: float = WORK_WAIT) -> float:
    """Until no operation on env is running on this engine (see working); seconds waited."""
    path = work_path(ctx, env)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    start = ctx.clock()
    last_note = None  # type: Optional[float]
    try:
        while not _flock_nb(fd, fcntl.LOCK_EX):
            now = ctx.clock()
            if ctx.cancelled.is_set():
                raise AgentError(CANCELLED, "cancelled while waiting for running operations on %s" % env)
            if now - start >= wait_s:
                raise AgentError(LOCKED, "operations on %s started by a controller that went away are still "
                                 "running after %.0fs" % (env, wait_s),
                                 {"env": env, "holder": None, "work": True, "waited": round(now - start, 1)})
            if last_note is None or now - last_note >= NOTE_EVERY:
                last_note = now
                ctx.emit("lock.waiting", holder=None, waited=round(now - start, 1),
                         reason="operations of a controller that went away are finishing (putting a batch back)")
            ctx.sleep(POLL)
    finally:
        os.close(fd)  # drops the exclusive flock at once: this controller's own work takes it shared
    return round(ctx.clock() - start, 2)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_holder(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(65536)
    except OSError:
        return None
    if not data.strip():
        return None
    try:
        holder = json.loads(data.decode("utf-8"))
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _flock_nb(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def flock_pids(path: str) -> Optional[List[int]]:
    """The processes holding a flock on path, from /proc/locks (None: cannot tell)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    wanted = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2c:5678 0 EOF" ("->" marks a waiter)
        if "FLOCK" in parts and "->" not in parts and wanted in parts:
            pid = parts[parts.index("FLOCK") + 3]
            if pid.isdigit() and int(pid) > 1:
                pids.append(int(pid))
    return pids


def is_locked(path: str) -> bool:
    """Does some process hold a flock on path? Read-only (/proc/locks) where possible."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = None
    if lines is not None:
        major, minor = os.major(st.st_dev), os.minor(st.st_dev)
        wanted = "%02x:%02x:%d" % (major, minor, st.st_ino)
        for line in lines:
            parts = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 00:2c:5678 0 EOF" ("->" marks a waiter)
            if "FLOCK" in parts and "->" not in parts and wanted in parts:
                return True
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _flock_nb(fd, fcntl.LOCK_SH):
            return False
        return True
    finally:
        os.close(fd)


class LockTable:
    """The locks this agent process holds: path -> open descriptor (the flock lives on it)."""

    def __init__(self) -> None:
        self._held: Dict[str, int] = {}
        self._mutex = threading.Lock()

    def holds(self, path: str) -> bool:
        with self._mutex:
            return path in self._held

    def acquire(
        self,
        path: str,
        holder: Dict[str, Any],
        wait_s: float = 0.0,
        cancelled: Optional[threading.Event] = None,
        emit: Callable[..., None] = lambda type_, **data: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Dict[str, Any]:
        with self._mutex:
            if path in self._held:
                return {"acquired": True, "already": True, "holder": read_holder(path), "waited": 0.0}
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        start = clock()
        deadline = start + wait_s
        last_note = None  # type: Optional[float]
        try:
            while not _flock_nb(fd, fcntl.LOCK_EX):
                now = clock()
                if cancelled is not None and cancelled.is_set():
                    raise AgentError(CANCELLED, "cancelled while waiting for the lock of %s" % holder.get("env", ""))
                if now >= deadline:
                    if self._settle(fd, path, clock, sleep):
                        break
                    current = read_holder(path)
                    raise AgentError(LOCKED, "the deploy lock is held by another controller",
                                     {"holder": current, "waited": round(now - start, 1)})
                if last_note is None or now - last_note >= NOTE_EVERY:
                    last_note = now
                    emit("lock.waiting", holder=read_holder(path), waited=round(now - start, 1),
                         remaining=round(deadline - now, 1))
                sleep(min(POLL, max(0.0, deadline - now)))
        except BaseException:
            os.close(fd)
            raise
        info = dict(holder)
        info.update({"agent_pid": os.getpid(), "node": socket.gethostname(), "acquired": _now()})
        data = json.dumps(info, sort_keys=True).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        with self._mutex:
            self._held[path] = fd
        return {"acquired": True, "already": False, "holder": info, "waited": round(clock() - start, 2)}

    def _settle(self, fd: int, path: str, clock: Callable[[], float], sleep: Callable[[float], None]) -> bool:
        """Busy, but nobody has written a name yet: a holder that is just writing it, or a
        lock_status probe without /proc/locks. Give either a moment before saying 'locked'."""
        end = clock() + SETTLE
        while read_holder(path) is None and clock() < end:
            if _flock_nb(fd, fcntl.LOCK_EX):
                return True
            sleep(0.02)
        return _flock_nb(fd, fcntl.LOCK_EX)

    def release(self, path: str) -> bool:
        with self._mutex:
            fd = self._held.pop(path, None)
        if fd is None:
            return False
        try:
            os.ftruncate(fd, 0)  # no stale name left behind
        finally:
            os.close(fd)  # drops the flock
        return True

    def release_all(self) -> None:
        with self._mutex:
            paths = list(self._held)
        for p in paths:
            self.release(p)


TABLE = LockTable()  # this agent process's locks


def _holder(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("holder must be an object {user, host, command, started, ci_job, pid, project}")
    check_keys(value, HOLDER_KEYS, "holder")
    out: Dict[str, Any] = {}
    for k, v in value.items():
        if v is None:
            continue
        if k == "pid":
            if isinstance(v, bool) or not isinstance(v, int):
                raise BadRequest("holder.pid must be an integer")
            out[k] = v
        else:
            out[k] = check_str(v, "holder." + k)[:500]
    return out


def op_lock_acquire(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("env", "holder", "wait_s"), "lock_acquire")
    env = check_name(args.get("env"), "env")
    holder = _holder(args.get("holder") or {})
    holder["env"] = env
    wait_s = min(check_number(args.get("wait_s", 0), "wait_s"), MAX_WAIT)
    path = lock_path(ctx, env)
    try:
        out = TABLE.acquire(path, holder, wait_s, ctx.cancelled, ctx.emit, ctx.clock, ctx.sleep)
    except AgentError as err:
        if err.kind == LOCKED:
            err.details["env"] = env
        raise
    if not out.get("already"):
        try:
            out["waited_for_work"] = wait_for_work(ctx, env)
        except BaseException:
            TABLE.release(path)
            raise
    out["env"] = env
    return out


def op_lock_release(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("env",), "lock_release")
    env = check_name(args.get("env"), "env")
    return {"env": env, "released": TABLE.release(lock_path(ctx, env))}


def op_lock_status(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("env",), "lock_status")
    env = check_name(args.get("env"), "env")
    path = lock_path(ctx, env)
    mine = TABLE.holds(path)
    held = mine or is_locked(path)
    return {"env": env, "held": held, "mine": mine, "holder": read_holder(path) if held else None}


BREAK_WAIT = 10.0  # for the holder to put back its batch and let go, before SIGKILL
PERFORMER_KEYS = ("user", "host", "login", "ci")


def _performer(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict) or not value.get("user"):
        raise BadRequest("by must be the performer {user, host, login?, ci?}")
    check_keys(value, PERFORMER_KEYS, "by")
    out: Dict[str, Any] = {k: check_str(value[k], "by." + k)[:500] for k in ("user", "host", "login") if value.get(k)}
    ci = value.get("ci") or {}
    if not isinstance(ci, dict):
        raise BadRequest("by.ci must be an object")
    out.update({"ci": {check_str(k, "by.ci")[:100]: check_str(v, "by.ci." + k)[:500] for k, v in ci.items()}} if ci else {})
    return out


def _holds(path: str, pids: List[int]) -> bool:
    # (not is_locked: a controller waiting for the lock may take it the moment it is free)
    return bool(set(flock_pids(path) or ()) & set(pids))


def _wait_free(ctx: Any, path: str, pids: List[int], wait_s: float) -> bool:
    end = ctx.clock() + wait_s
    while _holds(path, pids):
        if ctx.clock() >= end:
            return False
        ctx.sleep(POLL)
    return True


def op_lock_break(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    from agent import ledger

    check_keys(args, ("env", "reason", "by", "wait_s"), "lock_break")
    env = check_name(args.get("env"), "env")
    reason = check_str(args.get("reason"), "reason").strip()[:1000]
    if not reason:
        raise BadRequest("reason must say why the lock is broken")
    by = _performer(args.get("by"))
    wait_s = min(check_number(args.get("wait_s", BREAK_WAIT), "wait_s"), 60.0)
    path = lock_path(ctx, env)
    if TABLE.holds(path):
        raise BadRequest("this session holds the lock of %s itself: release it instead" % env)
    out: Dict[str, Any] = {"env": env, "held": False, "broken": False, "holder": None, "pids": [], "killed": False}
    pids = flock_pids(path)
    if pids is None:
        raise AgentError(INTERNAL, "cannot read /proc/locks on this node: the holder cannot be found")
    pids = [p for p in pids if p != os.getpid()]
    if not pids:
        return out
    out.update({"held": True, "holder": read_holder(path), "pids": pids})
    for how in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, how)
            except ProcessLookupError:
                pass
        out["killed"] = how == signal.SIGKILL
        if _wait_free(ctx, path, pids, wait_s):
            break
    out["broken"] = not _holds(path, pids)
    out["record"] = ledger.record_lock_break(ctx, env, by, reason, out["holder"], pids, out["killed"])
    if not out["broken"]:
        raise AgentError(INTERNAL, "the lock of %s is still held after SIGKILL to %s" % (env, pids), out)
    return out


LOCK_OPERATIONS = {
    "lock_acquire": op_lock_acquire,
    "lock_release": op_lock_release,
    "lock_status": op_lock_status,
    "lock_break": op_lock_break,
}

"""Stops off the critical path: a replaced container that is out of rotation and drained
is stopped in the background while the rolling update goes on.

A start-first rollout (agent.rollout) keeps the old container of a replica serving until
the new one is in rotation, then drains it. From then on nothing needs it, but its stop
can take its whole stop_grace_period (an app that ignores SIGTERM: busybox httpd as PID 1,
many shell-wrapped apps). So `stop_in_background` issues the stop in a thread of this
agent process and the rollout answers at once; the next batch starts then.

Any agent process on the engine can wait for such a stop, since the controller's later
calls may go to another of its sessions: each stop leaves a marker, data_dir()/stops/<id>,
locked (flock) by the stopping thread until the stop returned, then holding its outcome.
Whoever would otherwise act on a stopping container waits for it first (`wait_stopped`)
and then consumes the marker:

  - `await_stops` (op_await_stops), which the controller calls once the last batch is
    through: `orch up` ends with every kept container stopped, as when the stop was part
    of the batch; it also stops a kept container found running with no stop under way;
  - `restore` (a rollback), which starts a kept container again only once it stopped;
  - agent.steps.remove_container (`discard`, `remove`), which would otherwise send a
    second stop signal (some apps take a second SIGTERM as "quit now").

The stopping thread holds the environment's ENV.work (agent.lock.working) and is not a
daemon: when the controller goes away the process ends only after its stops, and the next
controller's lock_acquire waits for them. Python 3.9 compatible, stdlib only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.context import Context
from agent.engine import ContainerInfo
from agent.lock import working
from agent.owner import refuse_foreign
from agent.wire import labels as L
from agent.wire.protocol import TIMEOUT, AgentError, BadRequest
from agent.wire.stops import BACKGROUND, NOW, AwaitStopsRequest, AwaitStopsResult, StoppedContainer

POLL = 0.05
WAIT_MAX = 900.0  # a stop ends within its grace period (Docker kills then); this only guards a hung engine


def _dir(ctx: Context) -> str:
    return os.path.join(ctx.data_dir(), "stops")


def _path(ctx: Context, cid: str) -> str:
    if not cid or "/" in cid or cid.startswith("."):
        raise BadRequest("bad container id %r" % cid)  # never: ids come from the engine
    return os.path.join(_dir(ctx), cid)


def stop_in_background(ctx: Context, c: ContainerInfo, env: str) -> Optional[threading.Thread]:
    """Stop c off the critical path; its marker is in place (and locked) before this
    returns, so a waiter in any agent process sees the stop as under way.

    On a real engine behind a unix socket the stop runs in a detached helper process
    (`_detached`): this agent process then ends as soon as its controller closes the
    session, so `orch up` need not wait for a stop (a SIGTERM-deaf app's whole grace
    period). Otherwise (a fake engine, a TCP engine) in a thread of this process, returned."""
    os.makedirs(_dir(ctx), mode=0o700, exist_ok=True)
    path = _path(ctx, c.id)
    tmp = "%s.%d.%d.new" % (path, os.getpid(), threading.get_ident())
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _write(fd, {"id": c.id, "name": c.name, "service": c.service, "replica": c.replica, "pid": os.getpid()})
    os.rename(tmp, path)  # locked before it is visible: a waiter never finds it unlocked too early
    try:
        socket_path = _engine_socket(ctx)
        if socket_path is not None:
            try:
                _detached(ctx, "stop", socket_path, c, env, fd)
                return None
            except OSError as exc:  # no helper process (fork refused): this process stops it
                sys.stderr.write("orch-agent: no helper process for the stop of %s (%s)\n" % (c.name, exc))
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # _detached closed ours; nobody else locks it
                fcntl.flock(fd, fcntl.LOCK_EX)
        engine = ctx.engine

        def run() -> None:
            started = time.monotonic()
            outcome: Dict[str, Any] = {"id": c.id, "name": c.name, "service": c.service, "replica": c.replica}
            try:
                with working(ctx, env):
                    engine.stop(c.id)
                outcome["seconds"] = round(time.monotonic() - started, 2)
            except BaseException as exc:  # noqa: BLE001 - the waiter finds the container running and stops it
                outcome["error"] = str(getattr(exc, "message", exc))[:300]
                sys.stderr.write("orch-agent: background stop of %s failed: %s\n" % (c.name, outcome["error"]))
            finally:
                try:
                    _write(fd, outcome)
                finally:
                    os.close(fd)  # drops the lock: waiters go on

        t = threading.Thread(target=run, name="stop-%s" % c.id[:12], daemon=False)
        t.start()
        return t
    except BaseException:
        # No stop under way after all: a marker left locked by this process would make
        # every waiter (this process's own put-back included) wait for nothing.
        forget(ctx, c.id)
        try:
            os.close(fd)
        except OSError:
            pass
        raise


def _engine_socket(ctx: Context) -> Optional[str]:
    """The unix socket of the real engine this agent drives, else None (a fake engine in
    tests and simulations, an engine over TCP: those stop in a thread)."""
    try:
        from agent.engine import Engine
    except ImportError:  # pragma: no cover - the bundle always has it
        return None
    if type(ctx._engine) is not Engine:  # noqa: SLF001 - connected by the rollout before any stop
        return None
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return host[len("unix://"):] if host.startswith("unix://") else None


def _detached(ctx: Context, mode: str, socket_path: str, c: ContainerInfo, env: str, marker_fd: int) -> None:
    """Run `_helper` (mode stop: stop c, then write its outcome into the marker; mode
    remove: wait for c's stop, then remove c) in a process of its own session, detached
    from this agent's SSH channel. It inherits the marker's descriptor (its flock goes on
    meaning "stop under way" until the helper is done) and ENV.work taken shared (the next
    controller's lock_acquire waits for it, as for this process's own work)."""
    import subprocess

    work_fd = -1
    try:
        if env:
            from agent.lock import work_path

            wp = work_path(ctx, env)
            os.makedirs(os.path.dirname(wp), mode=0o700, exist_ok=True)
            work_fd = os.open(wp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(work_fd, fcntl.LOCK_SH)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the bundle (or a zip of it)
        info = json.dumps({"id": c.id, "name": c.name, "service": c.service, "replica": c.replica})
        fds = tuple(f for f in (marker_fd, work_fd) if f >= 0)
        subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from agent.stops import _helper; "
             "sys.exit(_helper(sys.argv[2:]))", root, mode, socket_path, _dir(ctx), str(marker_fd), str(work_fd),
             info],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, pass_fds=fds, cwd="/")
    finally:
        for f in (marker_fd, work_fd):
            if f >= 0:
                os.close(f)  # the helper holds the locks now


def _engine_call(socket_path: str, method: str, path: str, timeout: float) -> int:
    from agent.engine_reads import _UnixConnection

    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request(method, path, headers={"Host": "docker"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _helper(argv: List[str]) -> int:
    """The detached helper's body (see _detached): argv = mode, socket, stops dir,
    marker fd (-1: none), ENV.work fd (-1: none), the container as JSON."""
    mode, socket_path, stops_dir, marker_fd, work_fd, raw = argv
    c = json.loads(raw)
    fd = int(marker_fd)
    started = time.monotonic()
    outcome: Dict[str, Any] = dict(c)
    try:
        if mode == "stop":
            # No t=: the engine uses the container's own StopTimeout (stop_grace_period).
            status = _engine_call(socket_path, "POST", "/containers/%s/stop" % c["id"], WAIT_MAX)
            if status not in (204, 304, 404):
                raise RuntimeError("the engine answered %d to the stop" % status)
            outcome["seconds"] = round(time.monotonic() - started, 2)
        elif mode == "remove":
            _wait_marker(os.path.join(stops_dir, c["id"]))
            status = _engine_call(socket_path, "DELETE", "/containers/%s?force=1" % c["id"], 60.0)
            if status not in (204, 404, 409):  # 409: a removal already under way
                raise RuntimeError("the engine answered %d to the removal" % status)
        return 0
    except Exception as exc:  # noqa: BLE001 - a stop: the waiter finds it running and stops it
        outcome["error"] = str(exc)[:300]
        return 1
    finally:
        if fd >= 0:
            try:
                _write(fd, outcome)
            finally:
                os.close(fd)  # drops the marker's lock: waiters go on
        if int(work_fd) >= 0:
            os.close(int(work_fd))


def _wait_marker(path: str) -> None:
    """Until the stop behind the marker at path returned; the marker is consumed."""
    _await_marker(path, WAIT_MAX)
    try:
        os.unlink(path)
    except OSError:
        pass


def _await_marker(path: str, budget: float,
                  check: Optional[Callable[[], None]] = None) -> Optional[Tuple[bool, Dict[str, Any]]]:
    """Wait, at most `budget` s, until the stop behind the marker at `path` returned (its
    lock can be shared): None when there is no marker, else (done, the outcome the stop
    wrote, {} while not done). `check` runs on every poll (a cancellation raises)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    start = time.monotonic()
    try:
        while not _try_shared(fd):
            if check is not None:
                check()
            if time.monotonic() - start >= budget:
                return False, {}
            time.sleep(POLL)
        try:
            return True, json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
        except ValueError:
            return True, {}
    finally:
        os.close(fd)


DISCARD_GRACE = 1.0  # from a stop's start: how long a discard waits for it before handing it over


def stop_began(ctx: Context, cid: str) -> Optional[float]:
    """When the background stop of container cid began, or None: its marker is written
    when the stop starts (and again, with the outcome, when it returned)."""
    try:
        return os.stat(_path(ctx, cid)).st_mtime
    except OSError:
        return None


def remove_when_stopped(ctx: Context, c: ContainerInfo, env: str, grace: float = DISCARD_GRACE) -> bool:
    """Hand the removal of c, whose stop is under way (a marker), to a detached helper
    that removes it once stopped: `discard` then answers at once. A stop that ends within
    `grace` of its start (an app that handles SIGTERM) is not handed over: the caller
    removes c, so nothing of the previous release is left when `orch up` returns; one that
    began longer ago than that (a SIGTERM-deaf app, stopped batches ago) is handed over at
    once. False (nothing done) when c has no stop under way, it ended within `grace`, or
    the engine is not a local real one."""
    socket_path = _engine_socket(ctx)
    if socket_path is None:
        return False
    began = stop_began(ctx, c.id)
    if began is None:
        return False  # no stop under way
    try:
        found = _await_marker(_path(ctx, c.id), max(0.0, began + grace - time.time()))
    except OSError:
        return False
    if found is None or found[0]:
        return False  # no stop under way, or it ended meanwhile: the caller removes c in place
    try:
        _detached(ctx, "remove", socket_path, c, env, -1)
    except OSError:
        return False
    ctx.emit("container.remove", container=c.name, service=c.service, replica=c.replica,
             reason="the release that replaced it is live", background=True)
    return True


def _write(fd: int, data: Dict[str, Any]) -> None:
    raw = json.dumps(data, sort_keys=True).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, raw, 0)


def wait_stopped(ctx: Context, cid: str, budget: float = WAIT_MAX) -> Optional[Dict[str, Any]]:
    """If c is (or was) stopped in the background: wait until that stop returned, consume
    its marker and return its outcome ({"seconds"} or {"error"}, plus "waited"); None when
    there is no marker. Cancellable (ctx.cancelled). Real time: it waits on a real lock."""
    start = time.monotonic()
    found = _await_marker(_path(ctx, cid), budget, ctx.check_cancelled)
    if found is None:
        return None
    done, outcome = found
    if not done:
        raise AgentError(TIMEOUT, "the background stop of container %s did not end within %.0fs"
                         % (cid[:12], budget), {"container": cid})
    forget(ctx, cid)
    outcome["waited"] = round(time.monotonic() - start, 2)
    return outcome


def _try_shared(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def forget(ctx: Context, cid: str) -> None:
    """Drop c's marker (its stop was waited for, or c is gone)."""
    try:
        os.unlink(_path(ctx, cid))
    except OSError:
        pass


def pending(ctx: Context) -> List[str]:
    """Ids with a marker (a stop under way, or one whose outcome nobody consumed yet)."""
    try:
        return sorted(n for n in os.listdir(_dir(ctx)) if not n.endswith(".new"))
    except OSError:
        return []


def op_await_stops(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Until every kept container of the project (in env) is stopped: the background
    stops waited for, a kept one still running without one stopped now."""
    req = AwaitStopsRequest.from_dict(args)
    refuse_foreign(ctx, req.project, req.env, "await_stops")
    out: List[StoppedContainer] = []
    # The project's containers here are env's (refuse_foreign): its kept ones.
    kept = [c for c in ctx.engine.containers(L.filters(req.project)) if L.is_retired(c.name)]
    for c in kept:
        outcome = wait_stopped(ctx, c.id)
        now = ctx.engine.container(c.id)
        if now is None:
            continue
        if now.state in ("running", "restarting", "paused"):
            t0 = ctx.clock()
            ctx.engine.stop(c.id)
            how, seconds = NOW, round(ctx.clock() - t0, 2)
        elif outcome is not None:
            how, seconds = BACKGROUND, float(outcome.get("seconds") or 0)
        else:
            continue  # stopped before this release (or by a stop-first batch): nothing to report
        waited = float(outcome.get("waited") or 0) if outcome is not None else 0.0
        ctx.emit("container.stop", container=c.name, service=c.service, replica=c.replica, id=c.id,
                 reason="replaced", how=how, seconds=seconds, waited=waited)
        out.append(StoppedContainer(c.id, c.name, c.service, c.replica, how, seconds, waited))
    # Markers of containers that are gone (removed by hand, or by a process that died):
    # nothing will wait for them.
    for cid in pending(ctx):
        if ctx.engine.container(cid) is None:
            forget(ctx, cid)
    return AwaitStopsResult(tuple(out)).to_dict()


STOP_OPERATIONS = {"await_stops": op_await_stops}

"""The deploy lock: the agent's flock table, its operations, real agent processes that
die, and the controller's EnvLock over several nodes."""

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from agent import lock as AL
from agent.fake import FakeEngine
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError
from orchestrator.io import lock as OL
from orchestrator.io import transport as T
from orchestrator.errors import LockHeld
from tests.unit.fakes import AgentProcess, FakeClock as Clock

HOLDER = {"user": "ada", "host": "laptop", "command": "orch up --env prod", "started": "2024-01-01T10:00:00Z",
          "ci_job": "https://ci.example/job/7", "pid": 4242}


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "locks" / "prod.lock")


def test_second_holder_is_refused_with_the_first_ones_name(path):
    a, b = AL.LockTable(), AL.LockTable()
    out = a.acquire(path, dict(HOLDER, env="prod"))
    assert out["acquired"] and not out["already"] and out["holder"]["agent_pid"] == os.getpid()
    with pytest.raises(AgentError) as err:
        b.acquire(path, {"user": "bob"})
    assert err.value.kind == AL.LOCKED
    assert err.value.details["holder"]["user"] == "ada" and err.value.details["holder"]["ci_job"] == HOLDER["ci_job"]
    assert a.acquire(path, {})["already"]  # re-entrant for the same agent
    assert a.release(path) and not a.release(path)
    assert AL.read_holder(path) is None  # no stale name left behind
    assert b.acquire(path, {"user": "bob"})["holder"]["user"] == "bob"
    b.release(path)


def test_waiting_acquirer_gets_it_when_released(path):
    a, b = AL.LockTable(), AL.LockTable()
    a.acquire(path, HOLDER)
    clock = Clock()
    released = []

    def release_at_0_3(now):
        if clock.elapsed >= 0.3 - 1e-9 and not released:
            released.append(a.release(path))

    clock.on_sleep.append(release_at_0_3)
    events = []
    out = b.acquire(path, {"user": "bob"}, wait_s=5, emit=lambda t, **d: events.append((t, d)),
                    clock=clock, sleep=clock.sleep)
    # it polled while a held it, and took it on the first try after a let go
    assert released == [True] and out["acquired"] and out["waited"] == pytest.approx(0.3)
    assert [e[0] for e in events] == ["lock.waiting"] and events[0][1]["holder"]["user"] == "ada"
    assert AL.read_holder(path)["user"] == "bob"
    b.release(path)


def test_wait_runs_out(path):
    a, b = AL.LockTable(), AL.LockTable()
    a.acquire(path, HOLDER)
    clock = Clock()
    with pytest.raises(AgentError) as err:
        b.acquire(path, {}, wait_s=0.4, clock=clock, sleep=clock.sleep)
    # it waited the whole 0.4 s it was given, and no more, then named the holder
    assert err.value.kind == AL.LOCKED and err.value.details["waited"] == pytest.approx(0.4)
    assert clock.now - 1000.0 == pytest.approx(0.4)
    assert err.value.details["holder"]["user"] == "ada"
    a.release(path)


def test_waiting_stops_when_the_controller_goes_away(path):
    a, b = AL.LockTable(), AL.LockTable()
    a.acquire(path, HOLDER)
    cancelled = threading.Event()
    clock = Clock()
    clock.on_sleep.append(lambda now: clock.elapsed >= 0.2 - 1e-9 and cancelled.set())
    with pytest.raises(AgentError) as err:
        b.acquire(path, {}, wait_s=30, cancelled=cancelled, clock=clock, sleep=clock.sleep)
    assert err.value.kind == "cancelled" and clock.now - 1000.0 < 1  # at the next poll, not after 30 s
    a.release(path)


def test_status_reads_without_taking_the_lock(path, monkeypatch):
    a, b = AL.LockTable(), AL.LockTable()
    assert not AL.is_locked(path)
    a.acquire(path, HOLDER)
    assert AL.is_locked(path)  # from /proc/locks
    real_open = open

    def no_proc(p, *args, **kw):
        if p == "/proc/locks":
            raise OSError("no /proc")
        return real_open(p, *args, **kw)

    monkeypatch.setattr("builtins.open", no_proc)
    assert AL.is_locked(path)  # fallback: a shared-lock probe
    monkeypatch.undo()
    a.release(path)
    assert not AL.is_locked(path)
    assert b.acquire(path, {})["acquired"]
    b.release(path)


def test_operations_through_the_agent_context(tmp_path):
    engine = FakeEngine()
    ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path))
    try:
        out = OPERATIONS["lock_acquire"](ctx, {"env": "prod", "holder": HOLDER, "wait_s": 0})
        assert out["acquired"] and out["env"] == "prod" and out["holder"]["env"] == "prod"
        st = OPERATIONS["lock_status"](ctx, {"env": "prod"})
        assert st["held"] and st["mine"] and st["holder"]["command"] == "orch up --env prod"
        assert OPERATIONS["lock_status"](ctx, {"env": "test"}) == {"env": "test", "held": False, "mine": False,
                                                                   "holder": None}
        lock_file = Path(tmp_path, "engines", "FAKE-ENGINE-1", "locks", "prod.lock")
        assert lock_file.exists() and oct(lock_file.stat().st_mode & 0o777) == "0o600"
    finally:
        assert OPERATIONS["lock_release"](ctx, {"env": "prod"})["released"]
    with pytest.raises(AgentError):
        OPERATIONS["lock_acquire"](ctx, {"env": "../etc", "holder": {}})
    with pytest.raises(AgentError):
        OPERATIONS["lock_acquire"](ctx, {"env": "prod", "holder": {"evil": "x"}})


# --------------------------------------------------------------------------- real agent processes

@pytest.mark.parametrize("how", ["eof", "sigkill"])
def test_lock_dies_with_the_agent_process(tmp_path, how):
    first, second = AgentProcess(str(tmp_path)), AgentProcess(str(tmp_path))
    try:
        assert first.call("lock_acquire", {"env": "prod", "holder": HOLDER})["result"]["acquired"]
        refused = second.call("lock_acquire", {"env": "prod", "holder": {"user": "bob"}})
        assert refused["error"]["kind"] == "locked" and refused["error"]["details"]["holder"]["user"] == "ada"
        if how == "eof":
            first.p.stdin.close()  # what sshd does when the controller's channel closes
        else:
            first.p.send_signal(signal.SIGKILL)
        first.p.wait(120)  # a hang guard: the agent ends on end of input / at once when killed
        # The lock went with the process: free the moment it is gone, nothing to wait for
        # or clean up (wait_s 0: one try).
        assert second.call("lock_status", {"env": "prod"})["result"]["held"] is False
        got = second.call("lock_acquire", {"env": "prod", "holder": {"user": "bob"}, "wait_s": 0})
        assert got["result"]["acquired"] and got["result"]["holder"]["user"] == "bob", got
    finally:
        for a in (first, second):
            if a.p.poll() is None:
                a.p.kill()
            a.p.wait()


def test_idle_agent_exits_on_end_of_input(tmp_path):
    a = AgentProcess(str(tmp_path))
    assert a.call("hello", {})["result"]["protocol"] == 1
    a.p.stdin.close()
    assert a.p.wait(120) == 0  # (a hang guard: it ends at once)


# --------------------------------------------------------------------------- controller


class FakeSession:
    """One node's agent: its own lock table, like a separate agent process."""

    def __init__(self, node, root, log):
        self.node = node
        self.table = AL.LockTable()
        self.root = root
        self.log = log

    def call(self, op, args=None, on_event=None, timeout=None):
        self.log.append((self.node, op))
        path = os.path.join(self.root, self.node, args["env"] + ".lock")
        try:
            if op == "lock_acquire":
                return self.table.acquire(path, dict(args["holder"], env=args["env"]), args["wait_s"],
                                          emit=lambda t, **d: on_event and on_event(dict(d, type=t)))
            if op == "lock_release":
                return {"released": self.table.release(path)}
            if op == "lock_break_list":
                return {"breaks": []}
            if op == "lock_status":
                held = self.table.holds(path) or AL.is_locked(path)
                return {"held": held, "mine": self.table.holds(path), "holder": AL.read_holder(path) if held else None}
        except AgentError as err:
            raise T.AgentError(self.node, op, err.kind, err.message, err.details) from None
        raise AssertionError(op)


def nodes(tmp_path, log, names=("prod-2", "prod-1")):
    return {n: FakeSession(n, str(tmp_path), log) for n in names}


def holder(user="ada", command="orch up --env prod"):
    return OL.LockHolder(user=user, host="laptop", command=command, started="2024-01-01T10:00:00Z",
                         ci_job="https://ci.example/job/7", pid=1)


def test_env_lock_takes_nodes_in_name_order_and_releases(tmp_path):
    log = []
    sessions = nodes(tmp_path, log)
    with OL.acquire_lock("prod", sessions, holder()) as lock:
        assert lock.held == ["prod-1", "prod-2"]
        st = OL.lock_status("prod", sessions)
        assert st.held and st.holder.user == "ada" and [n.node for n in st.nodes] == ["prod-1", "prod-2"]
    assert [x for x in log if x[1] not in ("lock_status", "lock_break_list")] == [
        ("prod-1", "lock_acquire"), ("prod-2", "lock_acquire"), ("prod-2", "lock_release"), ("prod-1", "lock_release")]
    assert not OL.lock_status("prod", sessions).held


def test_second_controller_gets_lock_held_exit_4_naming_the_holder(tmp_path):
    mine = OL.acquire_lock("prod", nodes(tmp_path, []), holder())
    with pytest.raises(LockHeld) as err:
        OL.acquire_lock("prod", nodes(tmp_path, []), holder(user="bob"))
    e = err.value
    text = e.render()
    assert e.exit_code == 4
    assert "environment prod is locked by ada on laptop, running `orch up --env prod` since 2024-01-01T10:00:00Z" in text
    assert "CI job https://ci.example/job/7" in text and "--lock-wait" in text and "(held on prod-1)" in text
    assert e.details["holder"]["user"] == "ada"
    mine.release()


def test_partial_acquisition_is_undone(tmp_path):
    other = nodes(tmp_path, [], names=("prod-2",))
    OL.acquire_lock("prod", other, holder(user="zed"))  # someone holds only prod-2
    log = []
    sessions = nodes(tmp_path, log)
    with pytest.raises(LockHeld):
        OL.acquire_lock("prod", sessions, holder())
    assert ("prod-1", "lock_release") in log  # what it had taken, it gave back
    assert not AL.is_locked(os.path.join(str(tmp_path), "prod-1", "prod.lock"))


def test_lock_wait_waits_and_reports_progress(tmp_path):
    first = OL.acquire_lock("prod", nodes(tmp_path, []), holder())
    waits = []

    def on_wait(node, h, s):
        waits.append((node, h.user if h else None))
        if len(waits) == 1:
            first.release()  # the holder finishes while the second one waits

    # (wait=600: a hang guard; the holder lets go as soon as the second one waits)
    second = OL.acquire_lock("prod", nodes(tmp_path, []), holder(user="bob"), wait=600, on_wait=on_wait)
    assert second.held == ["prod-1", "prod-2"] and waits[0] == ("prod-1", "ada")
    second.release()


def test_holder_of_this_process(monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_RUN_ID", "99")
    monkeypatch.setenv("GITHUB_REPOSITORY", "org/app")
    h = OL.LockHolder.current("orch up --env prod", project="hello")
    assert h.pid == os.getpid() and h.ci_job == "https://github.com/org/app/actions/runs/99" and h.project == "hello"
    assert set(h.to_args()) <= set(AL.HOLDER_KEYS)


# --------------------------------------------------------------------------- work in flight


def test_lock_acquire_waits_for_operations_still_putting_a_batch_back(tmp_path):
    """An agent whose controller went away finishes its put-back under ENV.work; the next
    controller's lock_acquire answers only after that."""
    import io
    import time

    from agent.rpc import Server

    engine = FakeEngine()
    started, finish = threading.Event(), threading.Event()

    def slow_rollout(ctx, args):  # a put-back still running
        started.set()
        finish.wait(10)
        return {}

    out = io.BytesIO()
    server = Server(io.BytesIO(), out, lambda: engine, str(tmp_path), operations={"rollout": slow_rollout})
    line = json.dumps({"v": 1, "id": 1, "op": "rollout", "args": {"spec": {"env": "prod"}}}).encode()
    worker = threading.Thread(target=server.handle, args=(line,))
    worker.start()
    assert started.wait(10)
    events = []
    ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path),
                  emit=lambda t, **d: events.append(dict(d, type=t)))
    with pytest.raises(AgentError) as info:  # bounded: refused with a clear reason
        AL.wait_for_work(ctx, "prod", wait_s=0.3)
    assert info.value.kind == "locked" and "still running" in info.value.message
    threading.Timer(0.5, finish.set).start()
    t0 = time.monotonic()
    got = OPERATIONS["lock_acquire"](ctx, {"env": "prod", "holder": HOLDER})
    try:
        assert got["acquired"] and got["waited_for_work"] > 0.3 and time.monotonic() - t0 > 0.3
        assert any(e["type"] == "lock.waiting" and "putting a batch back" in e["reason"] for e in events)
        worker.join(10)
        assert json.loads(out.getvalue().splitlines()[-1])["result"] == {}
        # other environments and read-only operations never wait
        assert OPERATIONS["lock_acquire"](ctx, {"env": "test", "holder": HOLDER})["waited_for_work"] < 0.3
    finally:
        OPERATIONS["lock_release"](ctx, {"env": "prod"})
        OPERATIONS["lock_release"](ctx, {"env": "test"})


def test_which_operations_hold_the_work_lock():
    from agent.rpc import _work_env

    assert _work_env("rollout", {"spec": {"env": "prod"}}) == "prod"
    assert _work_env("restore", {"env": "prod"}) == "prod"
    assert _work_env("remove", {"project": "shop"}) is None  # no env: nothing to wait on
    assert _work_env("state", {"env": "prod"}) is None
    assert _work_env("retire", {"env": "../etc"}) is None  # the operation itself refuses it

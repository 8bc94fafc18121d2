"""The lock's lease and `orch lock break`: a controller that goes silent without closing
its connection loses the lock within the lease; a busy one that pings keeps it; an
operator can break a lock, and the break is recorded in the ledger."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agent import lock as AL
from agent.fake import FakeEngine
from agent.operations import OPERATIONS
from agent.rpc import Server
from orchestrator.io import transport as T
from tests.unit.fakes import AgentProcess

HOLDER = {"user": "ada", "host": "laptop", "command": "orch up --env prod", "started": "2024-01-01T10:00:00Z"}
BY = {"user": "Ops <ops@example.com>", "host": "bastion", "login": "ops"}


class Agent:
    """A Server on real pipes in a thread; the test is its controller."""

    def __init__(self, tmp_path, lease, operations=None):
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        self.stdin = os.fdopen(w_in, "wb", buffering=0)
        self.stdout = os.fdopen(r_out, "rb")
        ops = dict(OPERATIONS, **(operations or {}))
        engine = FakeEngine()
        self.server = Server(os.fdopen(r_in, "rb"), os.fdopen(w_out, "wb", buffering=0), lambda: engine,
                             str(tmp_path), operations=ops)
        self.server.lease_seconds = lease
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.n = 0

    def _serve(self):
        self.server.serve()
        self.done.set()

    def send(self, op, args=None):
        self.n += 1
        self.stdin.write((json.dumps({"v": 1, "id": self.n, "op": op, "args": args or {}}) + "\n").encode())
        return self.n

    def answer(self, req_id):
        while True:
            msg = json.loads(self.stdout.readline())
            if msg.get("id") == req_id and "event" not in msg:
                return msg

    def close(self):
        self.stdin.close()
        self.thread.join(10)


def lock_file(tmp_path):
    return str(tmp_path / "engines" / "FAKE-ENGINE-1" / "locks" / "prod.lock")


def test_a_silent_controller_loses_the_lock_within_the_lease(tmp_path):
    a = Agent(tmp_path, lease=1.0)
    try:
        assert a.answer(a.send("lock_acquire", {"env": "prod", "holder": HOLDER}))["result"]["acquired"]
        t0 = time.monotonic()
        # The channel stays open (no end of input): only the silence tells.
        assert a.done.wait(10), "the agent kept serving a controller silent for 10 s (lease 1 s)"
        assert 0.9 <= time.monotonic() - t0 < 5
        assert not AL.is_locked(lock_file(tmp_path))
        gave_up = json.loads(a.stdout.readline())
        assert gave_up["id"] is None and gave_up["error"]["kind"] == "lease_expired"
    finally:
        a.close()


def test_pings_keep_the_lease_while_an_operation_runs_and_silence_cancels_it(tmp_path):
    cancelled = []

    def slow(ctx, args):  # a long pull or rollout: no request from the controller meanwhile
        end = time.monotonic() + args["s"]
        while time.monotonic() < end:
            if ctx.cancelled.wait(0.05):
                cancelled.append(AL.is_locked(lock_file(tmp_path)))  # the lock went first
                return {"cancelled": True}
        return {"cancelled": False}

    a = Agent(tmp_path, lease=2.0, operations={"slow": slow})
    try:
        assert a.answer(a.send("lock_acquire", {"env": "prod", "holder": HOLDER}))["result"]["acquired"]
        req = a.send("slow", {"s": 4})
        for _ in range(20):  # 5 s of pings, 0.25 s apart: the lease never runs out
            time.sleep(0.25)
            a.stdin.write(b'{"v":1,"id":0,"op":"ping","args":{}}\n')
        assert a.answer(req)["result"] == {"cancelled": False}
        st = a.answer(a.send("lock_status", {"env": "prod"}))["result"]
        assert st["held"] and st["mine"]
        # now silent in the middle of an operation: cancelled (its put-back would run), lock freed
        req = a.send("slow", {"s": 30})
        assert a.answer(req)["result"] == {"cancelled": True}
        assert cancelled == [False]
        assert a.done.wait(10) and not AL.is_locked(lock_file(tmp_path))
    finally:
        a.close()


def test_a_session_that_ended_gives_nothing_up_later(tmp_path):
    """Once serve() returned (end of input), its lease thread stops: a give-up then would
    free the locks of the process's other sessions (in tests, one process holds many)."""
    a = Agent(tmp_path, lease=0.3)
    a.stdin.close()
    assert a.done.wait(10)
    given = []
    a.server.give_up = given.append
    time.sleep(1.0)
    assert given == []
    a.close()


class FakeChannel:
    """An exec channel whose agent answers `call` only after 1.2 s, and records what was sent."""

    def __init__(self):
        self.sent = []
        self.answer = threading.Event()

    def recv(self, size):
        self.answer.wait(1.2)
        return b'{"id": 1, "result": {"ok": true}}\n'

    def settimeout(self, t):
        pass

    def sendall(self, data):
        self.sent.append((time.monotonic(), json.loads(data)))

    def shutdown_write(self):
        pass

    def exit_status_ready(self):
        return True

    def close(self):
        pass


def test_the_session_pings_while_its_main_thread_waits_on_a_call(monkeypatch):
    monkeypatch.setattr(T.AgentSession, "ping_interval", 0.2)
    conn = type("Conn", (), {"name": "n1", "options": T.SSHOptions()})()
    channel = FakeChannel()
    session = T.AgentSession(conn, channel, "/x.pyz", False)  # as deploy.open_agent makes them
    try:
        t0 = time.monotonic()
        assert session.call("rollout", {}) == {"ok": True}  # blocked 1.2 s in the read
        pings = [t for t, msg in channel.sent if msg["op"] == "ping"]
        assert len(pings) >= 4 and all(t - t0 < 1.3 for t in pings[:4])
        assert [msg["op"] for _, msg in channel.sent][0] == "rollout"
    finally:
        session.close()
    n = len(channel.sent)
    time.sleep(0.5)
    assert len(channel.sent) == n  # no pings after close


# --------------------------------------------------------------------------- lock break

def test_lock_break_makes_the_holder_let_go_and_records_who_and_why(tmp_path):
    holder, op = AgentProcess(str(tmp_path)), AgentProcess(str(tmp_path))
    try:
        assert holder.call("lock_acquire", {"env": "prod", "holder": HOLDER})["result"]["acquired"]
        bad = op.call("lock_break", {"env": "prod", "reason": " ", "by": BY})
        assert bad["error"]["kind"] == "bad_request" and "reason" in bad["error"]["message"]
        out = op.call("lock_break", {"env": "prod", "reason": "CI runner 7 lost its network", "by": BY})["result"]
        assert out["held"] and out["broken"] and not out["killed"] and out["pids"] == [holder.p.pid]
        assert out["holder"]["user"] == "ada"
        assert holder.p.wait(10) == 0  # it gave up by itself (SIGTERM: as on a lost lease), not killed
        assert op.call("lock_status", {"env": "prod"})["result"]["held"] is False
        breaks = op.call("lock_break_list", {"env": "prod"})["result"]["breaks"]
        assert len(breaks) == 1 and breaks[0]["by"] == BY and breaks[0]["reason"] == "CI runner 7 lost its network"
        assert breaks[0]["holder"]["command"] == "orch up --env prod" and breaks[0]["at"]
        # nothing held: nothing to break, nothing recorded
        again = op.call("lock_break", {"env": "prod", "reason": "again", "by": BY})["result"]
        assert not again["held"] and not again["broken"]
        assert len(op.call("lock_break_list", {"env": "prod"})["result"]["breaks"]) == 1
    finally:
        for a in (holder, op):
            if a.p.poll() is None:
                a.p.kill()
            a.p.wait()


def test_lock_break_kills_a_holder_that_does_not_let_go(tmp_path):
    stuck = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, os, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(600)
    """), lock_file(tmp_path)], stdout=subprocess.PIPE, text=True)
    op = AgentProcess(str(tmp_path))
    try:
        assert stuck.stdout.readline().strip() == "locked"
        out = op.call("lock_break", {"env": "prod", "reason": "wedged", "by": BY, "wait_s": 1})["result"]
        assert out["broken"] and out["killed"]
        assert stuck.wait(10) == -signal.SIGKILL
        assert op.call("lock_break_list", {"env": "prod"})["result"]["breaks"][0]["killed"] is True
    finally:
        for p in (stuck, op.p):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_cli_lock_break_needs_a_reason(tmp_path):
    orch = str(Path(sys.executable).parent / "orch")
    res = subprocess.run([orch, "lock", "break", "--env", "dev", "--environments", str(tmp_path), "--text"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--reason is missing" in res.stderr and "Traceback" not in res.stderr

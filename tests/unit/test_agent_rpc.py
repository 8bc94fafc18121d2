"""The agent's request loop over real pipes, with the FakeEngine behind it."""

import json
import os
import threading

import pytest

from agent.fake import FakeEngine
from agent.protocol import PROTOCOL_VERSION
from agent.rpc import Server
from agent.spec import config_hash


class Agent:
    def __init__(self, tmp_path, engine):
        r_in, self.w_in = os.pipe()
        self.r_out, w_out = os.pipe()
        self.stdin = os.fdopen(self.w_in, "wb", buffering=0)
        self.stdout = os.fdopen(self.r_out, "rb")
        self.server = Server(os.fdopen(r_in, "rb"), os.fdopen(w_out, "wb", buffering=0), lambda: engine,
                             str(tmp_path))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.n = 0

    def _serve(self):
        self.server.serve()
        self.server.stdout.close()

    def send(self, obj):
        self.stdin.write((json.dumps(obj) + "\n").encode())

    def request(self, op, args=None, v=PROTOCOL_VERSION):
        self.n += 1
        self.send({"v": v, "id": self.n, "op": op, "args": args or {}})
        return self.n

    def read(self):
        return json.loads(self.stdout.readline())

    def until_done(self, req_id):
        events = []
        while True:
            msg = self.read()
            assert msg["id"] == req_id
            if "event" in msg:
                events.append(msg["event"])
            else:
                return events, msg


@pytest.fixture
def agent(tmp_path):
    engine = FakeEngine(images=["busybox:latest"])
    a = Agent(tmp_path, engine)
    a.engine = engine
    yield a
    a.stdin.close()
    a.thread.join(5)


def test_hello_then_errors_keep_the_loop_alive(agent):
    _, msg = agent.until_done(agent.request("hello", {"protocol": PROTOCOL_VERSION}))
    assert msg["result"]["protocol"] == PROTOCOL_VERSION
    _, msg = agent.until_done(agent.request("frobnicate"))
    assert msg["error"]["kind"] == "bad_request" and "unknown operation" in msg["error"]["message"]
    _, msg = agent.until_done(agent.request("info", v=PROTOCOL_VERSION + 1))
    assert msg["error"]["kind"] == "protocol"
    agent.stdin.write(b"{broken\n")
    msg = agent.read()
    assert msg["id"] is None and msg["error"]["kind"] == "bad_request"
    _, msg = agent.until_done(agent.request("state", {}))
    assert msg["result"] == {"containers": []}


def test_apply_streams_events_then_one_result(agent):
    c = {"image": "busybox:latest"}
    spec = {"project": "p", "service": "s", "replicas": [1], "config_hash": config_hash(c), "container": c}
    events, msg = agent.until_done(agent.request("apply", {"spec": spec, "min_running": 0}))
    assert [e["type"] for e in events] == ["apply.start", "container.create", "container.start", "container.running"]
    assert msg["result"]["containers"][0]["action"] == "created"


def test_cancel_stops_a_follow_stream(agent):
    c = {"image": "busybox:latest"}
    spec = {"project": "p", "service": "s", "replicas": [1], "config_hash": config_hash(c), "container": c}
    agent.until_done(agent.request("apply", {"spec": spec, "min_running": 0}))
    logs = agent.request("logs", {"project": "p", "follow": True})
    first = agent.read()
    assert first["event"]["line"] == "starting p-s-1"
    agent.request("cancel", {"target": logs})
    seen = [agent.read(), agent.read()]
    results = {m["id"]: m["result"] for m in seen}
    assert results[logs]["cancelled"] is True and results[logs + 1] == {"cancelled": logs}


def test_end_of_input_ends_the_agent(agent):
    agent.stdin.close()
    agent.thread.join(120)  # a hang guard: it ends at once
    assert not agent.thread.is_alive()


def test_a_bug_is_reported_not_fatal(tmp_path):
    def boom(ctx, args):
        raise ZeroDivisionError("oops")

    a = Agent(tmp_path, FakeEngine())
    a.server.operations = {"boom": boom}
    _, msg = a.until_done(a.request("boom"))
    assert msg["error"]["kind"] == "internal" and "ZeroDivisionError" in msg["error"]["message"]
    a.stdin.close()
    a.thread.join(5)


def test_quiet_operations_send_heartbeats(tmp_path):
    go_on = threading.Event()

    def slow(ctx, args):  # quiet until the test has seen two heartbeats
        assert go_on.wait(120), "no two heartbeats within 120 s"  # (a hang guard)
        return {"ok": True}

    a = Agent(tmp_path, FakeEngine())
    a.server.operations = {"slow": slow}
    a.server.heartbeat_interval = 0.1
    req = a.request("slow")
    beats = [a.read(), a.read()]  # while it is still busy
    assert [(m["id"], m["event"]["type"]) for m in beats] == [(req, "heartbeat")] * 2
    go_on.set()
    events, msg = a.until_done(req)
    assert msg["result"] == {"ok": True} and {e["type"] for e in events} <= {"heartbeat"}
    a.stdin.close()
    a.thread.join(5)

"""The agent's request loop over real pipes, with the FakeEngine behind it."""

import json
import os
import threading

import pytest

from agent.fake import FakeEngine
from agent.wire.protocol import PROTOCOL_VERSION
from agent.rpc import Server
from agent.wire.spec import config_hash


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


# --------------------------------------------------------------------------- the wire contract
# Each refused request gets a bad_request answer, and the session answers the next one.


def _still_serving(agent):
    _, msg = agent.until_done(agent.request("state", {}))
    assert msg["result"] == {"containers": []}


def _raw(agent, text):
    agent.stdin.write(text.encode() + b"\n")
    return agent.read()


@pytest.mark.parametrize("project", ["web\n", "web\n\n", "\nweb"])
def test_a_name_with_a_newline_is_refused(agent, project):
    _, msg = agent.until_done(agent.request("state", {"project": project}))
    assert msg["error"]["kind"] == "bad_request" and "not a valid project name" in msg["error"]["message"]
    _still_serving(agent)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_at_parse_time(agent, constant):
    msg = _raw(agent, '{"v": 1, "id": 5, "op": "info", "args": {}, "pad": %s}' % constant)
    assert msg["id"] == 5 and msg["error"]["kind"] == "bad_request"
    assert constant.lstrip("-") in msg["error"]["message"]
    _still_serving(agent)


@pytest.mark.parametrize("target", [[1], {"a": 1}, "1", True, -1, 1.5, None, 2 ** 60])
def test_a_cancel_with_a_bad_target_is_refused_and_the_session_goes_on(agent, target):
    _, msg = agent.until_done(agent.request("cancel", {"target": target}))
    assert msg["error"]["kind"] == "bad_request" and "target" in msg["error"]["message"]
    _still_serving(agent)


def test_a_cancel_the_reader_does_not_recognise_is_still_a_cancel(agent):
    # An escaped op name reaches the main loop, which treats it the same way.
    msg = _raw(agent, '{"v": 1, "id": 9, "op": "\\u0063ancel", "args": {"target": 3}}')
    assert msg == {"id": 9, "result": {"cancelled": 3}}
    _still_serving(agent)


@pytest.mark.parametrize("req_id", ["7", True, 1.5, [7], -1, 2 ** 60])
def test_a_request_id_must_be_an_integer(agent, req_id):
    agent.send({"v": 1, "id": req_id, "op": "info", "args": {}})
    msg = agent.read()
    assert msg["id"] is None and msg["error"]["kind"] == "bad_request" and "'id'" in msg["error"]["message"]
    _still_serving(agent)


@pytest.mark.parametrize("op", ["info", "cancel"])
def test_deep_nesting_is_refused(agent, op):
    deep = "[" * 100_000 + "]" * 100_000
    msg = _raw(agent, '{"v": 1, "id": 4, "op": "%s", "args": {"target": 1}, "pad": %s}' % (op, deep))
    assert msg["error"]["kind"] == "bad_request" and "nested" in msg["error"]["message"]
    pad = "[" * 70 + "]" * 70  # beyond MAX_DEPTH, within what json itself parses
    msg = _raw(agent, '{"v": 1, "id": 5, "op": "%s", "args": {"target": 1}, "pad": %s}' % (op, pad))
    assert msg == {"id": 5, "error": {"kind": "bad_request", "message": "request is nested more than 64 levels deep",
                                      "details": {}}}
    _still_serving(agent)


def test_huge_numbers_are_refused(agent):
    msg = _raw(agent, '{"v": 1, "id": 6, "op": "info", "args": {}, "pad": 1%s}' % ("0" * 5000))
    assert msg["id"] == 6 and msg["error"]["kind"] == "bad_request" and "20 digits" in msg["error"]["message"]
    _, msg = agent.until_done(agent.request("logs", {"project": "p", "tail": 2 ** 60}))
    assert msg["error"]["kind"] == "bad_request" and "tail" in msg["error"]["message"]
    _, msg = agent.until_done(agent.request("lock_acquire", {"env": "dev", "wait_s": 1e300}))
    assert msg["error"]["kind"] == "bad_request" and "wait_s must be <=" in msg["error"]["message"]
    _still_serving(agent)


def test_a_request_longer_than_the_limit_is_refused_unread(agent):
    from agent.wire.protocol import MAX_REQUEST_BYTES

    # A valid request, only too long: it is skipped, not parsed, and answered in turn.
    pad = "x" * (MAX_REQUEST_BYTES + 10)
    writer = threading.Thread(target=agent.send, args=({"v": 1, "id": 3, "op": "info", "args": {}, "pad": pad},))
    writer.start()
    msg = agent.read()
    writer.join(120)  # a hang guard
    assert msg["id"] is None and msg["error"]["kind"] == "bad_request" and "longer than" in msg["error"]["message"]
    _still_serving(agent)


def test_a_long_log_line_comes_out_in_pieces(agent):
    from agent.wire.protocol import MAX_LOG_LINE

    c = {"image": "busybox:latest"}
    spec = {"project": "p", "service": "s", "replicas": [1], "config_hash": config_hash(c), "container": c}
    agent.until_done(agent.request("apply", {"spec": spec, "min_running": 0}))
    line = "é" * (3 * MAX_LOG_LINE // 2) + "end"  # 2 bytes a character: 3 * MAX_LOG_LINE + 3 bytes
    agent.engine.records[next(iter(agent.engine.records))]["logs"] = [line, "next"]
    events, msg = agent.until_done(agent.request("logs", {"project": "p"}))
    got = [e["line"] for e in events if e["type"] == "log"]
    assert all(len(p.encode()) <= MAX_LOG_LINE for p in got) and len(got) == 5
    assert "".join(got[:-1]) == line and got[-1] == "next" and msg["result"]["lines"] == 5

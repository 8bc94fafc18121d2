"""The detached stop helper (agent.stops._detached): on a real engine the background stop,
and a discard's removal of a container still stopping, run in a process of their own, so
the agent process ends with its session. Here against a stand-in engine API on a unix
socket under tmp_path (the helper speaks HTTP to it, as to dockerd's socket)."""

import http.server
import os
import socketserver
import threading
import time
from types import SimpleNamespace

import pytest

from agent import stops
from agent.context import Context
from agent.fake import FakeEngine
from agent.lock import wait_for_work

STOP_SECONDS = 0.6


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self):
        self.server.seen.append((self.command, self.path, time.monotonic()))
        if self.command == "POST" and self.path.endswith("/stop"):
            time.sleep(STOP_SECONDS)  # the container's grace period
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_DELETE = _answer


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def api(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = _Engine(path, _Handler)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, path
    server.shutdown()
    server.server_close()


@pytest.fixture
def ctx(tmp_path, api, monkeypatch):
    monkeypatch.setattr(stops, "_engine_socket", lambda ctx: api[1])
    return Context(engine_factory=lambda: None, state_dir=str(tmp_path / "state"), engine_id=lambda: "ENGINE-1")


OLD = SimpleNamespace(id="c0ffee" * 4, name="shop-web-1-prev", service="web", replica=1)


def test_the_stop_runs_in_a_helper_that_holds_the_marker_and_the_work_lock(ctx, api):
    server, _ = api
    t0 = time.monotonic()
    assert stops.stop_in_background(ctx, OLD, "prod") is None  # no thread here: a helper process
    assert time.monotonic() - t0 < STOP_SECONDS / 2
    # The next controller's lock_acquire waits for the helper's stop, as for this process's work.
    assert wait_for_work(ctx, "prod", wait_s=10) >= STOP_SECONDS / 3
    outcome = stops.wait_stopped(ctx, OLD.id)
    assert outcome["seconds"] >= STOP_SECONDS * 0.9 and "error" not in outcome
    assert [(m, p) for m, p, _ in server.seen] == [("POST", f"/containers/{OLD.id}/stop")]
    assert stops.pending(ctx) == []  # the marker was consumed


def test_a_discard_hands_a_stopping_container_to_a_helper_that_removes_it_once_stopped(ctx, api):
    server, _ = api
    stops.stop_in_background(ctx, OLD, "prod")
    t0 = time.monotonic()
    assert stops.remove_when_stopped(ctx, OLD, "prod", grace=0.1) is True
    assert time.monotonic() - t0 < STOP_SECONDS / 2  # the discard answers after its short grace
    deadline = time.monotonic() + 10
    while len(server.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    (m1, p1, t1), (m2, p2, t2) = server.seen
    assert (m1, p1) == ("POST", f"/containers/{OLD.id}/stop")
    assert (m2, p2) == ("DELETE", f"/containers/{OLD.id}?force=1") and t2 - t1 >= STOP_SECONDS * 0.9
    wait_for_work(ctx, "prod", wait_s=10)
    assert not os.path.exists(os.path.join(ctx.data_dir(), "stops", OLD.id))


def test_a_stop_that_ends_within_the_grace_is_not_handed_over(ctx, api):
    stops.stop_in_background(ctx, OLD, "prod")
    t0 = time.monotonic()
    assert stops.remove_when_stopped(ctx, OLD, "prod", grace=5) is False  # the caller removes it in place
    assert STOP_SECONDS * 0.8 <= time.monotonic() - t0 < 5
    assert [m for m, _, _ in api[0].seen] == ["POST"]
    assert stops.wait_stopped(ctx, OLD.id)["seconds"] >= STOP_SECONDS * 0.9


def test_a_stop_begun_longer_ago_than_the_grace_is_handed_over_at_once(ctx, api):
    """A SIGTERM-deaf app's old container, stopped a batch or more ago: the discard does not
    wait for it again (the grace counts from the stop's start)."""
    stops.stop_in_background(ctx, OLD, "prod")
    time.sleep(STOP_SECONDS / 3)
    t0 = time.monotonic()
    assert stops.remove_when_stopped(ctx, OLD, "prod", grace=STOP_SECONDS / 4) is True
    assert time.monotonic() - t0 < STOP_SECONDS / 4
    wait_for_work(ctx, "prod", wait_s=10)


def test_without_a_stop_under_way_nothing_is_handed_over(ctx, api):
    assert stops.remove_when_stopped(ctx, OLD, "prod") is False
    assert api[0].seen == []


def test_a_fake_engine_stops_in_a_thread_and_removes_in_place(tmp_path):
    engine = FakeEngine(images=["busybox"])
    ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path / "state"))
    cid = engine.create("shop-web-1-prev", {"Image": "busybox", "Labels": {}}, [])
    engine.start(cid)
    c = engine.container(cid)
    t = stops.stop_in_background(ctx, c, "prod")
    assert isinstance(t, threading.Thread)
    t.join(5)
    assert stops.remove_when_stopped(ctx, c, "prod") is False
    assert stops.wait_stopped(ctx, cid)["seconds"] >= 0


def test_a_stop_that_cannot_start_leaves_no_marker_to_wait_for(ctx, monkeypatch):
    def broken(*a):
        raise RuntimeError("no helper")

    monkeypatch.setattr(stops, "_engine_socket", broken)
    with pytest.raises(RuntimeError):
        stops.stop_in_background(ctx, OLD, "prod")
    assert stops.pending(ctx) == [] and stops.wait_stopped(ctx, OLD.id) is None

"""Stops off the critical path (agent.stops): a start-first batch answers before its old
container's stop ends; await_stops, restore and discard wait for that stop, in any agent
process of the engine (the marker under the state directory), and never signal twice."""

import threading
import time

import pytest

from agent.context import Context
from agent.fake import FakeEngine
from agent.operations import OPERATIONS
from agent.stops import pending, stop_in_background, wait_stopped
from agent.wire import labels as L
from agent.wire.protocol import BadRequest
from agent.wire.spec import config_hash
from agent.wire.stops import AwaitStopsRequest, AwaitStopsResult

V1, V2 = "web:v1", "web:v2"
HC = {"test": ["CMD", "true"], "interval": 1, "retries": 2}
INGRESS = {"port": {"published": 8080, "target": 80, "protocol": "http"}, "health": {"path": "/"},
           "drain_timeout": 1}


class FakeIngress:
    """The node's ingress as the rollout drives it: frontends and their servers, all ready at once."""

    def __init__(self):
        self.frontends = {}

    def frontend(self, project, service):
        return self.frontends.get((project, service))

    def sync(self, args):
        self.frontends[(args["project"], args["service"])] = {
            "port": args["port"], "health": args["health"], "servers": [{"name": b["name"]} for b in args["backends"]]}
        return {}

    def drain(self, args):
        return {}

    def remove(self, args):
        self.frontends.pop((args["project"], args["service"]), None)
        return {}


def spec(image=V1, replicas=(1, 2)):
    c = {"image": image, "networks": [{"name": "default"}], "healthcheck": HC}
    return {"project": "shop", "service": "web", "env": "prod", "replicas": list(replicas),
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}


def names(engine):
    return sorted((c.name, c.state) for c in engine.containers(L.filters("shop", "web")))


class SlowStops:
    """Holds the engine's stops of `only` (else of every container) until released: an app
    deaf to SIGTERM, its grace period."""

    def __init__(self, engine, only=None):
        self.release = threading.Event()
        self.stops = []
        self.only = only
        engine.fail_on["stop"] = self.hold

    def hold(self, cid, *a):
        if self.only is None or cid == self.only:
            self.stops.append(cid)
            assert self.release.wait(10), "the test never released the stop"

    def release_in(self, seconds):
        threading.Timer(seconds, self.release.set).start()


@pytest.fixture
def engine():
    return FakeEngine(images=[V1, V2])


@pytest.fixture
def events():
    return []


@pytest.fixture
def ctx_for(engine, events, tmp_path):
    ingress = FakeIngress()

    def ctx_for(cancelled=None):
        # A new Context per call, like each request of each agent process (they share the state dir).
        ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path / "state"),
                      emit=lambda t, **d: events.append(dict(d, type=t)), ingress=ingress)
        if cancelled is not None:
            ctx.cancelled = cancelled
        return ctx

    return ctx_for


@pytest.fixture
def run(ctx_for):
    return lambda op, args: OPERATIONS[op](ctx_for(), args)


def _rolled(run, engine):
    """web replica 1 on v1 behind the ingress, then rolled start-first to v2: (old id)."""
    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V1, replicas=(1,)), "replicas": [], "ingress": INGRESS})
    old = engine.container("shop-web-1").id
    slow = SlowStops(engine, only=old)
    t0 = time.monotonic()
    res = run("rollout", {"spec": spec(V2, replicas=(1,)), "replicas": [1], "order": "start-first",
                          "ingress": INGRESS})
    return old, slow, res, time.monotonic() - t0


def test_the_batch_answers_before_the_old_containers_stop_ends(run, engine, events):
    old, slow, res, took = _rolled(run, engine)
    try:
        assert took < 5  # not held by the stop
        assert res["replaced"][0]["old"]["id"] == old and res["replaced"][0]["old"]["was_running"] is True
        # still stopping: running under its kept name, reported as stopping, never as stopped
        assert names(engine) == [("shop-web-1", "running"), ("shop-web-1-prev", "running")]
        assert [e["container"] for e in events if e["type"] == "container.stopping"] == ["shop-web-1-prev"]
        assert not [e for e in events if e["type"] == "container.stop"]
    finally:
        slow.release.set()
    res = run("await_stops", {"project": "shop", "env": "prod"})
    assert [(s["id"], s["how"]) for s in res["stopped"]] == [(old, "background")]
    assert names(engine) == [("shop-web-1", "running"), ("shop-web-1-prev", "exited")]
    assert slow.stops == [old]  # one stop signal


def test_await_stops_waits_for_a_stop_under_way(run, engine, events, ctx_for):
    old, slow, _, _ = _rolled(run, engine)
    slow.release_in(0.4)
    t0 = time.monotonic()
    res = AwaitStopsResult.from_dict(run("await_stops", {"project": "shop", "env": "prod"}))
    assert time.monotonic() - t0 >= 0.3
    (stopped,) = res.stopped
    assert (stopped.id, stopped.name, stopped.how) == (old, "shop-web-1-prev", "background")
    assert stopped.waited >= 0.3 and stopped.seconds >= 0.3
    stop = next(e for e in events if e["type"] == "container.stop")
    assert (stop["container"], stop["reason"], stop["how"]) == ("shop-web-1-prev", "replaced", "background")
    assert engine.container(old).state == "exited"
    assert pending(ctx_for()) == []  # the marker was consumed
    # a second call has nothing left to report
    assert run("await_stops", {"project": "shop", "env": "prod"}) == {"stopped": []}


def test_a_rollback_starts_the_kept_container_only_after_its_stop(run, engine):
    old, slow, _, _ = _rolled(run, engine)
    slow.release_in(0.3)
    run("restore", {"project": "shop", "service": "web", "env": "prod", "ingress": INGRESS,
                    "replicas": [{"replica": 1, "was_running": True}]})
    # back under its name and running: started again after the stop, not stopped after the start
    assert names(engine) == [("shop-web-1", "running")]
    assert engine.container("shop-web-1").id == old
    calls = [(m, a[0]) for m, a in engine.calls if m in ("stop", "start") and a and a[0] == old]
    assert calls[-2:] == [("stop", old), ("start", old)]


def test_discard_waits_and_does_not_signal_twice(run, engine, events):
    old, slow, _, _ = _rolled(run, engine)
    slow.release_in(0.3)
    res = run("discard", {"project": "shop", "env": "prod"})
    assert [r["id"] for r in res["removed"]] == [old]
    assert names(engine) == [("shop-web-1", "running")]
    assert slow.stops == [old]


def test_a_kept_container_running_with_no_stop_under_way_is_stopped_now(run, engine):
    run("apply", {"spec": spec(V1, replicas=(1,))})
    c = engine.container("shop-web-1")
    engine.rename(c.id, "shop-web-1-prev")  # as a controller that died mid-batch leaves it
    res = run("await_stops", {"project": "shop", "env": "prod"})
    assert [(s["name"], s["how"]) for s in res["stopped"]] == [("shop-web-1-prev", "now")]
    assert engine.container(c.id).state == "exited"


def test_a_failed_background_stop_is_stopped_by_await_stops(run, engine, ctx_for):
    run("apply", {"spec": spec(V1, replicas=(1,))})
    c = engine.container("shop-web-1")
    engine.rename(c.id, "shop-web-1-prev")
    failed = []

    def fail_once(cid, *a):
        if not failed:
            failed.append(cid)
            raise RuntimeError("engine hiccup")

    engine.fail_on["stop"] = fail_once
    stop_in_background(ctx_for(), engine.container(c.id), "prod").join(5)
    assert engine.container(c.id).state == "running"
    res = run("await_stops", {"project": "shop", "env": "prod"})
    assert [(s["name"], s["how"]) for s in res["stopped"]] == [("shop-web-1-prev", "now")]
    assert engine.container(c.id).state == "exited"


def test_wait_stopped_is_cancellable_and_none_without_a_stop(engine, ctx_for):
    engine.create("shop-web-1-prev", {"Image": V1, "Labels": {L.PROJECT: "shop", L.SERVICE: "web"}}, [])
    cid = engine.container("shop-web-1-prev").id
    engine.start(cid)
    assert wait_stopped(ctx_for(), cid) is None
    slow = SlowStops(engine)
    stop_in_background(ctx_for(), engine.container(cid), "prod")
    cancelled = threading.Event()
    threading.Timer(0.2, cancelled.set).start()
    try:
        with pytest.raises(Exception) as info:
            wait_stopped(ctx_for(cancelled), cid)
        assert getattr(info.value, "kind", "") == "cancelled"
    finally:
        slow.release.set()
    assert wait_stopped(ctx_for(), cid)["seconds"] >= 0


def test_the_request_and_result_are_checked():
    assert AwaitStopsRequest.from_dict({"project": "shop", "env": "prod"}) == AwaitStopsRequest("shop", "prod")
    for bad in ({"project": "shop", "extra": 1}, {"env": "prod"}, {"project": "Bad Name!"}):
        with pytest.raises(BadRequest):
            AwaitStopsRequest.from_dict(bad)
    with pytest.raises(BadRequest):
        AwaitStopsResult.from_dict({"stopped": [{"id": "x", "name": "n", "how": "later"}]})
    res = AwaitStopsResult.from_dict({"stopped": [{"id": "x", "name": "n", "service": "web", "replica": 1,
                                                   "how": "now", "seconds": 1.5, "waited": 0}]})
    assert AwaitStopsResult.from_dict(res.to_dict()) == res

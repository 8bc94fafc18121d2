"""The agent's rolling replacement (agent.rollout) against the FakeEngine and a fake ingress."""

import pytest

from agent.wire import labels as L
from agent.fake import FakeEngine
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError
from agent.wire.spec import config_hash
from tests.unit.fakes import FakeClock as Clock

V1, V2, BAD = "web:v1", "web:v2", "web:bad"
HC = {"test": ["CMD", "true"], "interval": 1, "retries": 2}
INGRESS = {"port": {"published": 8080, "target": 80, "protocol": "http"}, "health": {"path": "/"},
           "drain_timeout": 1}


class FakeIngress:
    """Records what the rollout asks of the node's ingress; the servers it holds."""

    def __init__(self):
        self.frontends = {}
        self.calls = []
        self.refuse = lambda backend: False  # backends HAProxy's checks never pass

    def frontend(self, project, service):
        return self.frontends.get((project, service))

    def sync(self, args):
        names = [b["name"] for b in args["backends"]]
        self.calls.append(("sync", sorted(b["container"] for b in args["backends"])))
        bad = [b for b in args["backends"] if self.refuse(b)]
        if bad:  # like agent.ingress: the new servers stay out of rotation, the old keep serving
            old = {x["name"] for x in (self.frontends.get((args["project"], args["service"])) or {}).get(
                "servers", [])}
            self.frontends[(args["project"], args["service"])] = {"servers": [
                {"name": n, "state": "ready" if n in old else "warming"} for n in names]}
            raise AgentError("unhealthy", "server %s is DOWN" % bad[0]["name"])
        self.frontends[(args["project"], args["service"])] = {"port": args["port"], "health": args["health"],
                                                              "servers": [{"name": n} for n in names]}
        return {}

    def drain(self, args):
        self.calls.append(("drain", args["server"]))
        return {}

    def remove(self, args):
        self.calls.append(("remove", args["service"]))
        self.frontends.pop((args["project"], args["service"]), None)
        return {}


@pytest.fixture
def engine():
    return FakeEngine(images=[V1, V2, BAD], behaviours={BAD: "unhealthy"})


@pytest.fixture
def events():
    return []


@pytest.fixture
def ingress():
    return FakeIngress()


@pytest.fixture
def run(engine, events, ingress, tmp_path):
    clock = Clock()

    def run(op, args, cancelled=None):
        ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path / "state"),
                      emit=lambda t, **d: events.append(dict(d, type=t)), clock=clock, sleep=clock.sleep,
                      ingress=ingress)
        if cancelled is not None:
            ctx.cancelled = cancelled
        return OPERATIONS[op](ctx, args)

    run.clock = clock
    return run


def spec(image=V1, replicas=(1, 2), **kw):
    c = {"image": image, "networks": [{"name": "default"}], "healthcheck": HC}
    c.update(kw)
    return {"project": "shop", "service": "web", "env": "prod", "replicas": list(replicas),
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}


def names(engine):
    return sorted((c.name, c.state) for c in engine.containers(L.filters("shop", "web")))


def test_stop_first_keeps_the_old_container_stopped_and_renamed(run, engine, events):
    run("apply", {"spec": spec(V1)})
    old = engine.container("shop-web-1")
    events.clear()
    res = run("rollout", {"spec": spec(V2), "replicas": [1], "order": "stop-first", "batch": 1})
    assert res["replaced"][0]["old"] == {"id": old.id, "name": "shop-web-1-prev", "was_running": True,
                                         "release": "", "image": V1}
    assert names(engine) == [("shop-web-1", "running"), ("shop-web-1-prev", "exited"), ("shop-web-2", "running")]
    assert engine.container("shop-web-1").image == V2 and engine.container("shop-web-2").image == V1
    kinds = [e["type"] for e in events if e["type"].startswith(("container.", "rollout."))]
    # stop-first: the old one is stopped and kept before the new one is created
    assert kinds.index("container.retire") < kinds.index("container.create")
    assert [e["batch"] for e in events if e["type"] == "container.start"] == [1]
    # the state marks the kept one, and apply leaves it alone
    state = run("state", {"project": "shop"})
    assert {c["name"]: c["retired"] for c in state["containers"]}["shop-web-1-prev"] is True
    run("apply", {"spec": spec(V2, replicas=(1,))})
    assert ("shop-web-1-prev", "exited") in names(engine)


def test_start_first_with_ingress_switches_before_stopping(run, engine, ingress, events):
    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V1, replicas=(1,)), "replicas": [], "ingress": INGRESS})
    assert ingress.calls == [("sync", ["shop-web-1"])]
    old = engine.container("shop-web-1")
    ingress.calls.clear()
    run("rollout", {"spec": spec(V2, replicas=(1,)), "replicas": [1], "order": "start-first", "ingress": INGRESS})
    new = engine.container("shop-web-1")
    assert new.image == V2
    # new and old together, then the old drained, stopped, and out of the backend
    assert ingress.calls == [("sync", ["shop-web-1", "shop-web-1-prev"]),
                             ("drain", L.server_name("web", 1, old.id)),
                             ("sync", ["shop-web-1"])]
    # its stop left in the background (agent.stops), reported stopped only by await_stops
    assert not [e for e in events if e["type"] == "container.stop"]
    stopping = [i for i, e in enumerate(events) if e["type"] == "container.stopping"]
    healthy = [i for i, e in enumerate(events) if e["type"] == "container.healthy"]
    assert stopping and healthy and healthy[-1] < stopping[0]
    res = run("await_stops", {"project": "shop", "env": "prod"})
    assert [(s["name"], s["how"]) for s in res["stopped"]] == [("shop-web-1-prev", "background")]
    assert [e["container"] for e in events if e["type"] == "container.stop"] == ["shop-web-1-prev"]
    assert engine.container("shop-web-1-prev").state == "exited"


def test_a_failed_batch_is_put_back_before_the_error(run, engine, ingress):
    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V1, replicas=(1,)), "replicas": [], "ingress": INGRESS})
    old = engine.container("shop-web-1")
    ingress.calls.clear()
    with pytest.raises(AgentError) as info:
        run("rollout", {"spec": spec(BAD, replicas=(1,)), "replicas": [1], "order": "start-first",
                        "ingress": INGRESS})
    err = info.value
    assert err.kind == "unhealthy" and err.details["restored"] == [
        {"replica": 1, "removed": err.details["id"], "restored": old.id}]
    assert err.details["logs"]  # the failed container's last lines
    assert names(engine) == [("shop-web-1", "running")] and engine.container("shop-web-1").id == old.id
    # the old one never left the rotation; the ingress ends with it alone
    assert ("drain", L.server_name("web", 1, old.id)) not in ingress.calls
    assert ingress.calls[-1] == ("sync", ["shop-web-1"])


def test_restore_puts_an_earlier_batch_back_hitlessly(run, engine, ingress):
    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V1, replicas=(1,)), "replicas": [], "ingress": INGRESS})
    old = engine.container("shop-web-1")
    res = run("rollout", {"spec": spec(V2, replicas=(1,)), "replicas": [1], "order": "start-first",
                          "ingress": INGRESS})
    new_id = res["replaced"][0]["new"]["id"]
    ingress.calls.clear()
    run("restore", {"project": "shop", "service": "web", "env": "prod", "ingress": INGRESS,
                    "replicas": [{"replica": 1, "was_running": True}]})
    assert names(engine) == [("shop-web-1", "running")]
    assert engine.container("shop-web-1").id == old.id and engine.container(new_id) is None
    # the old one is warmed up next to the new one, then the new one is drained
    assert ingress.calls == [("sync", ["shop-web-1", "shop-web-1-prev"]),
                             ("drain", L.server_name("web", 1, new_id)), ("sync", ["shop-web-1"])]


def test_restore_removes_a_replica_that_was_new(run, engine):
    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V2, replicas=(1, 2)), "replicas": [1, 2]})
    run("restore", {"project": "shop", "service": "web", "env": "prod", "replicas": [{"replica": 1, "was_running": True},
                                                                       {"replica": 2, "was_running": False}]})
    assert names(engine) == [("shop-web-1", "running")] and engine.container("shop-web-1").image == V1


def test_a_replica_holding_a_host_port_is_replaced_stop_first_as_the_plan_sends_it(run, engine, events):
    ports = [{"target": 80, "published": 8080}]
    run("apply", {"spec": spec(V1, replicas=(1,), ports=ports)})
    run("rollout", {"spec": spec(V2, replicas=(1,), ports=ports), "replicas": [{"replica": 1, "order": "stop-first"}]})
    retire = next(e for e in events if e["type"] == "container.retire")
    assert retire["running"] is False  # stopped before the new one started
    assert engine.container("shop-web-1").image == V2 and not [e for e in events if e["type"] == "rollout.order"]


def test_start_first_for_a_replica_holding_a_host_port_is_refused_before_anything_changes(run, engine, events):
    """The safety net: the plan says stop-first for such a replica; a start-first one
    means the plan is stale, and the agent refuses instead of deciding again."""
    ports = [{"target": 80, "published": 8080}]
    run("apply", {"spec": spec(V1, replicas=(1, 2), ports=[])})
    run("rollout", {"spec": spec(V1, replicas=(1, 2), ports=ports), "replicas": [1]})  # replica 1 publishes 8080
    before = {c.name: (c.id, c.state) for c in engine.containers({})}
    events.clear()
    with pytest.raises(AgentError) as err:
        run("rollout", {"spec": spec(V2, replicas=(1, 2), ports=ports),
                        "replicas": [{"replica": 1, "order": "start-first"}, {"replica": 2, "order": "start-first"}]})
    assert err.value.kind == "conflict" and "8080" in err.value.message and "stop-first" in err.value.message
    assert err.value.details["replica"] == 1 and "re-run" in err.value.details["fix"]
    assert {c.name: (c.id, c.state) for c in engine.containers({})} == before
    assert not [e for e in events if e["type"].startswith("container.")]


def test_each_replica_follows_its_own_order(run, engine, events):
    run("apply", {"spec": spec(V1, replicas=(1, 2))})
    run("rollout", {"spec": spec(V2, replicas=(1, 2)),
                    "replicas": [{"replica": 1, "order": "start-first"}, {"replica": 2, "order": "stop-first"}]})
    running = {e["replica"]: e["running"] for e in events if e["type"] == "container.retire"}
    assert running == {1: True, 2: False}
    start = next(e for e in events if e["type"] == "rollout.start")
    assert start["order"] == "mixed" and start["replicas"] == [1, 2]


def test_retire_and_discard(run, engine):
    run("apply", {"spec": spec(V1)})
    out = run("retire", {"project": "shop", "service": "web", "env": "prod", "replicas": [2]})
    assert out["retired"][0]["old"]["name"] == "shop-web-2-prev"
    assert names(engine) == [("shop-web-1", "running"), ("shop-web-2-prev", "exited")]
    run("restore", {"project": "shop", "service": "web", "env": "prod", "replicas": [{"replica": 2, "was_running": True}]})
    assert names(engine) == [("shop-web-1", "running"), ("shop-web-2", "running")]
    run("retire", {"project": "shop", "service": "web", "env": "prod", "replicas": [2]})
    removed = run("discard", {"project": "shop", "env": "prod"})["removed"]
    assert [r["name"] for r in removed] == ["shop-web-2-prev"]
    assert names(engine) == [("shop-web-1", "running")]


def test_min_healthy_time_fails_a_container_that_dies_soon_after(run, engine):
    run("apply", {"spec": spec(V1, replicas=(1,))})
    old = engine.container("shop-web-1")

    def die(now):
        c = engine.container("shop-web-1")
        if c is not None and c.image == V2 and c.state == "running":
            engine.records[c.id]["info"].update(state="exited", exit_code=1)

    run.clock.on_sleep.append(die)
    with pytest.raises(AgentError) as info:
        run("rollout", {"spec": spec(V2, replicas=(1,)), "replicas": [1], "min_healthy": 10})
    assert "min_healthy_time" in info.value.message
    run.clock.on_sleep.clear()
    assert names(engine) == [("shop-web-1", "running")] and engine.container("shop-web-1").id == old.id


def test_a_cancelled_rollout_puts_the_batch_back(run, engine):
    import threading

    run("apply", {"spec": spec(V1, replicas=(1,))})
    cancel = threading.Event()
    engine.behaviours[V2] = "starting"  # never healthy: the rollout waits

    run.clock.on_sleep.append(lambda now: cancel.set())
    with pytest.raises(AgentError) as info:
        run("rollout", {"spec": spec(V2, replicas=(1,)), "replicas": [1]}, cancelled=cancel)
    assert info.value.kind == "cancelled"
    assert names(engine) == [("shop-web-1", "running")] and engine.container("shop-web-1").image == V1


def test_rerun_of_a_replaced_replica_changes_nothing(run, engine):
    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V2, replicas=(1,)), "replicas": [1]})
    engine.calls.clear()
    res = run("rollout", {"spec": spec(V2, replicas=(1,)), "replicas": [1]})
    assert not res["changed"] and res["replaced"] == []
    assert [c[0] for c in engine.calls if c[0] in ("create", "stop", "rename", "remove")] == []


def test_bad_arguments_are_refused(run):
    from agent.wire.protocol import BadRequest

    with pytest.raises(BadRequest):
        run("rollout", {"spec": spec(V1), "replicas": [3]})
    with pytest.raises(BadRequest):
        run("rollout", {"spec": spec(V1), "order": "sideways"})
    with pytest.raises(BadRequest):
        run("restore", {"project": "shop", "service": "web", "env": "prod", "replicas": [{"replica": 0}]})


def test_removing_a_service_or_project_removes_its_ingress(run, engine, ingress, monkeypatch):
    import agent.ingress as I

    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V1, replicas=(1,)), "replicas": [], "ingress": INGRESS})
    monkeypatch.setattr(I, "ingress_state", lambda ctx, project: {
        s: {} for (p, s) in ingress.frontends if p == project})
    out = run("remove", {"project": "shop", "service": "web", "env": "prod", "replicas": [1]})
    assert out["ingress"] == [] and ("shop", "web") in ingress.frontends  # one replica: the port stays
    out = run("remove", {"project": "shop", "env": "prod"})
    assert out["ingress"] == ["web"] and ingress.frontends == {}


def test_a_new_container_failing_the_ingress_check_is_put_back_without_it(run, engine, ingress):
    engine.images.add("web:hapbad")
    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V1, replicas=(1,)), "replicas": [], "ingress": INGRESS})
    old = engine.container("shop-web-1")
    ingress.refuse = lambda b: engine.container(b["container"]).image == "web:hapbad"
    ingress.calls.clear()
    with pytest.raises(AgentError) as info:
        run("rollout", {"spec": spec("web:hapbad", replicas=(1,)), "replicas": [1], "order": "start-first",
                        "ingress": INGRESS})
    assert info.value.details["restored"][0]["restored"] == old.id
    # the put-back leaves the refused container out of every sync
    assert ingress.calls[1:] == [("sync", ["shop-web-1-prev"]), ("sync", ["shop-web-1"])]
    assert names(engine) == [("shop-web-1", "running")] and engine.container("shop-web-1").id == old.id


def test_moving_behind_the_ingress_frees_the_port_first_and_back(run, engine, ingress, events):
    direct = spec(V1, replicas=(1,), ports=[{"target": 80, "published": 8080}])
    run("apply", {"spec": direct})
    old = engine.container("shop-web-1")
    # the plan sends stop-first: the old container publishes 8080, which the ingress needs
    run("rollout", {"spec": spec(V2, replicas=(1,)), "replicas": [{"replica": 1, "order": "stop-first"}],
                    "ingress": INGRESS})
    assert ("shop", "web") in ingress.frontends
    # put back: the old container publishes 8080 itself again, so the frontend goes first
    run("restore", {"project": "shop", "service": "web", "env": "prod", "ingress": INGRESS,
                    "replicas": [{"replica": 1, "was_running": True}]})
    assert ("remove", "web") in ingress.calls and ("shop", "web") not in ingress.frontends
    assert names(engine) == [("shop-web-1", "running")] and engine.container("shop-web-1").id == old.id


def test_leaving_the_ingress_and_failing_gets_the_frontend_back(run, engine, ingress):
    """A release that moves a service off the ingress (direct ports) and fails: the
    frontend it removed comes back with the old container in it, on the old port."""
    run("apply", {"spec": spec(V1, replicas=(1,))})
    run("rollout", {"spec": spec(V1, replicas=(1,)), "replicas": [], "ingress": INGRESS})
    old = engine.container("shop-web-1")
    ingress.calls.clear()
    direct = spec(BAD, replicas=(1,), ports=[{"target": 80, "published": 8080}])
    with pytest.raises(AgentError):
        run("rollout", {"spec": direct, "replicas": [1], "order": "start-first"})
    assert ingress.calls[0] == ("remove", "web")
    assert names(engine) == [("shop-web-1", "running")] and engine.container("shop-web-1").id == old.id
    front = ingress.frontends[("shop", "web")]
    assert front["port"]["published"] == 8080 and front["health"]["path"] == "/"
    assert [x["name"] for x in front["servers"]] == [L.server_name("web", 1, old.id)]


def test_discard_prunes_file_versions_only_the_kept_containers_used(run, engine, tmp_path):
    import base64
    import os

    def secret(value):
        return [{"name": "pw", "content": base64.b64encode(value).decode()}]

    run("apply", {"spec": spec(V1, replicas=(1,), secrets=secret(b"one"))})
    old_file = engine.container("shop-web-1").binds[0]
    run("rollout", {"spec": spec(V2, replicas=(1,), secrets=secret(b"two")), "replicas": [1], "batch": 1})
    new_file = engine.container("shop-web-1").binds[0]
    assert old_file != new_file and engine.container("shop-web-1-prev").binds == [old_file]
    files = os.path.dirname(new_file)
    # a version nobody mounts but newer than the live one: a deploy running now may use it
    os.utime(new_file, (1, 1))
    os.utime(old_file, (1, 1))
    with open(os.path.join(files, "pw.000000000000"), "wb") as fh:
        fh.write(b"three")
    res = run("discard", {"project": "shop", "env": "prod"})
    assert [r["name"] for r in res["removed"]] == ["shop-web-1-prev"]
    assert res["pruned_files"] == ["web/secrets/" + os.path.basename(old_file)]
    assert sorted(os.listdir(files)) == sorted(["pw.000000000000", os.path.basename(new_file)])
    # the live container's version stays even when it is not the newest
    assert run("discard", {"project": "shop", "env": "prod"})["pruned_files"] == []


def test_discard_hands_over_without_waiting_once_a_replica_of_the_service_ignored_sigterm(run, engine, monkeypatch):
    """Oldest stops first: the replica stopped batches ago and still stopping outlived the
    grace (the app ignores SIGTERM), so the one stopped just now is handed over at once too."""
    import agent.rollout as R

    run("apply", {"spec": spec(V1)})
    run("retire", {"project": "shop", "service": "web", "env": "prod", "replicas": [1, 2]})
    ids = {c.name: c.id for c in engine.containers(L.filters("shop", "web"))}
    began = {ids["shop-web-1-prev"]: 100.0, ids["shop-web-2-prev"]: 108.5}  # replica 1 stopped 8.5 s earlier
    asked = []

    def handed_over(ctx, c, env, grace=R.DISCARD_GRACE):
        asked.append((c.name, grace))
        return True  # both still stopping: each goes to the helper

    monkeypatch.setattr(R, "stop_began", lambda ctx, cid: began.get(cid))
    monkeypatch.setattr(R, "remove_when_stopped", handed_over)
    run("discard", {"project": "shop", "env": "prod"})
    assert asked == [("shop-web-1-prev", R.DISCARD_GRACE), ("shop-web-2-prev", 0.0)]

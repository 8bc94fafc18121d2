"""Rolling updates and the whole-release rollback of orchestrator.app.deploy, on the agent's
real operations over FakeEngines (tests/unit/test_deploy.py's fake lab)."""

import textwrap

import pytest

from orchestrator.app.deploy import DeployOptions, Deployment
from orchestrator.errors import DeployError
from orchestrator.core.progress import Progress

from tests.unit.fakes import FakeNode, ws

APP = """\
name: shop
services:
  api:
    image: "{api}"
    healthcheck: {{test: ["CMD", "true"], interval: 1s}}
  web:
    image: "{web}"
    depends_on: {{api: {{condition: service_healthy}}}}
    healthcheck: {{test: ["CMD", "true"], interval: 1s}}
    deploy:
      replicas: {replicas}
      update_config: {update}
"""


class Recorder(Progress):
    def __init__(self):
        super().__init__()
        self.events = []

    def event(self, name, **data):
        self.events.append(dict(data, event=name))


def compose(api="busybox", web="busybox", replicas=2, update="{}"):
    return textwrap.dedent(APP.format(api=api, web=web, replicas=replicas, update=update))


def deploy(lab, text, progress=None, **opts):
    return Deployment(ws(lab, text), DeployOptions(**opts), progress or Recorder(), lab.connector).run()


@pytest.fixture
def images(lab):
    for node in lab.nodes.values():
        node.engine.images.update({"web:v1", "web:v2", "api:v1", "api:v2"})
    return lab


def running(lab, service):
    out = {}
    for name, node in sorted(lab.nodes.items()):
        for c in node.engine.containers([f"io.orch.service={service}"]):
            out[c.name] = (name, c.image, c.state)
    return out


def rollouts(lab, service="web"):
    """(batch, node, replicas) of every rollout call that replaced something."""
    calls = [(a["batch"], name, tuple(r["replica"] for r in a["replicas"])) for name, n in lab.nodes.items()
             for op, a in n.calls if op == "rollout" and a["spec"]["service"] == service and a["replicas"]]
    return sorted(calls)


def test_parallelism_one_replaces_one_replica_at_a_time_across_nodes(images):
    lab = images
    deploy(lab, compose(web="web:v1"))
    for n in lab.nodes.values():
        n.calls.clear()
    progress = Recorder()
    deploy(lab, compose(web="web:v2"), progress)
    assert rollouts(lab) == [(1, "n1", (1,)), (2, "n2", (2,))]
    batches = [e for e in progress.events if e["event"] == "batch" and e["service"] == "web"]
    assert [(b["batch"], b["replicas"]) for b in batches] == [
        (1, [{"node": "n1", "replica": 1}]), (2, [{"node": "n2", "replica": 2}])]
    # each batch's container started after the previous batch's was healthy
    agent = [e for e in progress.events if e["event"] == "agent" and e.get("service") == "web"]
    order = [(e["type"], e.get("batch")) for e in agent if e["type"] in ("container.start", "container.healthy")]
    assert order.index(("container.start", 2)) > order.index(("container.healthy", None))
    assert {k: v[1] for k, v in running(lab, "web").items()} == {"shop-web-1": "web:v2", "shop-web-2": "web:v2"}
    # the release went through: nothing kept
    assert not [c for c in running(lab, "web") if c.endswith("-prev")]


def test_parallelism_two_with_four_replicas_makes_two_batches_of_two(images):
    lab = images
    deploy(lab, compose(web="web:v1", replicas=4, update="{parallelism: 2}"))
    for n in lab.nodes.values():
        n.calls.clear()
    deploy(lab, compose(web="web:v2", replicas=4, update="{parallelism: 2}"))
    calls = rollouts(lab)
    per_batch = {}
    for batch, node, reps in calls:
        per_batch.setdefault(batch, []).extend(reps)
    assert {b: sorted(r) for b, r in per_batch.items() if b} == {1: [1, 2], 2: [3, 4]}


def test_parallelism_zero_replaces_everything_at_once(images):
    lab = images
    deploy(lab, compose(web="web:v1", replicas=4, update="{parallelism: 0}"))
    for n in lab.nodes.values():
        n.calls.clear()
    deploy(lab, compose(web="web:v2", replicas=4, update="{parallelism: 0}"))
    assert {b for b, _, _ in rollouts(lab) if b} == {1}


def test_a_failing_batch_rolls_the_whole_release_back(images):
    lab = images
    deploy(lab, compose(api="api:v1", web="web:v1"))
    before = {n: {c.name: c.id for c in node.engine.containers(["io.orch.project=shop"])}
              for n, node in lab.nodes.items()}
    lab.nodes["n2"].engine.behaviours["web:v2"] = "unhealthy"  # web's second batch (on n2) fails
    with pytest.raises(DeployError) as info:
        deploy(lab, compose(api="api:v2", web="web:v2"))
    err = info.value
    text = err.render()
    assert err.exit_code == 1 and err.details["rolled_back"] is True
    assert "failed on node n2" in text and "web replica 2" in text and "is unhealthy" in text
    assert "Last " in text and "log lines" in text  # the failed container's logs
    assert "Rolled back:" in text and "api on n1" in text and "web on n1" in text
    # every container is the previous release's again, by id (no re-create), running
    after = {n: {c.name: c.id for c in node.engine.containers(["io.orch.project=shop"])}
             for n, node in lab.nodes.items()}
    assert after == before
    assert [v[2] for v in running(lab, "web").values()] == ["running", "running"]
    assert {v[1] for v in running(lab, "api").values()} == {"api:v1"}  # the earlier wave went back too


def test_failure_action_pause_leaves_the_done_batches(images):
    lab = images
    deploy(lab, compose(web="web:v1", update="{failure_action: pause}"))
    lab.nodes["n2"].engine.behaviours["web:v2"] = "unhealthy"
    with pytest.raises(DeployError) as info:
        deploy(lab, compose(web="web:v2", update="{failure_action: pause}"))
    assert info.value.details["rolled_back"] is False
    assert "Update paused (failure_action: pause)" in info.value.render()
    images_now = {k: v[1] for k, v in running(lab, "web").items() if not k.endswith("-prev")}
    assert images_now == {"shop-web-1": "web:v2", "shop-web-2": "web:v1"}  # n2's batch was put back by its agent


def test_max_failure_ratio_tolerates_some_failed_replicas(images):
    lab = images
    update = "{failure_action: rollback, max_failure_ratio: 0.5}"
    deploy(lab, compose(web="web:v1", replicas=2, update=update))
    lab.nodes["n2"].engine.behaviours["web:v2"] = "unhealthy"
    res = deploy(lab, compose(web="web:v2", replicas=2, update=update))
    assert res.status == "ok"
    assert any("1 of 2 replica(s) failed to update and stayed on the previous release" in w for w in res.warnings)
    assert {k: v[1] for k, v in running(lab, "web").items()} == {"shop-web-1": "web:v2", "shop-web-2": "web:v1"}


def test_monitor_window_catches_a_replica_that_dies_after_its_update(images, monkeypatch):
    lab = images
    deploy(lab, compose(web="web:v1"))

    def crash(seconds):  # during the monitor wait, n1's new web container dies
        c = lab.nodes["n1"].engine.container("shop-web-1")
        lab.nodes["n1"].engine.records[c.id]["info"].update(state="exited", exit_code=137)

    monkeypatch.setattr("orchestrator.app.deploy._sleep", crash)
    with pytest.raises(DeployError) as info:
        deploy(lab, compose(web="web:v2", update="{monitor: 5s}"))  # set: waited for, as in Swarm
    text = info.value.render()
    assert "web replica 1 on n1 is exited (exit code 137) within 5s of its update" in text
    assert info.value.details["rolled_back"] is True
    assert {k: v[1:] for k, v in running(lab, "web").items()} == {
        "shop-web-1": ("web:v1", "running"), "shop-web-2": ("web:v1", "running")}


def test_without_a_monitor_setting_there_is_no_window_but_a_replica_dead_by_the_end_fails(images, monkeypatch):
    lab = images
    deploy(lab, compose(web="web:v1"))
    waits = []
    monkeypatch.setattr("orchestrator.app.deploy._sleep", waits.append)
    n2 = lab.nodes["n2"]
    real = n2.call

    def second_batch(op, args=None, on_event=None, timeout=None):
        if op == "rollout":  # batch 2 (n2): meanwhile batch 1's new container on n1 dies
            c = lab.nodes["n1"].engine.container("shop-web-1")
            lab.nodes["n1"].engine.records[c.id]["info"].update(state="exited", exit_code=3)
        return real(op, args, on_event, timeout)

    n2.call = second_batch
    with pytest.raises(DeployError) as info:
        deploy(lab, compose(web="web:v2"))
    assert waits == []  # orch's default monitor is 0s: no window waited for
    assert "web replica 1 on n1 is exited (exit code 3) before the update ended" in info.value.render()
    assert info.value.details["rolled_back"] is True
    assert {k: v[1:] for k, v in running(lab, "web").items()} == {
        "shop-web-1": ("web:v1", "running"), "shop-web-2": ("web:v1", "running")}


def test_without_a_monitor_setting_a_good_update_waits_for_nothing(images, monkeypatch):
    lab = images
    deploy(lab, compose(web="web:v1"))
    waits = []
    monkeypatch.setattr("orchestrator.app.deploy._sleep", waits.append)
    progress = Recorder()
    assert deploy(lab, compose(web="web:v2"), progress).status == "ok"
    assert waits == [] and not [e for e in progress.events if e.get("phase") == "monitor"]


def test_first_deploy_of_a_service_is_one_batch_and_not_monitored(images, no_deploy_waits):
    lab = images
    deploy(lab, compose(web="web:v1", replicas=4))
    assert {b for b, _, _ in rollouts(lab)} == {1}
    assert no_deploy_waits == []  # nothing replaced: no monitor window


def test_a_node_lost_mid_rollout_fails_and_puts_the_others_back(images):
    from orchestrator.io import transport as T

    lab = images
    deploy(lab, compose(web="web:v1"))
    n2 = lab.nodes["n2"]
    real = n2.call

    def gone(op, args=None, on_event=None, timeout=None):
        if op in ("rollout", "restore"):
            raise T.TransportError("n2: the SSH connection was closed", node="n2")
        return real(op, args, on_event, timeout)

    n2.call = gone
    with pytest.raises(DeployError) as info:
        deploy(lab, compose(web="web:v2"))
    text = info.value.render()
    assert "n2" in text and "SSH connection was closed" in text
    assert info.value.details["rolled_back"] is True  # nothing of this release reached n2
    assert {k: v[1] for k, v in running(lab, "web").items()} == {"shop-web-1": "web:v1", "shop-web-2": "web:v1"}


def test_ingress_drift_says_when_a_node_needs_an_ingress_sync():
    from types import SimpleNamespace

    from agent.wire.labels import server_name
    from orchestrator.core.plan import UNCHANGED, Action, Step, ingress_drift
    from orchestrator.core.rollout import IngressSpec

    spec = IngressSpec(published=8080, target=80, health={"path": "/healthz"})
    unit = SimpleNamespace(service="web", ingress=spec)
    step = Step(1, "web", "n1", unit, [Action(UNCHANGED, "web", "n1", 1, container_id="abcdef0123456789")])
    right = {"port": {"published": 8080, "target": 80, "host_ip": "0.0.0.0"}, "running": True,
             "health": {"path": "/healthz", "interval": 1.0, "timeout": 2.0, "rise": 2, "fall": 2, "host": "localhost"},
             "servers": [server_name("web", 1, "abcdef0123456789")]}
    assert ingress_drift(unit, step, right) == ""
    assert ingress_drift(unit, step, None) == "no ingress for the service on the node yet"
    assert ingress_drift(unit, step, dict(right, running=False)) == "HAProxy is not running"
    assert ingress_drift(unit, step, dict(right, servers=[])) == "ingress servers differ from the containers"
    assert ingress_drift(unit, step, dict(right, health=dict(right["health"], rise=3))) == \
        "ingress health check changed"
    assert ingress_drift(SimpleNamespace(service="web", ingress=None), step, right) == \
        "the service has no ingress any more"


def test_a_rollback_restores_the_ingress_a_node_had_before_the_release():
    """Leaving the ingress (this release has none) or changing its port: the restore puts
    back the frontend observed before the release; a service new to the ingress gets this
    release's settings, which restore drops when the kept containers hold the port."""
    from types import SimpleNamespace

    before = {"port": {"published": 8080, "target": 80, "protocol": "http", "host_ip": "0.0.0.0"},
              "health": {"path": "/healthz"}, "servers": ["web-1-abc"], "running": True}
    new = {"port": {"published": 9090, "target": 80, "protocol": "http", "host_ip": "0.0.0.0"},
           "health": {"path": "/"}, "drain_timeout": 3.0}

    def fake(now, observed):
        return SimpleNamespace(ingress=observed, _ingress_args=lambda service: now)

    args = Deployment._rollback_ingress_args
    assert args(fake(None, {"n1": {"web": before}}), "n1", "web") == {
        "port": before["port"], "health": before["health"]}
    assert args(fake(new, {"n1": {"web": before}}), "n1", "web") == {
        "port": before["port"], "health": before["health"], "drain_timeout": 3.0}
    assert args(fake(new, {"n1": {}}), "n1", "web") == new
    assert args(fake(new, {"n1": {"web": before}}), "n2", "web") == new
    assert args(fake(None, {}), "n1", "web") is None


def test_the_last_check_is_also_the_final_view_one_state_read_after_the_rollouts(images, no_deploy_waits):
    lab = images
    deploy(lab, compose(web="web:v1"))
    for n in lab.nodes.values():
        n.calls.clear()
    res = deploy(lab, compose(web="web:v2"), commit=False)  # as the pipeline runs it (it discards later)
    for name, n in lab.nodes.items():
        ops = n.ops()
        last_rollout = max(i for i, op in enumerate(ops) if op == "rollout")
        assert ops[last_rollout:].count("state") == 1, (name, ops)
    assert {(r.name, r.image) for r in res.containers if r.service == "web"} == {
        ("shop-web-1", "web:v2"), ("shop-web-2", "web:v2")}

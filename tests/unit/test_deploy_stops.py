"""`orch up` and the old containers' background stops (orchestrator.app.stops, agent.stops):
neither the batches nor the end of `up` wait for them (`commit` hands a still stopping one
to its node, which removes it once stopped); a paused update still ends with its kept
containers stopped."""

import textwrap
import time
from types import SimpleNamespace

from orchestrator.app.deploy import DeployOptions, Deployment
from orchestrator.app.stops import stopping_nodes
from orchestrator.core.progress import Progress
from orchestrator.core.rollout import Journal
from orchestrator.errors import DeployError

from tests.unit.fakes import ws

COMPOSE = textwrap.dedent("""\
    name: shop
    services:
      api:
        image: busybox
        environment: {{VERSION: "{v}"}}
        ports: ["9000"]
        deploy: {{update_config: {{order: {order}}}}}
      web:
        image: busybox
        environment: {{VERSION: "{v}"}}
        ports: ["8080:80"]
        deploy: {{replicas: 2}}
    """)


class Events(Progress):
    def __init__(self):
        super().__init__()
        self.seen = []

    def agent_event(self, wave, service, node, ev):
        self.seen.append(dict(ev, service=service, node=node))

    def event(self, name, **data):
        super().event(name, **data)
        self.seen.append(dict(data, event=name))


def _kept(lab):
    return {(n, c.name, c.state) for n, node in lab.nodes.items()
            for c in node.engine.containers(["io.orch.project=shop"]) if c.name.endswith("-prev")}


def _settled(lab, seconds=5.0):
    """The kept containers once no background stop is running any more."""
    deadline = time.monotonic() + seconds
    while any(state == "running" for _, _, state in _kept(lab)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _kept(lab)


def test_up_does_not_wait_for_the_background_stops(lab):
    Deployment(ws(lab, COMPOSE.format(v=1, order="start-first")), DeployOptions(), Progress(), lab.connector).run()
    progress = Events()
    d = Deployment(ws(lab, COMPOSE.format(v=2, order="start-first")), DeployOptions(commit=False), progress,
                   lab.connector)
    d.run()
    # api (start-first) is on n1 only; web (ports 8080 held: stop-first) on both. The old api
    # container, out of rotation, stops on its own: `up` does not wait for it.
    assert not any("await_stops" in node.ops() for node in lab.nodes.values())
    stopping = [e for e in progress.seen if e.get("type") == "container.stopping"]
    assert [(e["container"], e["background"]) for e in stopping] == [("shop-api-1-prev", True)]
    assert "stops" not in d.timings
    assert _settled(lab) == {("n1", "shop-api-1-prev", "exited"), ("n1", "shop-web-1-prev", "exited"),
                             ("n2", "shop-web-2-prev", "exited")}


def test_the_commit_removes_the_kept_containers_stopping_or_not(lab):
    Deployment(ws(lab, COMPOSE.format(v=1, order="start-first")), DeployOptions(), Progress(), lab.connector).run()
    Deployment(ws(lab, COMPOSE.format(v=2, order="start-first")), DeployOptions(), Progress(), lab.connector).run()
    assert _settled(lab) == set()


def test_a_stop_first_rollout_needs_no_wait(lab):
    Deployment(ws(lab, COMPOSE.format(v=1, order="stop-first")), DeployOptions(), Progress(), lab.connector).run()
    Deployment(ws(lab, COMPOSE.format(v=2, order="stop-first")), DeployOptions(), Progress(), lab.connector).run()
    assert not any("await_stops" in node.ops() for node in lab.nodes.values())


PAUSED = textwrap.dedent("""\
    name: shop
    services:
      api:
        image: busybox
        environment: {{VERSION: "{v}"}}
        deploy: {{update_config: {{order: start-first}}}}
      worker:
        image: {worker}
        environment: {{VERSION: "{v}"}}
        depends_on: [api]
        deploy: {{update_config: {{failure_action: pause}}}}
    """)


def test_a_paused_update_still_ends_with_its_kept_containers_stopped(lab):
    Deployment(ws(lab, PAUSED.format(v=1, worker="busybox")), DeployOptions(), Progress(), lab.connector).run()
    d = Deployment(ws(lab, PAUSED.format(v=2, worker="fail")), DeployOptions(commit=False), Progress(),
                   lab.connector)
    try:
        d.run()
        raise AssertionError("the worker's update should have failed")
    except DeployError as err:
        assert err.details["failure_action"] == "pause" and err.details["rolled_back"] is False
    # api was replaced start-first (its old container stopped in the background) before the
    # worker failed: the paused update keeps it, stopped
    assert ("n1", "shop-api-1-prev", "exited") in _kept(lab)
    assert not [k for k in _kept(lab) if k[2] == "running"]
    assert "await_stops" in lab.nodes["n1"].ops()


def test_stopping_nodes_from_the_plan_and_the_journal():
    def rep(node, replica, order):
        return SimpleNamespace(node=node, replica=replica, order=order)

    rollout = SimpleNamespace(services=[
        SimpleNamespace(service="web", batches=[SimpleNamespace(replaces=[rep("n1", 1, "start-first"),
                                                                          rep("n2", 2, "stop-first")])]),
        SimpleNamespace(service="api", batches=[SimpleNamespace(replaces=[rep("n3", 1, "start-first")])])])
    journal = Journal()
    journal.add("web", "n1", 2, [{"replica": 1, "old": {"was_running": True}, "new": {"id": "a"}}])
    journal.add("web", "n2", 2, [{"replica": 2, "old": {"was_running": True}, "new": {"id": "b"}}])
    journal.add("api", "n3", 1, [{"replica": 1, "old": {"was_running": False}, "new": {"id": "c"}}])
    # n2 was stop-first, n3's old container was not running: nothing left stopping there
    assert stopping_nodes(rollout, journal) == {"n1": 2}
    assert stopping_nodes(None, journal) == {} and stopping_nodes(rollout, Journal()) == {}

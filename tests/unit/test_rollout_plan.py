"""The rolling update as data (orchestrator.core.rollout_plan): plans asserted by equality on
the dataclasses, and the Deployment engine executing the plan it was given."""

import dataclasses
import json
import textwrap

import pytest

from agent.wire.spec import config_hash, config_parts
from orchestrator.app.deploy import DeployOptions, Deployment
from orchestrator.core.plan import make_plan, observe
from orchestrator.core.progress import Progress
from orchestrator.core.rollout import IngressSpec, UpdatePolicy
from orchestrator.core.rollout_plan import (Batch, Previous, Replace, Restore, Retire, RolloutPlan, ServiceRollout,
                                            Settle)
from orchestrator.core.specs import Unit
from orchestrator.errors import DeployError

from tests.unit.fakes import ws

PROJECT = "shop"
START = UpdatePolicy(order="start-first")


def unit(service, node, replicas, policy=UpdatePolicy(), image="busybox", ports=(), ingress=None, wait="running"):
    c = {"image": image, "ports": [dict(p) for p in ports]}
    spec = {"project": PROJECT, "service": service, "replicas": list(replicas), "container": c,
            "config_hash": config_hash(c), "config_parts": config_parts(c)}
    return Unit(service, node, tuple(replicas), spec["config_hash"], wait, "always", spec, policy=policy,
                ingress=ingress)


def container(service, replica, node, hash_="old", state="running", ports=(), release="r1", retired=False,
              health=""):
    name = f"{PROJECT}-{service}-{replica}" + ("-prev" if retired else "")
    return {"id": f"id-{service}-{replica}-{node}" + ("-prev" if retired else ""), "name": name, "service": service,
            "replica": replica, "state": state, "health": health, "config_hash": hash_, "image": "busybox",
            "ports": [dict(p) for p in ports], "release": release, "retired": retired}


def rollout_of(units, states, waves=None):
    units = {(u.service, u.node): u for u in units}
    waves = waves or [[s] for s in dict.fromkeys(s for s, _ in units)]
    p = make_plan(PROJECT, "dev", waves, units, observe({n: {"containers": cs} for n, cs in states.items()}),
                  {s for w in waves for s in w}, False, ["n1", "n2"])
    return p


def prev(service, replica, node, running=True, release="r1"):
    return Previous(f"{PROJECT}-{service}-{replica}-prev", f"id-{service}-{replica}-{node}", release, running)


# --------------------------------------------------------------------------- plans as data


def test_parallelism_one_replaces_one_replica_at_a_time_in_replica_order_across_nodes():
    p = rollout_of([unit("web", "n1", (1, 3)), unit("web", "n2", (2,))],
                   {"n1": [container("web", 1, "n1"), container("web", 3, "n1")], "n2": [container("web", 2, "n2")]})
    web = p.rollout.service("web")
    assert web.batches == (
        Batch(1, (Replace("n1", 1, "recreate", "stop-first", prev("web", 1, "n1")),)),
        Batch(2, (Replace("n2", 2, "recreate", "stop-first", prev("web", 2, "n2")),)),
        Batch(3, (Replace("n1", 3, "recreate", "stop-first", prev("web", 3, "n1")),)),
    )
    assert web.monitor == 0.0 and web.watched == (("n1", 1), ("n2", 2), ("n1", 3))  # 0: checked at the end
    assert web.restore == (Restore("n1", 1, prev("web", 1, "n1")), Restore("n1", 3, prev("web", 3, "n1")),
                           Restore("n2", 2, prev("web", 2, "n2")))
    assert web.failure_action == "rollback" and web.settle == () and web.retire == ()


def test_parallelism_two_makes_batches_of_two_with_the_delay_before_each_but_the_first():
    policy = UpdatePolicy(parallelism=2, delay=3.0)
    p = rollout_of([unit("web", "n1", (1, 3), policy), unit("web", "n2", (2, 4), policy)],
                   {"n1": [container("web", 1, "n1"), container("web", 3, "n1")],
                    "n2": [container("web", 2, "n2"), container("web", 4, "n2")]})
    batches = p.rollout.service("web").batches
    assert [(b.number, b.delay, b.by_node()) for b in batches] == [
        (1, 0.0, {"n1": [1], "n2": [2]}), (2, 3.0, {"n1": [3], "n2": [4]})]


def test_parallelism_zero_is_one_batch():
    policy = UpdatePolicy(parallelism=0)
    p = rollout_of([unit("web", "n1", (1, 2), policy)],
                   {"n1": [container("web", 1, "n1"), container("web", 2, "n1")]})
    assert [b.by_node() for b in p.rollout.service("web").batches] == [{"n1": [1, 2]}]


def test_start_first_replica_publishing_a_host_port_the_new_one_needs_is_replaced_stop_first():
    port = {"target": 80, "published": 8080, "protocol": "tcp"}
    p = rollout_of([unit("web", "n1", (1,), START, ports=[port]), unit("api", "n1", (1,), START)],
                   {"n1": [container("web", 1, "n1", ports=[dict(port, host_ip="0.0.0.0")]),
                           container("api", 1, "n1")]}, waves=[["web", "api"]])
    web, api = p.rollout.service("web"), p.rollout.service("api")
    assert web.batches == (Batch(1, (Replace("n1", 1, "recreate", "stop-first", prev("web", 1, "n1"),
                                             "its container publishes a host port the new one needs"),)),)
    assert web.batches[0].order == "stop-first" and web.policy.order == "start-first"
    assert api.batches == (Batch(1, (Replace("n1", 1, "recreate", "start-first", prev("api", 1, "n1")),)),)


def test_start_first_behind_the_ingress_stays_start_first_and_a_stopped_old_container_holds_no_port():
    ingress = IngressSpec(published=8080, target=80)
    old_port = [{"target": 80, "published": 8080, "protocol": "tcp", "host_ip": ""}]
    p = rollout_of([unit("web", "n1", (1,), START, ingress=ingress), unit("web", "n2", (2,), START, ingress=ingress)],
                   {"n1": [container("web", 1, "n1")],  # already behind the ingress: publishes nothing
                    "n2": [container("web", 2, "n2", state="exited", ports=old_port)]})
    orders = [(r.node, r.order, r.why) for b in p.rollout.service("web").batches for r in b.replaces]
    assert orders == [("n1", "start-first", ""), ("n2", "start-first", "")]
    # the same, but n1's old container still publishes the port the ingress takes over: stop-first
    p = rollout_of([unit("web", "n1", (1,), START, ingress=ingress)],
                   {"n1": [container("web", 1, "n1", ports=old_port)]})
    assert p.rollout.service("web").batches[0].order == "stop-first"


def test_a_first_deploy_is_one_batch_not_monitored_and_a_failure_removes_the_new_containers():
    p = rollout_of([unit("web", "n1", (1,)), unit("web", "n2", (2,))], {"n1": [], "n2": []})
    web = p.rollout.service("web")
    assert web.batches == (Batch(1, (Replace("n1", 1, "create", "stop-first"), Replace("n2", 2, "create", "stop-first"))),)
    assert web.watched == ()
    assert web.restore == (Restore("n1", 1, None), Restore("n2", 2, None))


def test_a_create_over_a_kept_container_restores_that_one():
    p = rollout_of([unit("web", "n1", (1,))], {"n1": [container("web", 1, "n1", state="exited", retired=True)]})
    (batch,) = p.rollout.service("web").batches
    kept = Previous("shop-web-1-prev", "id-web-1-n1-prev", "r1", False)
    assert batch == Batch(1, (Replace("n1", 1, "create", "stop-first", kept),))


def test_scaled_down_replicas_are_retired_after_the_batches_and_restored_on_failure():
    p = rollout_of([unit("web", "n1", (1,))],
                   {"n1": [container("web", 1, "n1"), container("web", 2, "n1", state="exited")]})
    web = p.rollout.service("web")
    assert web.batches == (Batch(1, (Replace("n1", 1, "recreate", "stop-first", prev("web", 1, "n1")),)),)
    retired = Previous("shop-web-2-prev", "id-web-2-n1", "r1", False)
    assert web.retire == (Retire("web", "n1", (2,), (retired,)),)
    assert web.restore == (Restore("n1", 1, prev("web", 1, "n1")), Restore("n1", 2, retired))


def test_a_service_leaving_a_node_is_retired_after_every_wave():
    u = unit("web", "n1", (1, 2))
    p = rollout_of([u], {"n1": [container("web", 1, "n1", hash_=u.config_hash)],
                         "n2": [container("web", 2, "n2", hash_=u.config_hash)]})
    assert p.rollout.moved == (Retire("web", "n2", (2,), (prev("web", 2, "n2"),)),)
    (batch,) = p.rollout.service("web").batches  # replica 2 moves to n1: new there
    assert [(r.node, r.replica, r.kind) for r in batch.replaces] == [("n1", 2, "create")]


def test_a_kept_container_not_ready_yet_is_settled_and_nothing_changed_plans_nothing():
    u = unit("db", "n1", (1,), wait="healthy")
    p = rollout_of([u], {"n1": [container("db", 1, "n1", hash_=u.config_hash, health="starting")]})
    assert p.rollout == RolloutPlan((ServiceRollout("db", 1, UpdatePolicy(), settle=(
        Settle("n1", "waiting for a kept container"),)),))
    p = rollout_of([u], {"n1": [container("db", 1, "n1", hash_=u.config_hash, health="healthy")]})
    assert p.rollout == RolloutPlan() and p.rollout.render_lines() == []


def test_plan_json_and_text_carry_the_batches_in_order():
    p = rollout_of([unit("web", "n1", (1,)), unit("web", "n2", (2,))],
                   {"n1": [container("web", 1, "n1")], "n2": [container("web", 2, "n2")]})
    doc = json.loads(json.dumps(p.to_json()))
    (web,) = doc["rollout"]["services"]
    assert [(b["batch"], [(r["node"], r["replica"], r["order"]) for r in b["replicas"]]) for b in web["batches"]] == [
        (1, [("n1", 1, "stop-first")]), (2, [("n2", 2, "stop-first")])]
    assert web["monitor"] == {"seconds": 0.0, "replicas": [{"node": "n1", "replica": 1}, {"node": "n2", "replica": 2}]}
    assert web["restore"][0] == {"node": "n1", "replica": 1, "to": "shop-web-1-prev", "start": True}
    assert {"actions", "summary", "waves", "noop"} <= set(doc)  # the keys that were there stay
    text = p.render_text()
    assert text.index("batch 1: n1 replica 1 recreate stop-first") < text.index("batch 2: n2 replica 2 recreate")
    assert "Rollout:\n  web (wave 1): 2 batches, parallelism 1, stop-first, on failure rollback" in text
    assert "on failure: the release is rolled back (2 replica(s) back on their previous container)" in text


# --------------------------------------------------------------------------- the engine executes it

APP = """\
name: shop
services:
  web:
    image: "{web}"
    healthcheck: {{test: ["CMD", "true"], interval: 1s}}
    deploy:
      replicas: 4
      update_config: {{parallelism: 2}}
"""


@pytest.fixture
def recorded(lab):
    """The lab, with every node's rollout/retire/restore calls recorded in one list, in order."""
    calls = []
    for name, node in lab.nodes.items():
        node.engine.images.update({"web:v1", "web:v2"})
        real = node.call

        def call(op, args=None, on_event=None, timeout=None, _real=real, _name=name):
            if op in ("rollout", "retire", "restore"):
                calls.append((op, _name, args.get("batch"), tuple(r if isinstance(r, int) else r["replica"]
                                                                   for r in args.get("replicas") or ())))
            return _real(op, args, on_event, timeout)

        node.call = call
    lab.calls = calls
    return lab


def planned(lab, image):
    d = Deployment(ws(lab, textwrap.dedent(APP.format(web=image))), DeployOptions(), Progress(), lab.connector)
    d.prepare()
    d.connect()
    d.observe()
    d.make_plan()
    return d


def test_the_engine_executes_the_batches_of_the_plan_in_order(recorded):
    lab = recorded
    planned(lab, "web:v1").apply()
    lab.calls.clear()
    d = planned(lab, "web:v2")
    web = d.plan.rollout.service("web")
    assert [b.by_node() for b in web.batches] == [{"n1": [1], "n2": [2]}, {"n1": [3], "n2": [4]}]
    d.apply()
    done = [(batch, node, reps) for op, node, batch, reps in lab.calls if op == "rollout"]
    want = [(b.number, n, tuple(rs)) for b in web.batches for n, rs in sorted(b.by_node().items())]
    assert sorted(done[:2]) == want[:2] and sorted(done[2:]) == want[2:]  # a batch's nodes run in parallel


def test_the_engine_follows_the_plan_it_is_given_not_its_own(recorded):
    lab = recorded
    planned(lab, "web:v1").apply()
    lab.calls.clear()
    d = planned(lab, "web:v2")
    web = d.plan.rollout.service("web")
    # Hand the engine another plan: one replica per batch, in reverse, and no monitor window.
    one_each = tuple(Batch(k, (r,)) for k, r in enumerate(
        reversed([r for b in web.batches for r in b.replaces]), 1))
    d.plan.rollout = RolloutPlan((dataclasses.replace(web, batches=one_each, monitor=0.0),))
    d.apply()
    assert [(op, node, batch, reps) for op, node, batch, reps in lab.calls] == [
        ("rollout", "n2", 1, (4,)), ("rollout", "n1", 2, (3,)), ("rollout", "n2", 3, (2,)), ("rollout", "n1", 4, (1,))]


def test_a_failure_restores_what_the_plan_says_latest_batch_first(recorded):
    lab = recorded
    planned(lab, "web:v1").apply()
    lab.calls.clear()
    lab.nodes["n2"].engine.behaviours["web:v2"] = "unhealthy"  # batch 1 fails on n2, n1's is restored
    d = planned(lab, "web:v2")
    web = d.plan.rollout.service("web")
    with pytest.raises(DeployError):
        d.apply()
    restores = [(node, reps) for op, node, _, reps in lab.calls if op == "restore"]
    assert restores == [("n1", (1,))]
    assert Restore("n1", 1, Previous("shop-web-1-prev", web.restore[0].previous.id, "", True)) == web.restore[0]


def test_the_documented_rollout_keys_are_what_the_plan_carries():
    from pathlib import Path
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "json-output.md").read_text()
    section = doc.split("\n#### `plan.rollout`\n", 1)[1].split("\n#", 1)[0]
    rows = {ln.split("|")[1].strip().strip("`"): ln.split("|")[3] for ln in section.splitlines() if ln.startswith("| `")}
    p = rollout_of([unit("web", "n1", (1,))], {"n1": [container("web", 1, "n1"), container("web", 2, "n1")]})
    doc_json = p.rollout.to_json()
    assert set(rows) >= set(doc_json) and {k for k in rows if "." not in k} == set(doc_json)
    def words(text):  # every name inside a `...` span
        return {w for span in re.findall(r"`([^`]+)`", text) for w in re.findall(r"[a-z_]+", span)}

    (web,) = doc_json["services"]
    assert words(rows["services"]) >= set(web)
    batch = web["batches"][0]
    assert words(rows["services[].batches"]) >= set(batch) | set(batch["replicas"][0]) | set(
        batch["replicas"][0]["previous"])
    assert words(rows["services[].monitor"]) >= set(web["monitor"])
    assert words(rows["services[].restore"]) >= set(web["restore"][0])
    assert words(rows["services[].retire"]) >= set(web["retire"][0])


def test_the_plans_orders_reach_the_agent_as_sent_and_it_follows_them(lab):
    text = textwrap.dedent("""\
        name: shop
        services:
          web:
            image: busybox
            environment: {{VERSION: "{v}"}}
            ports: ["8080:80", "9090"]
            deploy: {{replicas: 2, update_config: {{order: start-first}}}}
          api:
            image: busybox
            environment: {{VERSION: "{v}"}}
            ports: ["9000"]
            deploy: {{update_config: {{order: start-first}}}}
        """)
    Deployment(ws(lab, text.format(v=1)), DeployOptions(), Progress(), lab.connector).run()
    events = []

    class Events(Progress):
        def agent_event(self, wave, service, node, ev):
            events.append(dict(ev, service=service, node=node))

    d = Deployment(ws(lab, text.format(v=2)), DeployOptions(), Events(), lab.connector)
    d.prepare()
    d.connect()
    d.observe()
    d.make_plan()
    planned = {(s.service, r.node, r.replica): r.order for s in d.plan.rollout.services
               for b in s.batches for r in b.replaces}
    # web's 8080 is held by the running container; api's 9000 is published on a port the engine picks
    assert planned == {("web", "n1", 1): "stop-first", ("web", "n2", 2): "stop-first", ("api", "n1", 1): "start-first"}
    d.apply()
    # every replica's order went to its node's agent as the plan has it (FakeNode records the requests)
    sent = {(a["spec"]["service"], name, r["replica"]): r["order"] for name, n in lab.nodes.items()
            for op, a in n.calls if op == "rollout" for r in a["replicas"]}
    assert sent == planned
    # and the agent replaced each in that order: stop-first stops the old one before the new one starts
    for (service, node, replica), order in planned.items():
        mine = [e for e in events if e["service"] == service and e["node"] == node and e.get("replica") == replica]
        kinds = [e["type"] for e in mine if e["type"] in ("container.retire", "container.start", "container.stop")]
        retire = next(e for e in mine if e["type"] == "container.retire")
        assert retire["running"] is (order == "start-first"), (service, node, replica, kinds)
    assert not [e for e in events if e.get("type") == "rollout.order"]  # no second decision

"""orchestrator.core.plan against hand-made node states."""

import json

from agent.wire.spec import config_hash, config_parts
from orchestrator.core.plan import Observed, existing_slots, make_plan, observe
from orchestrator.core.specs import Unit

PROJECT = "shop"


def unit(service, node, replicas=(1,), wait="running", restart="always", **container):
    c = {"image": "busybox", "environment": {"A": "1"}}
    c.update(container)
    spec = {"project": PROJECT, "service": service, "replicas": list(replicas), "container": c,
            "config_hash": config_hash(c), "config_parts": config_parts(c)}
    return Unit(service, node, tuple(replicas), spec["config_hash"], wait, restart, spec)


def running(u, replica=1, node=None, state="running", health="", exit_code=0, restarts=0, hash_=None, parts=None,
            name=None, service=None):
    service = service or u.service
    return {"id": f"id-{service}-{replica}-{node or u.node}", "name": name or f"{PROJECT}-{service}-{replica}",
            "service": service, "replica": replica, "state": state, "health": health, "exit_code": exit_code,
            "restart_count": restarts, "config_hash": hash_ if hash_ is not None else u.config_hash,
            "config_parts": parts if parts is not None else u.config_parts, "image": "busybox",
            "image_id": "sha256:1", "ports": []}


def plan(units, states, waves=None, services=None, remove_orphans=False, nodes=("n1", "n2")):
    units = {(u.service, u.node): u for u in units}
    waves = waves or [[s] for s in dict.fromkeys(s for s, _ in units)]
    services = services or {s for w in waves for s in w}
    return make_plan(PROJECT, "dev", waves, units, observe({n: {"containers": cs} for n, cs in states.items()}),
                     services, remove_orphans, list(nodes))


def kinds(p):
    return [(a.kind, a.service, a.replica, a.node) for a in p.actions()]


def test_nothing_deployed_creates_everything_in_wave_order():
    db, web1, web2 = unit("db", "n1"), unit("web", "n1", (1,)), unit("web", "n2", (2,))
    p = plan([db, web1, web2], {"n1": [], "n2": []}, waves=[["db"], ["web"]])
    assert kinds(p) == [("create", "db", 1, "n1"), ("create", "web", 1, "n1"), ("create", "web", 2, "n2")]
    assert [s.wave for s in p.steps] == [1, 2, 2]
    assert not p.is_noop and p.counts()["create"] == 3
    assert p.changed_services() == ["db", "web"]


def test_same_hash_running_is_unchanged_and_a_noop():
    db = unit("db", "n1", wait="healthy")
    p = plan([db], {"n1": [running(db, health="healthy")], "n2": []})
    assert kinds(p) == [("unchanged", "db", 1, "n1")]
    assert p.is_noop and not any(s.needs_apply for s in p.steps)
    assert "No changes: 1 container(s) up to date." in p.render_text()


def test_changed_config_recreates_and_says_which_fields():
    old = unit("api", "n1")
    new = unit("api", "n1", environment={"A": "2"})
    p = plan([new], {"n1": [running(old)]})
    (a,) = p.actions()
    assert (a.kind, a.changed, a.reason) == ("recreate", ("environment",), "changed: environment")
    assert "recreate (changed: environment)" in p.render_text()


def test_changed_config_without_parts_label_still_recreates():
    old = unit("api", "n1")
    new = unit("api", "n1", image="busybox:1.36")
    p = plan([new], {"n1": [running(old, parts={})]})
    assert [(a.kind, a.reason) for a in p.actions()] == [("recreate", "config changed")]


def test_exited_unhealthy_and_misnamed_containers_are_recreated():
    u = unit("api", "n1", replicas=(1, 2, 3))
    p = plan([u], {"n1": [running(u, 1, state="exited", exit_code=137), running(u, 2, health="unhealthy"),
                          running(u, 3, name="someone-else")]})
    reasons = [(a.kind, a.replica, a.reason) for a in p.actions()]
    assert reasons == [("recreate", 1, "not running: exited (137)"), ("recreate", 2, "unhealthy"),
                       ("recreate", 3, "misnamed (someone-else)")]


def test_one_shot_that_completed_is_converged():
    job = unit("migrate", "n1", wait="completed", restart="no")
    p = plan([job], {"n1": [running(job, state="exited", exit_code=0)]})
    assert kinds(p) == [("unchanged", "migrate", 1, "n1")] and p.is_noop
    assert not p.steps[0].needs_apply
    failed = plan([job], {"n1": [running(job, state="exited", exit_code=1)]})
    assert kinds(failed) == [("recreate", "migrate", 1, "n1")]
    # a service meant to keep running that exited 0 is restarted (restart: always)
    srv = unit("srv", "n1", restart="always")
    assert kinds(plan([srv], {"n1": [running(srv, state="exited", exit_code=0)]}))[0][0] == "recreate"


def test_unchanged_but_not_ready_yet_is_waited_for_without_changes():
    db = unit("db", "n1", wait="healthy")
    p = plan([db], {"n1": [running(db, health="starting")]})
    assert p.is_noop and p.steps[0].wait_only and p.steps[0].needs_apply
    job = unit("job", "n1", wait="completed", restart="no")
    assert plan([job], {"n1": [running(job)]}).steps[0].wait_only


def test_scale_down_removes_the_extra_replica_on_the_same_node_in_apply():
    before = unit("web", "n1", (1, 2))
    after = unit("web", "n1", (1,))
    p = plan([after], {"n1": [running(before, 1), running(before, 2)]})
    assert kinds(p) == [("unchanged", "web", 1, "n1"), ("remove", "web", 2, "n1")]
    assert p.steps[0].needs_apply and not p.removals
    assert p.actions()[1].reason == "scaled down"


def test_a_replica_moved_to_another_node_is_created_there_and_removed_after():
    u2 = unit("web", "n2", (2,))
    u1 = unit("web", "n1", (1,))
    p = plan([u1, u2], {"n1": [running(u1, 1)], "n2": []}, nodes=("n1", "n2"))
    assert kinds(p) == [("unchanged", "web", 1, "n1"), ("create", "web", 2, "n2")]
    moved = plan([u1], {"n1": [running(u1, 1)], "n2": [running(u2, 2, node="n2")]})
    assert [(r.node, r.service, r.replicas) for r in moved.removals] == [("n2", "web", [2])]
    assert moved.removals[0].actions[0].reason == "scaled down"
    wanted_elsewhere = plan([unit("web", "n1", (1, 2))], {"n1": [], "n2": [running(u2, 2, node="n2")]})
    assert [(a.kind, a.node, a.reason) for a in wanted_elsewhere.actions()] == [
        ("create", "n1", "new"), ("create", "n1", "moved from n2"), ("remove", "n2", "moved to n1")]


def test_orphans_are_listed_and_kept_unless_asked():
    web = unit("web", "n1")
    states = {"n1": [running(web), running(web, service="old", name="shop-old-1")]}
    kept = plan([web], states)
    assert kept.is_noop and kept.orphans == {"old": ["n1"]} and not kept.removals
    assert any("old runs on n1 but is not in the Compose file" in w for w in kept.warnings)
    assert "orphan: old on n1" in kept.render_text()
    removed = plan([web], states, remove_orphans=True)
    assert not removed.is_noop and removed.orphans == {}
    (r,) = removed.removals
    assert (r.node, r.service, r.replicas, r.orphan) == ("n1", "old", None, True)
    assert kinds(removed)[-1] == ("remove", "old", 1, "n1")


def test_services_not_being_deployed_are_left_alone():
    web = unit("web", "n1")
    states = {"n1": [running(web), running(web, service="db", name="shop-db-1", hash_="x" * 64)]}
    p = plan([web], states, waves=[["web"]], services={"web", "db"}, remove_orphans=True)
    assert p.is_noop and not p.orphans and not p.removals


def test_existing_slots_for_stable_placement():
    web = unit("web", "n1")
    obs = observe({"n1": {"containers": [running(web, 1)]}, "n2": {"containers": [running(web, 2, node="n2")]}})
    assert [(s.service, s.replica, s.node) for s in existing_slots(obs)] == [("web", 1, "n1"), ("web", 2, "n2")]


def test_json_form_is_stable_and_complete():
    db = unit("db", "n1")
    web = unit("web", "n1", environment={"B": "1"})
    p = plan([db, web], {"n1": [running(db), running(unit("web", "n1"))]}, waves=[["db"], ["web"]])
    data = json.loads(json.dumps(p.to_json()))
    assert data["noop"] is False and data["waves"] == [["db"], ["web"]]
    assert data["summary"] == {"create": 0, "recreate": 1, "unchanged": 1, "remove": 0}
    assert data["actions"][1] == {"action": "recreate", "service": "web", "replica": 1, "node": "n1",
                                  "reason": "changed: environment", "container": "shop-web-1",
                                  "id": "id-web-1-n1", "changed": ["environment"], "wave": 2}


def test_observed_from_summary_tolerates_missing_fields():
    o = Observed.from_summary("n1", {"id": "x", "name": "shop-a-1", "service": "a", "replica": "2", "state": "exited",
                                      "exit_code": 3})
    assert o.replica == 2 and o.describe_state() == "exited (3)" and o.config_parts == {}


class _CountingUnits(dict):
    """A units mapping that counts how often the planner walks all of it."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_planning_walks_the_units_a_fixed_number_of_times_whatever_the_number_of_services():
    # A walk of every unit per service grows with services² (5,000 services: 4 s of 5).
    def walks(n):
        units = _CountingUnits({(f"s{i}", "n1"): unit(f"s{i}", "n1") for i in range(n)})
        _CountingUnits.walks = 0
        make_plan(PROJECT, "dev", [[f"s{i}"] for i in range(n)], units, observe({"n1": {"containers": []}}),
                  {f"s{i}" for i in range(n)}, False, ["n1"])
        return _CountingUnits.walks

    assert walks(5) == walks(50) <= 3

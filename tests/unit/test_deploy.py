"""orchestrator.app.deploy end to end without SSH or Docker: each node is the real agent
operations (agent.operations) on an in-memory FakeEngine, behind a fake connector."""

import io
import json
import threading

import pytest

from orchestrator.io import transport as T
from orchestrator.app.deploy import DeployOptions, Deployment
from orchestrator.app.operate import (
    find_container,
    list_containers,
    parse_since,
    run_exec,
    stream_logs,
    take_down,
)
from orchestrator.errors import DeployError, InputError
from orchestrator.cli.progress import JSONProgress
from orchestrator.core.progress import Progress
from tests.unit.fakes import ENV, SHOP, FakeNode, ws  # noqa: F401 - the lab fixture is in conftest

def up(lab, compose=SHOP, progress=None, environ=None, **opts):
    return Deployment(ws(lab, compose, environ=environ), DeployOptions(**opts), progress or Progress(),
                      lab.connector).run()


def ids(lab):
    return {c.name: c.id for n in lab.nodes.values() for c in n.engine.containers(["io.orch.project=shop"])}


def test_the_release_id_is_an_input_of_the_specs(lab):
    res = up(lab, release="7")
    sent = [a["spec"]["release"] for n in lab.nodes.values() for op, a in n.calls if op == "rollout"]
    assert len(sent) == 6 and set(sent) == {"7"}
    labels = {c.labels["io.orch.release"] for n in lab.nodes.values()
              for c in n.engine.containers(["io.orch.project=shop"])}
    assert res.status == "ok" and labels == {"7"}


def test_the_planned_units_are_built_with_the_release_id(lab):
    """The plan's units carry DeployOptions.release as they are built (Blueprint.units), none
    put in afterwards; without an id (a dry run), ""."""
    planned = {}
    for release in ("3", ""):
        dep = Deployment(ws(lab), DeployOptions(dry_run=True, release=release), Progress(), lab.connector)
        dep.run()
        planned[release] = dep.units
        assert dep.units and {u.spec["release"] for u in dep.units.values()} == {release}
        assert {s.unit.spec["release"] for s in dep.plan.steps if s.unit is not None} == {release}
    assert {k: u.config_hash for k, u in planned["3"].items()} == {k: u.config_hash for k, u in planned[""].items()}
    assert not [c for n in lab.nodes.values() for c in n.engine.containers(["io.orch.project=shop"])]  # dry run


def test_first_up_creates_everything_wave_by_wave_with_readiness(lab):
    res = up(lab)
    assert res.status == "ok" and not res.plan.is_noop
    assert res.changed == ["api", "db", "migrate", "web", "worker"]
    n1, n2 = lab.nodes["n1"], lab.nodes["n2"]
    assert n1.applied()[:3] == ["db", "migrate", "api"] and sorted(n1.applied()[3:]) == ["web", "worker"]
    assert n2.applied() == ["web"]
    waits = {a["spec"]["service"]: a["wait"] for op, a in n1.calls if op == "rollout"}
    assert waits == {"db": "healthy", "migrate": "completed", "api": "healthy", "web": "running", "worker": "running"}
    rows = {(r.service, r.replica): r for r in res.containers}
    assert rows[("web", 2)].node == "n2" and rows[("web", 1)].node == "n1"
    assert rows[("migrate", 1)].state == "exited" and rows[("migrate", 1)].exit_code == 0
    assert res.addresses["web"] == ["10.250.0.201:8080", "10.250.0.202:8080"]
    # web-2 on n2 depends on api, which runs only on n1: it resolves api through the
    # environment's mesh (set up on both nodes before any container), not extra_hosts
    (spec,) = [a["spec"] for op, a in n2.calls if op == "rollout"]
    assert spec["container"]["extra_hosts"] == []
    assert spec["container"]["dns"] == ["10.208.32.1"] and spec["networks"]["default"]["subnet"].startswith("10.208.")
    for n in (n1, n2):
        ops = n.ops()
        assert ops.index("mesh_apply") < ops.index("rollout")
        assert [c for c, _ in n.mesh_host.calls][:2] == ["ensure_key", "ensure_link"]
    assert not [w for w in res.warnings if "depends on" in w]
    assert all(n.closed for n in lab.nodes.values())


def test_second_up_plans_no_change_and_calls_no_apply(lab):
    up(lab)
    before = ids(lab)
    for n in lab.nodes.values():
        n.calls.clear()
    res = up(lab)
    assert res.status == "ok" and res.plan.is_noop and res.changed == []
    assert ids(lab) == before
    for n in lab.nodes.values():
        assert n.ops() == ["state"]  # one call per node, nothing else


def test_changing_one_services_environment_recreates_only_it(lab):
    up(lab)
    before = ids(lab)
    for n in lab.nodes.values():
        n.calls.clear()
    res = up(lab, environ={"VERSION": "2"})
    assert res.changed == ["api"]
    assert lab.nodes["n1"].applied() == ["api"] and lab.nodes["n2"].applied() == []
    after = ids(lab)
    assert after["shop-api-1"] != before["shop-api-1"]
    assert {k: v for k, v in after.items() if k != "shop-api-1"} == {k: v for k, v in before.items() if k != "shop-api-1"}
    (action,) = [a for a in res.plan.actions() if a.kind == "recreate"]
    assert action.changed == ("environment",)


def test_dry_run_plans_and_touches_nothing(lab):
    res = up(lab, dry_run=True)
    assert res.status == "planned" and res.plan.counts()["create"] == 6
    for n in lab.nodes.values():
        assert n.ops() == ["state"] and not n.engine.records


def test_container_that_exits_fails_naming_service_replica_node_and_logs_and_blocks_dependents(lab):
    compose = SHOP.replace("image: job", "image: fail")
    with pytest.raises(DeployError) as err:
        up(lab, compose)
    text = err.value.render()
    assert "failed on node n1" in text and "service migrate replica 1" in text and "exited with code 3" in text
    assert "Last 20 log lines of shop-migrate-1" in text and "fatal: exiting" in text
    assert "Not started: api, web, worker." in text
    d = err.value.details
    assert (d["service"], d["replica"], d["node"]) == ("migrate", 1, "n1") and len(d["logs"]) == 20
    assert lab.nodes["n1"].applied() == ["db", "migrate"] and lab.nodes["n2"].applied() == []
    assert err.value.exit_code == 1


def test_never_healthy_fails_within_its_budget(lab):
    compose = SHOP.replace("""  api:
    image: busybox""", """  api:
    image: sick""")
    with pytest.raises(DeployError, match="service api replica 1 .* is unhealthy"):
        up(lab, compose)
    assert "web" not in lab.nodes["n1"].applied()


def test_unhealthy_deploy_error_says_why_and_carries_a_fix(lab):
    compose = SHOP.replace("""  api:
    image: busybox""", """  api:
    image: sick""")
    with pytest.raises(DeployError) as err:
        up(lab, compose)
    assert "is unhealthy: healthcheck failed" in err.value.message
    assert err.value.fix.startswith("check the healthcheck command and the container's logs: orch logs --env ")
    assert err.value.fix.endswith(" api") and "Fix: check the healthcheck command" in err.value.render()


def test_optional_dependency_that_fails_does_not_block(lab):
    compose = """\
        services:
          cache: {image: fail}
          app:
            image: busybox
            depends_on: {cache: {condition: service_started, required: false}}
    """
    progress = Progress()
    res = up(lab, compose, progress=progress)
    assert res.status == "ok" and res.degraded == ["cache"]
    assert lab.nodes["n1"].applied() == ["cache", "app"]
    assert any("required: false" in w for w in res.warnings)


def test_remove_orphans(lab):
    up(lab)
    without_worker = SHOP.replace("""  worker:
    image: busybox
    depends_on: [api]
""", "")
    res = up(lab, without_worker)
    assert res.plan.is_noop and res.plan.orphans == {"worker": ["n1"]}
    assert any("worker runs on n1 but is not in the Compose file" in w for w in res.warnings)
    assert "shop-worker-1" in ids(lab)
    res = up(lab, without_worker, remove_orphans=True)
    assert "shop-worker-1" not in ids(lab) and not res.plan.is_noop
    assert ("remove", {"project": "shop", "service": "worker", "env": "dev"}) in lab.nodes["n1"].calls


def test_scaling_down_removes_the_replica_on_the_other_node_after_success(lab):
    up(lab)
    res = up(lab, SHOP.replace("replicas: 2", "replicas: 1"))
    assert "shop-web-2" not in ids(lab)
    retire = [a for op, a in lab.nodes["n2"].calls if op == "retire"]
    assert [(a["service"], a["replicas"]) for a in retire] == [("web", [2])]
    assert [a.reason for a in res.plan.actions() if a.kind == "remove"] == ["scaled down"]
    # kept (stopped, renamed) until the release is live, then dropped
    assert ("discard", {"project": "shop", "env": "dev"}) in lab.nodes["n2"].calls
    assert not [c for c in lab.nodes["n2"].engine.containers(["io.orch.project=shop"]) if c.name.endswith("-prev")]


def test_bad_input_fails_before_any_connection(lab):
    with pytest.raises(InputError):
        up(lab, "services:\n  a: {image: busybox, network_mode: host}\n")
    assert lab.connects == []


def test_unreachable_node_fails_before_anything_is_touched(lab):
    def connector(environment, progress, project=None):
        failures = {"n2": T.HostUnreachable("n2 (10.250.0.202:22): timed out after 3s", node="n2")}
        raise T.NodesUnreachable(failures, 2)

    with pytest.raises(T.NodesUnreachable) as err:
        Deployment(ws(lab), DeployOptions(), Progress(), connector).run()
    assert "n2 (10.250.0.202:22): timed out" in err.value.render()
    assert "nothing was changed on any node" in err.value.render()
    assert all(not n.calls for n in lab.nodes.values())


def test_docker_missing_on_a_node_fails_before_anything_with_the_fix(lab):
    lab.nodes["n2"].fail_state = T.AgentError("n2", "state", "engine", "cannot reach Docker Engine: no socket",
                                              {"fix": "start Docker Engine"})
    with pytest.raises(T.NodesUnreachable) as err:
        up(lab)
    text = err.value.render()
    assert "n2: Docker Engine is not usable" in text and "apt-get install docker.io" in text
    assert all(n.ops("rollout") == [] for n in lab.nodes.values())


def test_agent_dying_mid_apply_is_a_deploy_error_and_rerun_converges(lab):
    n1 = lab.nodes["n1"]
    real = n1.call
    state = {"killed": False}

    def dying(op, args=None, on_event=None, timeout=None):
        if op == "rollout" and args["spec"]["service"] == "api" and not state["killed"]:
            state["killed"] = True
            real(op, dict(args, wait="running"), on_event, timeout)  # containers made, then the agent "dies"
            raise T.AgentProtocolError("n1: the agent stopped: end of output (killed)", node="n1")
        return real(op, args, on_event, timeout)

    n1.call = dying
    with pytest.raises(DeployError) as err:
        up(lab)
    assert "while applying api" in err.value.render() and "re-run `orch up`" in err.value.render()
    res = up(lab)
    assert res.status == "ok"
    again = up(lab)
    assert again.plan.is_noop


def test_json_progress_lines_and_final_object(lab):
    out = io.StringIO()
    progress = JSONProgress(out, io.StringIO())
    res = up(lab, progress=progress)
    progress.finish(res.to_json())
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    events = {ln.get("event") for ln in lines[:-1]}
    assert {"phase", "plan", "step", "agent"} <= events
    steps = [ln for ln in lines if ln.get("event") == "step" and ln["status"] == "done"]
    assert {(s["service"], s["node"]) for s in steps} >= {("db", "n1"), ("web", "n2")}
    assert all("seconds" in s for s in steps)
    final = lines[-1]
    assert final["version"] == 1 and final["status"] == "ok" and final["environment"] == "dev"
    assert final["project"] == "shop" and final["changed"] == ["api", "db", "migrate", "web", "worker"]
    assert {(c["service"], c["replica"], c["node"]) for c in final["containers"]} >= {("web", 2, "n2")}
    assert "duration_s" in final and final["addresses"]["api"] == ["10.250.0.201:8081"]


def test_hooks_run_at_their_seams(lab):
    seen = []
    dep = Deployment(ws(lab), DeployOptions(), Progress(), lab.connector)
    dep.hooks["connected"].append(lambda d: seen.append(("connected", sorted(d.nodes))))
    dep.hooks["before_apply"].append(lambda d: seen.append(("before_apply", d.plan.counts()["create"])))
    dep.run()
    assert seen == [("connected", ["n1", "n2"]), ("before_apply", 6)]


def test_down_removes_in_reverse_waves_then_networks_and_volumes_only_when_asked(lab):
    up(lab)
    for n in lab.nodes.values():
        n.calls.clear()
    res = take_down(ws(lab), False, Progress(), lab.connector)
    order = [a.get("service") for op, a in lab.nodes["n1"].calls if op == "remove"]
    assert order[:2] in (["web", "worker"], ["worker", "web"]) and order[2:] == ["api", "migrate", "db", None]
    assert not ids(lab)
    assert sorted(r["name"] for r in res.removed) == sorted(
        ["shop-web-1", "shop-web-2", "shop-worker-1", "shop-api-1", "shop-migrate-1", "shop-db-1"])
    assert lab.nodes["n1"].engine.vols  # kept
    assert res.networks == {"n1": ["shop_default"], "n2": ["shop_default"]}
    take_down(ws(lab), True, Progress(), lab.connector)
    assert not lab.nodes["n1"].engine.vols


def test_ps_logs_exec(lab):
    up(lab)
    rows = list_containers(ws(lab), lab.connector)
    assert [(r.service, r.replica, r.node) for r in rows] == [
        ("api", 1, "n1"), ("db", 1, "n1"), ("migrate", 1, "n1"), ("web", 1, "n1"), ("web", 2, "n2"),
        ("worker", 1, "n1")]
    lines = []
    stream_logs(ws(lab), ["web"], False, "all", None, lines.append, lab.connector)
    assert {(ln["service"], ln["replica"], ln["node"]) for ln in lines} == {("web", 1, "n1"), ("web", 2, "n2")}
    out = []
    code = run_exec(ws(lab), "web", 2, ["exit", "5"], out=lambda s, d: out.append((s, d)), connector=lab.connector)
    assert code == 5 and lab.nodes["n2"].ops("exec") == ["exec"] and lab.nodes["n1"].ops("exec") == []
    assert ("stderr", "err\n") in out


def test_find_container_and_since():
    from orchestrator.core.plan import Observed

    obs = {"n1": [Observed("n1", "a", "shop-web-1", "web", 1, "exited", exit_code=1)],
           "n2": [Observed("n2", "b", "shop-web-2", "web", 2, "running")]}
    assert find_container(obs, "web", None).node == "n2"
    with pytest.raises(DeployError, match="not running on n1"):
        find_container(obs, "web", 1)
    with pytest.raises(DeployError, match="no container of api"):
        find_container(obs, "api", None)
    assert parse_since("10m", now=10_000) == 9_400
    assert parse_since("1700000000") == 1700000000
    assert parse_since("2024-01-01T00:00:00+00:00") == 1704067200
    with pytest.raises(InputError):
        parse_since("yesterday")


@pytest.mark.timeout(60)  # a hang guard: the bound under test is 0.2 s
def test_close_nodes_does_not_wait_forever_on_a_wedged_node():
    """A goodbye stuck on one node (its close never returns) neither stops the others
    from closing nor keeps close_nodes, and so the command, from ending."""
    from orchestrator.io.nodes import close_nodes

    release = threading.Event()
    closed: list[str] = []

    class Node:
        def __init__(self, name, wedged=False, fails=False):
            self.name, self.wedged, self.fails = name, wedged, fails

        def close(self):
            if self.wedged:
                release.wait()  # until the test ends
            if self.fails:
                raise OSError("socket closed")
            closed.append(self.name)

    nodes = {"a": Node("a", wedged=True), "b": Node("b"), "c": Node("c", fails=True)}
    try:
        close_nodes(nodes, wait=0.2)  # returns: without the bound this test hangs
        for t in threading.enumerate():
            if t.name in ("orch-close-b", "orch-close-c"):
                t.join()
        assert closed == ["b"]
        stuck = [t for t in threading.enumerate() if t.name == "orch-close-a"]
        assert stuck and stuck[0].daemon  # left behind, and it cannot hold up the exit
    finally:
        release.set()


def test_a_second_environment_on_the_same_nodes_is_refused_and_its_down_leaves_the_first(lab):
    """Two environments of one project on one node would share every container, network
    and volume name: the second is bad input before anything changes (agent.owner)."""
    up(lab)
    before = ids(lab)
    vols = dict(lab.nodes["n1"].engine.vols)
    for n in lab.nodes.values():
        n.calls.clear()
    qa = ws(lab, env="qa")
    with pytest.raises(InputError) as err:
        Deployment(qa, DeployOptions(), Progress(), lab.connector).run()
    text = err.value.render()
    assert err.value.exit_code == 2
    assert "node n1 already runs project shop for environment dev" in text and "environment qa cannot" in text
    assert "qa.yaml:3" in text and "nodes[0]" in text and "nodes[1]" in text  # file, line and key of each node
    assert "orch down --env dev --volumes" in text and "orch up --env qa -p shop-qa" in text
    for n in lab.nodes.values():
        assert n.ops() == ["state"]  # nothing but the read
    # qa sees none of dev's containers, and its down removes none of them, nor dev's volume
    assert list_containers(qa, lab.connector) == []
    res = take_down(qa, True, Progress(), lab.connector)
    assert res.removed == [] and res.volumes == {} and res.networks == {}
    assert ids(lab) == before and lab.nodes["n1"].engine.vols == vols


def test_a_host_port_another_project_holds_on_the_node_is_refused_before_anything_changes(lab):
    """The way out for a second environment on the same node is its own project name; its
    host ports must differ too, and a clash is bad input up front, not a failed start."""
    up(lab)
    before = ids(lab)
    for n in lab.nodes.values():
        n.calls.clear()
    qa = ws(lab, compose=SHOP.replace("name: shop", "name: shop-qa").replace('"8081:8081"', '"9081:8081"'),
            env="qa")
    with pytest.raises(InputError) as err:
        Deployment(qa, DeployOptions(), Progress(), lab.connector).run()
    text = err.value.render()
    assert err.value.exit_code == 2
    assert ("compose.yaml:3: services.db.ports: service db publishes host port 5432/tcp on node n1, but container "
            "shop-db-1 (project shop, environment dev) already publishes it there") in text
    assert "host port 8080/tcp on node n2, but container shop-web-2 (project shop, environment dev)" in text
    assert "9081" not in text and "Fix: publish another host port for db" in text
    for n in lab.nodes.values():
        assert n.ops() == ["state"]
    # with host ports of its own, the copy runs beside shop on the same nodes
    own = SHOP.replace("name: shop", "name: shop-qa")
    for old, new in (('"5432:5432"', '"6432:5432"'), ('"8081:8081"', '"9081:8081"'), ('"8080:80"', '"9080:80"')):
        own = own.replace(old, new)
    res = Deployment(ws(lab, compose=own, env="qa"), DeployOptions(), Progress(), lab.connector).run()
    assert res.status == "ok" and ids(lab) == before
    assert sorted(lab.nodes["n1"].engine.vols) == ["shop-qa_data", "shop_data"]

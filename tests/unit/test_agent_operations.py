"""The agent's operations against the in-memory FakeEngine (no Docker)."""

import base64
import os
import stat

import pytest

from agent.wire import labels as L
from agent.fake import FakeEngine
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError
from agent.wire.spec import config_hash
from tests.unit.fakes import FakeClock as Clock

IMAGE = "busybox:latest"


@pytest.fixture
def engine():
    return FakeEngine(images=[IMAGE])


@pytest.fixture
def events():
    return []


@pytest.fixture
def run(engine, events, tmp_path):
    clock = Clock()

    def run(op, args):
        ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path / "state"),
                      emit=lambda t, **d: events.append(dict(d, type=t)), clock=clock, sleep=clock.sleep)
        return OPERATIONS[op](ctx, args)

    run.clock = clock
    return run


def spec(replicas=(1,), image=IMAGE, service="web", **kw):
    c = {"image": image, "networks": [{"name": "default"}]}
    c.update(kw)
    return {"project": "shop", "service": service, "env": "dev", "replicas": list(replicas),
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}


def ids(result):
    return {c["replica"]: c["id"] for c in result["containers"] if c["action"] != "removed"}


def test_apply_creates_replicas_network_and_labels(run, engine, events):
    res = run("apply", {"spec": spec(replicas=[1, 2])})
    assert res["changed"] and [c["action"] for c in res["containers"]] == ["created", "created"]
    assert "shop_default" in engine.nets and engine.nets["shop_default"]["labels"][L.PROJECT] == "shop"
    c = engine.container("shop-web-2")
    assert c.state == "running" and c.replica == 2 and c.labels[L.ENV] == "dev"
    assert c.config_hash == spec()["config_hash"]
    assert [e["type"] for e in events][:2] == ["apply.start", "network.create"]


def test_second_apply_is_a_no_op(run, engine):
    first = run("apply", {"spec": spec(replicas=[1, 2])})
    engine.calls.clear()
    second = run("apply", {"spec": spec(replicas=[1, 2])})
    assert not second["changed"] and ids(first) == ids(second)
    assert [c[0] for c in engine.calls] == []  # nothing created, started, stopped or removed


def test_changed_config_recreates_only_that(run, engine):
    first = run("apply", {"spec": spec(replicas=[1, 2])})
    res = run("apply", {"spec": spec(replicas=[1, 2], environment={"A": "1"})})
    assert [c["action"] for c in res["containers"]] == ["recreated", "recreated"]
    assert set(ids(first).values()).isdisjoint(ids(res).values())
    assert len(engine.containers(L.filters("shop"))) == 2


def test_extra_replicas_are_removed_and_others_untouched(run, engine):
    foreign = engine.add_foreign("shop-web-9", {"com.docker.compose.project": "shop"})
    other = run("apply", {"spec": spec(service="db")})
    run("apply", {"spec": spec(replicas=[1, 2, 3])})
    res = run("apply", {"spec": spec(replicas=[2])})
    assert sorted((c["replica"], c["action"]) for c in res["containers"]) == [(1, "removed"), (2, "unchanged"), (3, "removed")]
    assert engine.container(foreign) is not None
    assert engine.container(ids(other)[1]).state == "running"


def test_foreign_container_holding_our_name_is_a_conflict(run, engine):
    engine.add_foreign("shop-web-1")
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec()})
    assert err.value.kind == "conflict" and "docker rm -f shop-web-1" in err.value.details["fix"]


def test_converges_after_being_killed_midway(run, engine):
    """Killed after create, before start: the half-made container is found by label and replaced."""
    def die(*a):
        raise KeyboardInterrupt  # stands in for SIGKILL between two engine calls

    engine.fail_on["start"] = die
    with pytest.raises(KeyboardInterrupt):
        run("apply", {"spec": spec(replicas=[1, 2])})
    assert engine.container("shop-web-1").state == "created"
    del engine.fail_on["start"]
    res = run("apply", {"spec": spec(replicas=[1, 2])})
    assert [c["action"] for c in res["containers"]] == ["recreated", "created"]
    assert sorted((c.name, c.state) for c in engine.containers(L.filters("shop"))) == [
        ("shop-web-1", "running"), ("shop-web-2", "running")]


def test_stopped_container_with_same_config_is_replaced(run, engine):
    first = run("apply", {"spec": spec()})
    engine.stop(ids(first)[1])
    res = run("apply", {"spec": spec()})
    assert res["containers"][0]["action"] == "recreated"


def test_exited_container_fails_with_last_20_log_lines(run, engine):
    engine.behaviours[IMAGE] = "exit:3"
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec()})
    e = err.value
    assert e.kind == "exited" and "service web replica 1 (container shop-web-1) exited with code 3" in e.message
    assert len(e.details["logs"]) == 20 and e.details["logs"][-1] == "fatal: exiting"
    assert (e.details["service"], e.details["replica"], e.details["exit_code"]) == ("web", 1, 3)


def test_unhealthy_fails(run, engine):
    engine.behaviours[IMAGE] = "unhealthy"
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec(healthcheck={"test": ["CMD", "false"], "interval": 1, "retries": 2})})
    assert err.value.kind == "unhealthy" and "probe failed" in err.value.message
    assert engine.container("shop-web-1").state == "exited"  # stopped: the next apply recreates it


def test_never_healthy_fails_within_the_budget(run, engine):
    engine.behaviours[IMAGE] = "starting"
    hc = {"test": ["CMD", "true"], "interval": 2, "timeout": 1, "retries": 3, "start_period": 4}
    start = run.clock.now
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec(healthcheck=hc), "health_margin": 5})
    waited = run.clock.now - start
    budget = 4 + (3 + 1) * 2 + 1 + 5
    assert budget < waited <= budget + 1
    assert err.value.kind == "unhealthy" and "within 18s" in err.value.message


def test_healthy_container_is_ready(run, engine, events):
    res = run("apply", {"spec": spec(healthcheck={"test": ["CMD", "true"], "interval": 1})})
    assert res["containers"][0]["health"] == "healthy"
    assert "container.healthy" in [e["type"] for e in events]


def test_pull_when_missing_with_auth_that_is_never_written(run, engine, tmp_path):
    ref = "10.250.0.1:5000/shop/web@sha256:" + "c" * 64
    engine.registry.add(ref)
    auth = {"username": "u", "password": "hunter2", "serveraddress": "10.250.0.1:5000"}
    run("apply", {"spec": spec(image=ref, secrets=[{"name": "pw", "content": base64.b64encode(b"s").decode()}]),
                  "auth": auth})
    assert engine.pull_auth == [auth]
    written = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert any("/secrets/pw." in w for w in written), written  # the agent's files are here (the secret's)
    for path in written:
        assert b"hunter2" not in open(path, "rb").read(), path
    run("apply", {"spec": spec(image=ref, secrets=[{"name": "pw", "content": base64.b64encode(b"s").decode()}])})
    assert len(engine.pull_auth) == 1  # present now: no second pull


def test_pull_failure(run, engine):
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec(image="10.250.0.1:5000/nope:1")})
    assert err.value.kind == "pull"


def test_pull_failure_leaves_the_old_container_running(run, engine, events):
    """The new image is pulled before any old container is touched: a registry that is
    gone fails the apply, and the service keeps running on the old container."""
    first = run("apply", {"spec": spec()})
    old = ids(first)[1]
    engine.calls.clear()
    new_ref = "10.250.0.1:5000/shop/web@sha256:" + "d" * 64  # not in the (fake) registry
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec(image=new_ref)})
    assert err.value.kind == "pull"
    assert engine.container(old).state == "running"
    assert [c[0] for c in engine.calls] == ["pull"]  # nothing stopped, removed or created
    assert "container.remove" not in [e["type"] for e in events]


def test_recreate_pulls_before_removing_the_old_container(run, engine):
    first = run("apply", {"spec": spec(replicas=[1, 2])})
    new_ref = "10.250.0.1:5000/shop/web@sha256:" + "e" * 64
    engine.registry.add(new_ref)
    engine.calls.clear()
    res = run("apply", {"spec": spec(replicas=[1], image=new_ref)})
    names = [c[0] for c in engine.calls]
    assert names.index("pull") < names.index("stop") and names.index("pull") < names.index("remove")
    assert [c["action"] for c in res["containers"]] == ["recreated", "removed"]
    assert engine.container(ids(first)[1]) is None and engine.container("shop-web-1").image == new_ref


def test_unhealthy_with_no_probe_output_says_why_and_how_to_fix(run, engine):
    engine.behaviours[IMAGE] = "unhealthy-quiet"
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec(healthcheck={"test": ["CMD", "false"], "interval": 1, "retries": 2})})
    e = err.value
    assert not e.message.rstrip().endswith(":")
    assert "is unhealthy: healthcheck failed 2 times in a row (exit code 1), with no output" in e.message
    assert e.details["fix"] == ("check the healthcheck command and the container's logs: "
                                "orch logs --env dev web")


def test_never_healthy_without_a_probe_result_says_so(run, engine):
    engine.behaviours[IMAGE] = "starting"
    hc = {"test": ["CMD", "true"], "interval": 2, "timeout": 1, "retries": 3, "start_period": 4}
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec(healthcheck=hc), "health_margin": 5})
    assert "did not become healthy within 18s: no healthcheck result yet (health: starting)" in err.value.message
    assert "orch logs --env dev web" in err.value.details["fix"]


def test_unhealthy_reason_from_docker_inspect():
    from agent.engine import info_from_inspect
    from agent.steps import unhealthy_reason

    attrs = {"Id": "x", "Name": "/shop-web-1", "Config": {"Labels": {}},
             "State": {"Status": "running", "Health": {"Status": "unhealthy", "FailingStreak": 3, "Log": [
                 {"ExitCode": 1, "Output": "curl: (7) refused\n"}, {"ExitCode": 1, "Output": ""}]}}}
    c = info_from_inspect(attrs)
    assert (c.health_streak, c.health_exit) == (3, 1)
    assert unhealthy_reason(c) == "is unhealthy: healthcheck failed 3 times in a row (exit code 1), with no output"
    attrs["State"]["Health"]["Log"].append({"ExitCode": -1, "Output": "Health check exceeded timeout (5s)"})
    assert unhealthy_reason(info_from_inspect(attrs)).endswith("(exit code -1): Health check exceeded timeout (5s)")


def test_secrets_and_configs_are_written_root_only(run, engine, tmp_path):
    res = run("apply", {"spec": spec(
        secrets=[{"name": "pw", "content": base64.b64encode(b"s3cret").decode()}],
        configs=[{"name": "app.conf", "content": base64.b64encode(b"x=1").decode()}])})
    body = engine.records[ids(res)[1]]["body"]
    mounts = {m["Target"]: m for m in body["HostConfig"]["Mounts"]}
    secret, config = mounts["/run/secrets/pw"]["Source"], mounts["/app.conf"]["Source"]
    assert secret.startswith(str(tmp_path / "state" / "engines" / "FAKE-ENGINE-1" / "files" / "shop" / "web"))
    assert open(secret, "rb").read() == b"s3cret" and stat.S_IMODE(os.stat(secret).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o444
    assert mounts["/run/secrets/pw"]["ReadOnly"] is True
    # a new value gets its own file: a container kept for a rollback still mounts the old one
    res2 = run("apply", {"spec": spec(
        secrets=[{"name": "pw", "content": base64.b64encode(b"n3w").decode()}],
        configs=[{"name": "app.conf", "content": base64.b64encode(b"x=1").decode()}])})
    body2 = engine.records[ids(res2)[1]]["body"]
    secret2 = {m["Target"]: m for m in body2["HostConfig"]["Mounts"]}["/run/secrets/pw"]["Source"]
    assert secret2 != secret and open(secret, "rb").read() == b"s3cret" and open(secret2, "rb").read() == b"n3w"


def test_volumes_created_and_foreign_volume_refused(run, engine):
    s = spec(volumes=[{"source": "data", "target": "/data"}])
    s["volumes"] = {"data": {}}
    run("apply", {"spec": s})
    assert engine.vols["shop_data"]["labels"][L.PROJECT] == "shop"
    engine.vols["shop_other"] = {"name": "shop_other", "labels": {}}
    s2 = spec(service="db", volumes=[{"source": "other", "target": "/o"}])
    s2["volumes"] = {"other": {}}
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": s2})
    assert err.value.kind == "conflict"


def test_external_network_must_exist(run, engine):
    s = spec()
    s["networks"] = {"default": {"external": True, "name": "corp"}}
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": s})
    assert err.value.kind == "not_found" and "corp" in err.value.message


def test_state_lists_only_our_containers(run, engine):
    engine.add_foreign("postgres")
    run("apply", {"spec": spec(replicas=[1, 2])})
    res = run("state", {"project": "shop"})
    assert [(c["service"], c["replica"], c["state"]) for c in res["containers"]] == [("web", 1, "running"), ("web", 2, "running")]
    assert set(res["containers"][0]) >= {"image", "image_id", "config_hash", "health", "ports", "release"}
    assert len(run("state", {})["containers"]) == 2


def test_remove_project(run, engine):
    run("apply", {"spec": spec(replicas=[1, 2])})
    run("apply", {"spec": spec(service="db")})
    foreign = engine.add_foreign("other")
    res = run("remove", {"project": "shop", "service": "db", "env": "dev"})
    assert [c["name"] for c in res["removed"]] == ["shop-db-1"] and res["networks"] == []
    res = run("remove", {"project": "shop", "env": "dev"})
    assert sorted(c["name"] for c in res["removed"]) == ["shop-web-1", "shop-web-2"]
    assert res["networks"] == ["shop_default"] and not engine.nets
    assert engine.container(foreign) is not None


def test_logs_and_exec(run, engine, events):
    run("apply", {"spec": spec(replicas=[1, 2])})
    res = run("logs", {"project": "shop", "service": "web", "tail": 5})
    assert res["lines"] == 2 and [e["line"] for e in events if e["type"] == "log"] == ["starting shop-web-1", "starting shop-web-2"]
    res = run("exec", {"project": "shop", "service": "web", "replica": 2, "cmd": ["exit", "7"]})
    assert res == {"container": "shop-web-2", "exit_code": 7, "cancelled": False}
    out = [(e["stream"], e["data"]) for e in events if e["type"] == "output"]
    assert out == [("stdout", "exit 7"), ("stderr", "err\n")]


def test_exec_needs_a_matching_container(run, engine):
    with pytest.raises(AgentError) as err:
        run("exec", {"project": "shop", "service": "web", "cmd": ["true"]})
    assert err.value.kind == "not_found"


def test_prune(run, engine):
    run("apply", {"spec": spec(replicas=[1, 2])})
    engine.stop(engine.container("shop-web-2").id)
    res = run("prune", {"project": "shop", "env": "dev"})
    assert res["containers"] == ["shop-web-2"] and res["networks"] == []


def test_bad_arguments_are_refused_before_touching_anything(run, engine):
    for op, args in [("apply", {"spec": dict(spec(), project="../etc")}), ("exec", {"project": "shop", "cmd": "rm -rf /"}),
                     ("logs", {"project": "shop", "tail": "lots"}), ("state", {"project": "x", "bogus": 1})]:
        with pytest.raises(AgentError) as err:
            run(op, args)
        assert err.value.kind == "bad_request"
    assert engine.calls == []


def test_hello_and_info(run):
    hello = run("hello", {"protocol": 1})
    assert hello["protocol"] == 1 and hello["pid"] == os.getpid()
    with pytest.raises(AgentError) as err:
        run("hello", {"protocol": 2})
    assert err.value.kind == "protocol"
    info = run("info", {})
    assert info["engine"]["version"] == "0.0-fake" and info["engine_error"] == ""

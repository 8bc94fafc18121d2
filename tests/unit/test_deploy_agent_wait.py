"""The agent side of readiness: apply's `wait` (running | healthy | completed), one-shot
containers that completed count as converged, and the config-parts label."""

import json

import pytest

from agent.wire import labels as L
from agent.fake import FakeEngine
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError
from agent.wire.spec import config_hash, config_parts
from tests.unit.fakes import FakeClock as Clock


@pytest.fixture
def engine():
    return FakeEngine(images=["busybox", "job", "fail", "forever"],
                      behaviours={"job": "exit:0", "fail": "exit:3", "forever": "starting"})


@pytest.fixture
def run(engine, tmp_path):
    def run(op, args):
        clock = Clock()
        ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path), clock=clock, sleep=clock.sleep)
        return OPERATIONS[op](ctx, args)

    return run


def spec(image="job", restart="no", **kw):
    c = {"image": image, "restart": restart, "networks": [{"name": "default"}]}
    c.update(kw)
    return {"project": "p", "service": "s", "replicas": [1], "config_hash": config_hash(c), "container": c,
            "networks": {"default": {}}, "config_parts": config_parts(c)}


def test_completed_waits_for_exit_0_and_the_completed_container_is_kept(run, engine):
    res = run("apply", {"spec": spec(), "wait": "completed"})
    assert [c["action"] for c in res["containers"]] == ["created"]
    assert res["containers"][0]["state"] == "exited"
    again = run("apply", {"spec": spec(), "wait": "completed"})
    assert [c["action"] for c in again["containers"]] == ["unchanged"] and not again["changed"]
    # and under the default wait too: a one-shot with restart no that exited 0 is done
    assert [c["action"] for c in run("apply", {"spec": spec()})["containers"]] == ["unchanged"]


def test_completed_with_a_failing_exit_code_fails_with_logs(run):
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec("fail"), "wait": "completed"})
    assert err.value.kind == "exited" and "exited with code 3" in err.value.message
    assert len(err.value.details["logs"]) == 20


def test_completed_times_out_when_it_keeps_running(run):
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec("busybox"), "wait": "completed", "timeout": 5})
    assert err.value.kind == "timeout" and "did not complete within 5s" in err.value.message


def test_running_mode_accepts_a_one_shot_only_with_a_restart_policy_that_keeps_it_exited(run):
    assert run("apply", {"spec": spec("job", "on-failure")})["containers"][0]["state"] == "exited"
    with pytest.raises(AgentError, match="exited with code 0"):
        run("apply", {"spec": spec("job", "always")})


def test_healthy_needs_a_healthcheck(run):
    with pytest.raises(AgentError) as err:
        run("apply", {"spec": spec("busybox", "always"), "wait": "healthy"})
    assert "has no healthcheck" in err.value.message and "service_healthy" in err.value.message
    hc = {"test": ["CMD", "true"], "interval": 1}
    res = run("apply", {"spec": spec("busybox", "always", healthcheck=hc), "wait": "healthy"})
    assert res["containers"][0]["health"] == "healthy"


def test_kept_container_still_starting_is_waited_for(run, engine):
    hc = {"test": ["CMD", "true"], "interval": 1, "retries": 1, "timeout": 1}
    with pytest.raises(AgentError, match="did not become healthy"):
        run("apply", {"spec": spec("forever", "always", healthcheck=hc), "wait": "healthy"})


def test_bad_wait_is_refused(run):
    with pytest.raises(AgentError, match="wait must be one of"):
        run("apply", {"spec": spec(), "wait": "soon"})


def test_config_parts_are_labelled_and_reported_by_state(run, engine):
    s = spec("busybox", "always")
    run("apply", {"spec": s})
    (c,) = run("state", {"project": "p"})["containers"]
    assert c["config_parts"] == s["config_parts"]
    labels = engine.containers(["io.orch.project=p"])[0].labels
    assert json.loads(labels[L.CONFIG_PARTS]) == s["config_parts"]

"""Every command's duration_s is the whole command: connecting to the nodes (and taking the
lock) included, however slow (issue 17: `orch down` reported 12.5 s of 23.8 s)."""

import time

import pytest

from orchestrator.app import pipeline as P
from orchestrator.app import release as PR
from orchestrator.app import up as PU
from orchestrator.app.deploy import DeployOptions, Deployment
from orchestrator.core.progress import Progress

from tests.unit.fakes import ws as shop_workspace

SLOW = 0.4  # seconds the fake connect takes


@pytest.fixture
def slow(world):
    """world.seams() whose connect takes SLOW seconds; the calls counted."""
    calls = []

    def connector(environment, progress, project=None):
        calls.append(environment.name)
        time.sleep(SLOW)
        return world.connector(environment, progress, project)

    world.slow_calls = calls
    return lambda **kw: world.seams(connector=connector, **kw)


def _check(res, connects):
    assert res.duration_s >= SLOW * connects
    if getattr(res, "timings", None) is not None:
        assert res.timings["connect"] >= SLOW
        assert res.duration_s >= sum(v for k, v in res.timings.items() if k in ("connect", "lock", "apply"))
    assert res.to_json()["duration_s"] >= SLOW * connects


def test_up_and_a_noop_up_count_their_connect(world, slow):
    ws, base = world.workspaces("dev")
    _check(PU.up(ws, base, P.PipelineOptions(), Progress(), slow()), 1)
    ws, base = world.workspaces("dev")
    res = PU.up(ws, base, P.PipelineOptions(), Progress(), slow())
    assert not res.new_release
    _check(res, 1)


def test_down_counts_its_connect_and_lock(world, slow):
    world.up()
    lock_seconds = 0.2

    class Handle:
        def release(self):
            pass

    def locker(nodes, env, holder, wait, on_wait):
        time.sleep(lock_seconds)
        return Handle()

    ws, _ = world.workspaces("dev")
    res = P.down(ws, P.PipelineOptions(), seams=slow(locker=locker))
    assert len(res.removed) == 2
    assert res.duration_s >= SLOW + lock_seconds and res.to_json()["duration_s"] >= SLOW + lock_seconds


def test_promote_and_rollback_count_their_connects(world, slow):
    world.up()
    target = world.environment("test")
    res = PR.promote("hello", target, world.environment("dev"), P.PipelineOptions(), Progress(), slow(),
                     today=world.workspaces("test")[1], working_dir=world.dir)
    assert res.status == "ok"
    _check(res, 1)  # the source is read while the target connects: in parallel
    world.version = 2
    world.up(env="dev")
    PR.promote("hello", target, world.environment("dev"), P.PipelineOptions(), Progress(), world.seams(),
               today=world.workspaces("test")[1], working_dir=world.dir)
    ws, _ = world.workspaces("test")
    res = PR.rollback("hello", ws.environment, P.PipelineOptions(), progress=Progress(), seams=slow(),
                      today=ws.project, working_dir=world.dir)
    assert res.status == "ok"
    _check(res, 1)


def test_a_plain_deployment_counts_its_connect(lab):
    def connector(environment, progress, project=None):
        time.sleep(SLOW)
        return lab.connector(environment, progress, project)

    res = Deployment(shop_workspace(lab), DeployOptions(), Progress(), connector).run()
    assert res.duration_s >= SLOW and res.timings["connect"] >= SLOW

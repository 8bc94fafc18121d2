"""agent.owner: whatever the controller asks, the agent never changes or removes an
object labelled with another environment (FakeEngine, no Docker)."""

import os

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
def run(engine, tmp_path):
    clock = Clock()

    def run(op, args):
        ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path / "state"), clock=clock,
                      sleep=clock.sleep, engine_id=lambda: "e1")
        return OPERATIONS[op](ctx, args)

    return run


def spec(env, service="db", version="1"):
    c = {"image": IMAGE, "networks": [{"name": "default"}], "environment": {"V": version},
         "volumes": [{"type": "volume", "source": "data", "target": "/data"}],
         "secrets": [{"name": "pw", "target": "/run/secrets/pw", "content": "c2VjcmV0"}]}
    return {"project": "shop", "service": service, "env": env, "replicas": [1],
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}, "volumes": {"data": {}}}


def snapshot(engine):
    return ({c.name: (c.id, c.state) for c in engine.containers([L.PROJECT])},
            sorted(engine.nets), sorted(engine.vols))


@pytest.fixture
def dev(run, engine, tmp_path):
    """Project shop deployed by environment dev: a container, a kept one, network, volume, files."""
    run("rollout", {"spec": spec("dev")})
    run("rollout", {"spec": spec("dev", version="2")})  # the first container is kept as shop-db-1-prev
    files = tmp_path / "state" / "engines" / "e1" / "files" / "shop"
    assert files.is_dir()
    assert {c.name for c in engine.containers(L.filters("shop"))} == {"shop-db-1", "shop-db-1-prev"}
    return files


CHANGING = [
    ("apply", lambda: {"spec": spec("qa")}),
    ("rollout", lambda: {"spec": spec("qa")}),
    ("restore", lambda: {"project": "shop", "service": "db", "env": "qa",
                         "replicas": [{"replica": 1, "was_running": True}]}),
    ("retire", lambda: {"project": "shop", "service": "db", "env": "qa"}),
    ("discard", lambda: {"project": "shop", "env": "qa"}),
    ("prune_images", lambda: {"project": "shop", "env": "qa", "keep": []}),
    # no env at all is not a licence either
    ("rollout", lambda: {"spec": spec("")}),
    ("discard", lambda: {"project": "shop"}),
]


@pytest.mark.parametrize("op,args", CHANGING, ids=[f"{op}-{i}" for i, (op, _) in enumerate(CHANGING)])
def test_another_environment_cannot_change_the_project(run, engine, dev, op, args):
    before, calls = snapshot(engine), len(engine.calls)
    with pytest.raises(AgentError) as err:
        run(op, args())
    assert err.value.kind == "conflict"
    assert "project shop on this node belongs to environment dev" in err.value.message
    assert "orch down --env dev" in err.value.details["fix"]
    assert snapshot(engine) == before
    assert [c for c in engine.calls[calls:] if c[0] not in ("containers", "container")] == []


def test_another_environments_remove_prune_and_volumes_leave_it_alone(run, engine, dev):
    before = snapshot(engine)
    for args in ({"project": "shop", "env": "qa", "remove_volumes": True},
                 {"project": "shop", "service": "db", "env": "qa"},
                 {"project": "shop", "remove_volumes": True}):  # no env: only objects without one
        res = run("remove", args)
        assert res["removed"] == [] and res["networks"] == [] and res["volumes"] == []
    engine.stop(engine.container("shop-db-1").id)
    assert run("prune", {"project": "shop", "env": "qa"})["containers"] == []
    assert run("networks", {"action": "remove", "project": "shop", "env": "qa"})["removed"] == []
    assert run("volumes", {"action": "remove", "project": "shop", "env": "qa", "names": ["data"]})["removed"] == []
    assert snapshot(engine)[1:] == before[1:] and set(snapshot(engine)[0]) == set(before[0])
    assert dev.is_dir() and os.listdir(dev)  # dev's secret files stay
    # dev itself still removes its own, all of it
    res = run("remove", {"project": "shop", "env": "dev", "remove_volumes": True})
    assert sorted(c["name"] for c in res["removed"]) == ["shop-db-1", "shop-db-1-prev"]
    assert res["networks"] == ["shop_default"] and res["volumes"] == ["shop_data"] and not dev.exists()


def test_state_says_which_environments_own_the_project(run, engine, dev):
    owners = run("state", {"project": "shop"})["owners"]
    assert sorted(owners) == ["dev"]
    assert set(owners["dev"]) == {"container shop-db-1", "container shop-db-1-prev", "network shop_default",
                                  "volume shop_data"}
    # a volume left by dev's `down` (without --volumes) still makes shop dev's here
    run("remove", {"project": "shop", "env": "dev"})
    assert run("state", {"project": "shop"})["owners"] == {"dev": ["volume shop_data"]}
    with pytest.raises(AgentError, match="belongs to environment dev"):
        run("rollout", {"spec": spec("qa")})


def test_the_same_environment_and_other_projects_go_ahead(run, engine, dev):
    assert run("rollout", {"spec": spec("dev", version="3")})["replaced"]
    other = dict(spec("qa"), project="shop2")
    assert [c["action"] for c in run("rollout", {"spec": other})["containers"]] == ["created"]
    assert engine.container("shop2-db-1").labels[L.ENV] == "qa"


def test_logs_for_another_environment_show_none_of_its_containers(run, engine, dev):
    assert run("logs", {"project": "shop", "env": "dev"})["containers"] == ["shop-db-1", "shop-db-1-prev"]
    assert run("logs", {"project": "shop", "env": "qa"})["containers"] == []

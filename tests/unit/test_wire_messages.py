"""The deploy path's typed requests and results (agent.wire.messages): each one survives
to_dict -> from_dict unchanged, and a bad field is refused with BadRequest."""

import json

import pytest

from agent.wire import messages as M
from agent.wire.ingress import IngressSettings
from agent.wire.protocol import BadRequest
from agent.wire.spec import config_hash

C = {"image": "registry.example:5000/web@sha256:" + "a" * 64, "networks": [{"name": "default"}]}
SPEC = {"project": "shop", "service": "web", "env": "prod", "replicas": [1, 2, 3], "config_hash": config_hash(C),
        "container": C, "networks": {"default": {}}}
INGRESS = IngressSettings.parse({"port": {"published": 8080, "target": 80}, "health": {"path": "/"},
                                 "drain_timeout": 2})
AUTH = {"username": "ci", "password": "s3cret", "serveraddress": "registry.example:5000"}
KEPT = M.KeptContainer("c0ffee", "shop-web-1-prev", True, "r7", "web:v1")
CONTAINER = M.ContainerState(
    id="abc", name="shop-web-1", project="shop", service="web", replica=1, env="prod", release="r8",
    config_hash="0" * 16, config_parts={"image": "1234"}, image="web:v2", image_id="sha256:" + "b" * 64,
    state="running", health="healthy", exit_code=0, restart_count=1,
    ports=[{"target": 80, "published": 8080, "protocol": "tcp"}], created="2026-12-06T10:00:00Z",
    started_at="2026-12-06T10:00:01Z", finished_at="", networks=["shop_default"], retired=False)

REQUESTS = [
    M.StateRequest(),
    M.StateRequest(project="shop"),
    M.StateRequest(project="shop", service="web", env="prod", mesh="prod"),
    M.RolloutRequest(spec=SPEC, replicas=(M.ReplicaOrder(1, "start-first"), M.ReplicaOrder(3, "stop-first")),
                     wait="healthy", min_running=2.0, health_margin=1.0, timeout=30.0, min_healthy=5.0,
                     deadline=60.0, batch=2, auth=AUTH, ingress=INGRESS),
    M.RolloutRequest(spec=SPEC),  # only converges the ingress / waits
    M.RestoreRequest("shop", "web", (M.RestoreItem(1, True), M.RestoreItem(2, False)), "prod", INGRESS),
    M.RestoreRequest("shop", "web", (M.RestoreItem(1),)),
    M.RetireRequest("shop", "web", "prod", (2, 3), INGRESS),
    M.RetireRequest("shop", "web"),
    M.DiscardRequest("shop", env="prod"),
    M.DiscardRequest("shop", "web", "prod"),
    M.RemoveRequest("shop"),
    M.RemoveRequest("shop", "web", (1, 2), "prod", True, False),
]
RESULTS = [
    M.StateResult(),
    M.StateResult((CONTAINER, M.ContainerState("d", "shop-web-2-prev", retired=True)), {}, {"prod": ["shop-web-1"]},
                  [{"published": 9000, "project": "other"}], {"env": "prod", "public_key": ""}),
    M.RolloutResult("web", True, 2,
                    (M.ContainerOutcome(1, "abc", "shop-web-1", "recreated", "running", "healthy"),
                     M.ContainerOutcome(2, "def", "shop-web-2", "unchanged", "running", "")),
                    (M.ReplicaChange(1, KEPT, M.NewContainer("abc", "shop-web-1")),
                     M.ReplicaChange(3, None, M.NewContainer("fed", "shop-web-3")))),
    M.RolloutResult("web"),
    M.RestoreResult("web", (M.Restored(1, "abc", "c0ffee"), M.Restored(3, "fed", None))),
    M.RetireResult("web", (M.ReplicaChange(2, M.KeptContainer("e", "shop-web-2-prev", False)),)),
    M.DiscardResult((M.RemovedContainer("c0ffee", "shop-web-1-prev", "web", 1),), ("web/config.1234",)),
    M.RemoveResult((M.RemovedContainer("abc", "shop-web-1", "web", 1),), ("shop_default",), ("shop_data",), ("web",)),
]


def _parsed(obj):
    wire = json.loads(json.dumps(obj.to_dict()))  # what actually travels
    return type(obj).from_dict(wire)


@pytest.mark.parametrize("obj", REQUESTS + RESULTS, ids=lambda o: type(o).__name__)
def test_round_trip(obj):
    back = _parsed(obj)
    assert back == obj
    assert back.to_dict() == obj.to_dict()


def test_rollout_parse_gives_the_service_spec_and_each_replicas_order():
    req = _parsed(REQUESTS[3])
    assert req.service_spec is not None and req.service_spec.service == "web"
    assert [(r.replica, r.order) for r in req.replicas] == [(1, "start-first"), (3, "stop-first")]
    assert req.order_of(1) == "start-first" and req.order_of(3) == "stop-first"
    assert _parsed(REQUESTS[4]).replicas == ()  # sent empty: none replaced


def test_rollout_replicas_as_bare_numbers_take_the_requests_order():
    """The older shape: `replicas: [n]` with one `order` for all (default stop-first);
    absent replicas mean every replica of the spec."""
    req = M.RolloutRequest.from_dict({"spec": SPEC, "replicas": [2, 1], "order": "start-first"})
    assert req.replicas == (M.ReplicaOrder(1, "start-first"), M.ReplicaOrder(2, "start-first"))
    assert M.RolloutRequest.from_dict({"spec": SPEC}).replicas == tuple(M.ReplicaOrder(r) for r in (1, 2, 3))
    assert req.to_dict()["replicas"] == [{"replica": 1, "order": "start-first"}, {"replica": 2, "order": "start-first"}]


def _with(base, **changes):
    d = dict(base)
    for k, v in changes.items():
        if v is KeyError:
            d.pop(k, None)
        else:
            d[k] = v
    return d


ROLLOUT = REQUESTS[3].to_dict()
BAD_REQUESTS = [
    (M.StateRequest, {"project": "Shop!"}),
    (M.StateRequest, {"project": "shop", "what": 1}),
    (M.StateRequest, {"project": "shop", "mesh": 3}),
    (M.StateRequest, ["shop"]),
    (M.RolloutRequest, _with(ROLLOUT, spec=KeyError)),
    (M.RolloutRequest, _with(ROLLOUT, spec=dict(SPEC, replicas="1"))),
    (M.RolloutRequest, _with(ROLLOUT, replicas=[{"replica": 1, "order": "sideways"}])),
    (M.RolloutRequest, _with(ROLLOUT, replicas=[{"replica": 4, "order": "stop-first"}])),  # not in the spec
    (M.RolloutRequest, _with(ROLLOUT, replicas=[{"replica": 0}])),
    (M.RolloutRequest, _with(ROLLOUT, replicas=[{"replica": 1, "order": "stop-first", "x": 1}])),
    (M.RolloutRequest, _with(ROLLOUT, replicas=[{"replica": 1, "order": "stop-first"},
                                                {"replica": 1, "order": "start-first"}])),
    (M.RolloutRequest, _with(ROLLOUT, replicas=1)),
    (M.RolloutRequest, _with(ROLLOUT, order="sideways")),
    (M.RolloutRequest, _with(ROLLOUT, wait="forever")),
    (M.RolloutRequest, _with(ROLLOUT, min_running=-1)),
    (M.RolloutRequest, _with(ROLLOUT, timeout="10")),
    (M.RolloutRequest, _with(ROLLOUT, min_healthy=float("nan"))),
    (M.RolloutRequest, _with(ROLLOUT, deadline=True)),
    (M.RolloutRequest, _with(ROLLOUT, batch=-1)),
    (M.RolloutRequest, _with(ROLLOUT, auth=dict(AUTH, serveraddress="evil.example"))),  # not the image's registry
    (M.RolloutRequest, _with(ROLLOUT, auth="ci:s3cret")),
    (M.RolloutRequest, _with(ROLLOUT, ingress={"port": {"published": 0, "target": 80}})),
    (M.RolloutRequest, _with(ROLLOUT, extra=1)),
    (M.RestoreRequest, {"project": "shop", "service": "web"}),
    (M.RestoreRequest, {"project": "shop", "service": "web", "replicas": [1]}),
    (M.RestoreRequest, {"project": "shop", "service": "web", "replicas": [{"replica": 0}]}),
    (M.RestoreRequest, {"project": "shop", "service": "web", "replicas": [{"replica": 1, "was_running": "yes"}]}),
    (M.RestoreRequest, {"project": "shop", "service": "web/x", "replicas": []}),
    (M.RestoreRequest, {"project": "shop", "service": "web", "replicas": [], "ingress": "8080"}),
    (M.RetireRequest, {"project": "shop"}),
    (M.RetireRequest, {"project": "shop", "service": "web", "replicas": 2}),
    (M.RetireRequest, {"project": "shop", "service": "web", "replicas": ["2"]}),
    (M.RetireRequest, {"project": "shop", "service": "web", "env": "p rod"}),
    (M.DiscardRequest, {"service": "web"}),
    (M.DiscardRequest, {"project": "shop", "replicas": [1]}),
    (M.RemoveRequest, {"project": "shop", "replicas": {"1": True}}),
    (M.RemoveRequest, {"project": "shop", "remove_volumes": "yes"}),
    (M.RemoveRequest, {"project": "shop", "remove_networks": 1}),
    (M.RemoveRequest, {"project": ""}),
]


@pytest.mark.parametrize("cls,wire", BAD_REQUESTS, ids=lambda x: getattr(x, "__name__", None) or "")
def test_bad_request_fields_are_refused(cls, wire):
    with pytest.raises(BadRequest):
        cls.from_dict(wire)


BAD_RESULTS = [
    (M.StateResult, {"containers": {}}),
    (M.StateResult, {"containers": [{"id": "a", "name": "b", "replica": "1"}]}),
    (M.StateResult, {"containers": [{"id": "a", "name": "b", "ports": "8080"}]}),
    (M.StateResult, {"containers": [], "owners": []}),
    (M.StateResult, {"containers": [], "ports_elsewhere": {}}),
    (M.StateResult, {"containers": [], "surprise": 1}),
    (M.RolloutResult, {"changed": True}),
    (M.RolloutResult, {"service": "web", "containers": [{"replica": 1, "id": "a", "name": "b", "action": "moved"}]}),
    (M.RolloutResult, {"service": "web", "replaced": [{"replica": 1, "old": {"name": "x"}}]}),
    (M.RolloutResult, {"service": "web", "replaced": [{"replica": 1, "new": {"id": "a", "name": "b", "x": 1}}]}),
    (M.RestoreResult, {"service": "web", "restored": [{"replica": 1, "removed": 5}]}),
    (M.RetireResult, {"service": "web", "retired": [{"old": None}]}),
    (M.DiscardResult, {"removed": [{"id": "a"}]}),
    (M.RemoveResult, {"removed": [], "networks": [1]}),
]


@pytest.mark.parametrize("cls,wire", BAD_RESULTS, ids=lambda x: getattr(x, "__name__", None) or "")
def test_bad_result_fields_are_refused(cls, wire):
    with pytest.raises(BadRequest):
        cls.from_dict(wire)


def test_the_agents_answers_parse_as_the_typed_results(tmp_path):
    """The agent's real operations answer in the shapes the controller parses."""
    from agent.context import Context
    from agent.fake import FakeEngine
    from agent.operations import OPERATIONS
    from tests.unit.fakes import FakeClock

    engine = FakeEngine(images=[C["image"]])
    clock = FakeClock()
    ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path), emit=lambda t, **d: None, clock=clock,
                  sleep=clock.sleep)

    def run(op, req):
        return OPERATIONS[op](ctx, req.to_dict())

    roll = M.RolloutResult.from_dict(run("rollout", M.RolloutRequest(
        spec=SPEC, replicas=(M.ReplicaOrder(1), M.ReplicaOrder(2, "start-first")))))
    assert [(c.replica, c.action) for c in roll.containers] == [(1, "created"), (2, "created")]
    state = M.StateResult.from_dict(run("state", M.StateRequest("shop")))
    assert sorted(c.name for c in state.containers) == ["shop-web-1", "shop-web-2"] and state.owners is not None
    retired = M.RetireResult.from_dict(run("retire", M.RetireRequest("shop", "web", "prod", (2,))))
    assert [(r.replica, r.old.name) for r in retired.retired] == [(2, "shop-web-2-prev")]
    restored = M.RestoreResult.from_dict(run("restore", M.RestoreRequest("shop", "web", (M.RestoreItem(2),), "prod")))
    assert [r.replica for r in restored.restored] == [2]
    M.DiscardResult.from_dict(run("discard", M.DiscardRequest("shop", env="prod")))
    removed = M.RemoveResult.from_dict(run("remove", M.RemoveRequest("shop", env="prod")))
    assert sorted(r.name for r in removed.removed) == ["shop-web-1", "shop-web-2"]

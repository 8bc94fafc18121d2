"""orchestrator.app.pipeline over fake nodes: the agent's real operations (apply, ledger,
lock, prune_images) on in-memory FakeEngines, three environments dev -> test -> prod, a
fake images step (pins with made-up digests), fake HTTP checks (the World and its fixture: tests/unit/fakes.py, tests/unit/conftest.py)."""

import pytest

from agent.fake import FakeEngine
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.redact import is_redacted
from orchestrator.app import pipeline as P
from orchestrator.app import release as PR
from orchestrator.app import up as PU
from orchestrator.core import releases as R
from orchestrator.io import ledger as RL
from orchestrator.errors import DeployError, GateRefused, InputError, LockHeld
from orchestrator.io.lock import lock_held_error, LockHolder
from orchestrator.core.progress import Progress
from orchestrator.io.registry_client import RegistryUnavailable
from orchestrator.io.transport import AgentError
from tests.unit.fakes import PERF, PIPELINE_COMPOSE, digest


# --------------------------------------------------------------------------- up


def test_up_records_a_live_release_with_digests_manifest_and_base(world):
    res = world.up()
    assert res.status == "ok" and res.new_release and res.exit_code == 0
    rel = world.history("dev").live()
    assert rel.id == 1 and rel.command == "up" and rel.version == "v1" and rel.performer["user"] == PERF.user
    assert rel.services == world.pins(world.workspaces("dev")[0].project) == res.images
    assert rel.manifest["services"]["api"]["environment"]["HELLO_ENV"] == "dev"  # rendered: after the overlay
    assert rel.extra["base"]["services"]["api"]["environment"]["HELLO_ENV"] == "local"  # base: before it
    for m in (rel.manifest, rel.extra["base"]):  # secrets never in clear
        assert is_redacted(m["services"]["api"]["environment"]["DB_PASSWORD"])
    assert rel.verified is True and world.checked == ["http://10.250.0.200:8090/"]
    assert {s["release"] for s in world.running("dev").values()} == {"1"}
    assert res.to_json()["release_id"] == 1 and res.to_json()["images"] == rel.services


def test_the_release_id_is_in_every_spec_as_it_is_built(world, monkeypatch):
    """The id goes in when the units are built (DeployOptions.release), not pushed into
    the specs afterwards: the plan's units already carry it, and so does what is sent."""
    import copy

    from orchestrator.app.deploy import Deployment

    planned = []
    make_plan = Deployment.make_plan

    def spy(self):
        plan = make_plan(self)
        planned.append({k: copy.deepcopy(u.spec) for k, u in self.units.items()})
        return plan

    monkeypatch.setattr(Deployment, "make_plan", spy)
    world.up()
    world.version += 1
    world.up()
    ws, base = world.workspaces("dev")
    PU.up(ws, base, P.PipelineOptions(dry_run=True), Progress(), world.seams())
    assert [sorted({s["release"] for s in specs.values()}) for specs in planned] == [["1"], ["2"], [""]]
    sent = [a["spec"]["release"] for op, a in world.nodes["d1"].calls if op == "rollout"]
    assert sent and sorted(set(sent)) == ["1", "2"] and sent[0] == "1" and sent[-1] == "2"


def test_a_second_up_with_nothing_changed_makes_no_release(world):
    world.up()
    world.checked.clear()
    res = world.up()
    assert res.status == "ok" and not res.new_release and res.release.id == 1
    assert res.message == "hello is already live in dev as dev #1; nothing changed."
    assert [r.id for r in world.history("dev").releases] == [1] and world.checked == []


def test_a_change_makes_release_2_and_supersedes_1(world):
    world.up()
    world.version = 2
    res = world.up()
    assert res.release.id == 2
    h = world.history("dev")
    assert [(r.id, r.status) for r in h.releases] == [(2, "live"), (1, "superseded")]
    assert world.running("dev")["api"]["image"].endswith(digest("api-v2"))


def test_after_live_a_failed_discard_is_a_warning_and_prune_still_runs(world):
    world.up()
    world.version = 2
    node = world.nodes["d1"]
    real = node.call

    def failing_discard(op, args=None, on_event=None, timeout=None):
        if op == "discard":
            raise AgentError("d1", "discard", "engine", "engine went away")
        return real(op, args, on_event, timeout)

    node.call = failing_discard
    node.calls.clear()
    res = world.up()
    assert res.status == "ok" and res.release.id == 2
    assert any("d1: could not remove the previous release's kept containers" in w for w in res.warnings), res.warnings
    ops = [op for op, _ in node.calls]  # (the refused discard is not recorded by the fake)
    live = [i for i, op in enumerate(ops) if op == "release_put"][1]  # deploying, live, verified
    assert ops[live + 1] == "prune_images", " ".join(ops)  # the prune still ran, after the live record


def test_a_failed_apply_records_the_release_failed_with_the_reason(world):
    world.up()
    world.version = 2
    world.workspaces("dev")
    for node in world.nodes.values():  # the new api image exits at once
        node.engine.behaviours[world.pins(world.workspaces("dev")[0].project)["api"]] = "exit:3"
    with pytest.raises(DeployError):
        world.up()
    h = world.history("dev")
    assert [(r.id, r.status) for r in h.releases] == [(2, "failed"), (1, "live")]
    assert "exited with code 3" in h.get(2).reason


def test_a_release_left_deploying_is_marked_interrupted_by_the_next_deploy(world):
    world.up()
    ledger = RL.ReleaseLedger({"d1": world.nodes["d1"]}, "hello", "dev")
    h = ledger.history()
    ledger.write(R.new_release(h, services=h.live().services, manifest={"services": {}}, performer=PERF))
    world.version = 2
    world.up()
    h = world.history("dev")
    assert [(r.id, r.status) for r in h.releases] == [(3, "live"), (2, "failed"), (1, "superseded")]
    assert h.get(2).reason.startswith("interrupted")


def test_a_failing_check_leaves_the_release_live_but_unverified_and_fails(world):
    world.checks_ok = False
    res = world.up()
    assert res.status == "failed" and isinstance(res.error, P.VerificationFailed) and res.exit_code == 1
    live = world.history("dev").live()
    assert live.id == 1 and live.verified is False
    assert res.to_json()["error"]["kind"] == "VerificationFailed"


def test_bad_input_and_a_down_registry_touch_no_node(world):
    world.write_compose(PIPELINE_COMPOSE.replace("image: web-src", "image: web-src\n    ipc: host"))
    with pytest.raises(InputError):
        world.up()
    assert world.images_calls == 0 and world.connects == []
    world.write_compose(PIPELINE_COMPOSE)
    world.images_error = RegistryUnavailable("registry reg.test:5000 is not reachable", registry="reg.test:5000")
    with pytest.raises(RegistryUnavailable):
        world.up()
    # Nothing to build: the nodes were connected meanwhile (app.up._connect_early), then
    # closed without being asked anything. (With a build they are not even connected:
    # tests/unit/test_round_trips.py.)
    assert world.connects == ["dev"]
    assert world.nodes["d1"].closed and world.nodes["d1"].calls == []


def test_a_held_lock_fails_with_exit_4_and_changes_nothing(world):
    def locked(nodes, env, holder, wait, on_wait):
        raise lock_held_error(env, "d1", LockHolder("bob", "ci-2", "orch up --env dev", "2024-01-01T00:00:00Z"))

    ws, base = world.workspaces("dev")
    with pytest.raises(LockHeld) as err:
        PU.up(ws, base, P.PipelineOptions(), Progress(), world.seams(locker=locked))
    assert err.value.exit_code == 4 and "bob on ci-2, running `orch up --env dev`" in err.value.message
    assert world.nodes["d1"].ops("rollout") == [] and world.nodes["d1"].ops("release_put") == []


def test_the_lock_is_taken_before_reading_state_and_released_after(world):
    order = []

    class Handle:
        def release(self):
            order.append("release")

    def locker(nodes, env, holder, wait, on_wait):
        order.append(("lock", env, holder.command, wait))
        nodes["d1"].calls.append(("LOCKED", {}))
        return Handle()

    ws, base = world.workspaces("dev")
    PU.up(ws, base, P.PipelineOptions(lock_wait=30, command_line="orch up --env dev"), Progress(),
         world.seams(locker=locker))
    assert order == [("lock", "dev", "orch up --env dev", 30), "release"]
    ops = world.nodes["d1"].ops()
    assert ops.index("LOCKED") < ops.index("state") < ops.index("release_put") < ops.index("rollout")


def test_dry_run_takes_no_lock_and_writes_nothing(world):
    def locker(*a):
        raise AssertionError("no lock on a dry run")

    ws, base = world.workspaces("dev")
    res = PU.up(ws, base, P.PipelineOptions(dry_run=True), Progress(), world.seams(locker=locker))
    assert res.status == "planned" and res.deploy.plan.counts()["create"] == 2
    assert world.nodes["d1"].ops("release_put") == [] and world.nodes["d1"].ops("rollout") == []


def test_old_images_are_pruned_beyond_the_last_releases(world):
    node = world.nodes["d1"]
    refs = {}
    for v in (1, 2, 3):
        world.version = v
        pins = world.pins(world.workspaces("dev")[0].project)
        for svc, ref in pins.items():
            refs[(svc, v)] = ref
            node.engine.add_image(ref, {"io.orch.project": "hello"})
    other = node.engine.add_image("busybox@" + digest("bb"), {})
    res = None
    for v in (1, 2, 3):
        world.version = v
        res = world.up(keep_images=2)
    present = {k for k, ref in refs.items() if ref in node.engine.images}
    assert present == {("api", 2), ("web", 2), ("api", 3), ("web", 3)}
    assert sorted(res.pruned["d1"]) == sorted([refs[("api", 1)], refs[("web", 1)]])
    assert other in node.engine.image_meta


# --------------------------------------------------------------------------- promote


def test_promotion_gates_then_the_same_digests_with_the_targets_overlay(world):
    with pytest.raises(GateRefused) as err:
        world.promote("test")
    assert err.value.details["gate"] == "live" and err.value.exit_code == 3
    world.up()
    res = world.promote("test")
    test_rel = world.history("test").live()
    dev_rel = world.history("dev").live()
    assert res.new_release and test_rel.source == dev_rel.ref and test_rel.command == "promote"
    assert test_rel.services == dev_rel.services
    assert world.running("test")["api"]["env"]["HELLO_ENV"] == "test"
    assert test_rel.lineage_text() == "test #1 <- dev #1"
    assert world.images_calls == 1  # nothing rebuilt

    # prod: verification is required (test's release was verified on deploy), and approval
    with pytest.raises(GateRefused) as err:
        world.promote("prod")
    assert err.value.details["gate"] == "approved" and "--approve" in err.value.fix
    assert world.nodes["p1"].ops("rollout") == []
    res = world.promote("prod", approve=True)
    prod_rel = world.history("prod").live()
    assert prod_rel.lineage_text() == "prod #1 <- test #1 <- dev #1"
    assert prod_rel.approval["by"] == "Ada <ada@example.com>" and prod_rel.approval["via"] == "--approve"
    assert {s: e["image"] for s, e in world.running("prod").items()} == dev_rel.services
    assert world.running("prod")["api"]["env"]["HELLO_ENV"] == "prod"
    assert world.running("prod")["api"]["env"]["DB_PASSWORD"] == "hunter22"  # restored from today's files

    again = world.promote("prod", approve=True)
    assert not again.new_release and "already live in prod as prod #1" in again.message
    assert [r.id for r in world.history("prod").releases] == [1]


def test_an_unverified_source_is_refused_where_verification_is_required(world):
    world.up()
    world.promote("test")
    ledger = RL.ReleaseLedger({"t1": world.nodes["t1"]}, "hello", "test")
    h = ledger.history()
    ledger.write(R.with_verification(h.live(), {"ok": False, "results": [{"name": "home", "ok": False}]}))
    with pytest.raises(GateRefused) as err:
        world.promote("prod", approve=True)
    assert err.value.details["gate"] == "verified" and "verification failed (home)" in err.value.message


def test_an_unhealthy_source_is_refused(world):
    world.up()
    for rec in world.nodes["d1"].engine.records.values():
        if rec["info"]["labels"].get("io.orch.service") == "web":
            rec["info"]["state"] = "exited"
            rec["info"]["exit_code"] = 137
    with pytest.raises(GateRefused) as err:
        world.promote("test")
    assert err.value.details["gate"] == "healthy" and "web-1 is exited" in err.value.message


# --------------------------------------------------------------------------- rollback


def test_rollback_reapplies_the_recorded_project_and_digests_not_todays_files(world):
    world.up()
    world.promote("test")
    world.promote("prod", approve=True)
    first = world.history("prod").live()
    world.version = 2
    world.environ["NOTE"] = "two"
    world.up()
    world.promote("test")
    world.promote("prod", approve=True)
    assert world.running("prod")["api"]["env"]["NOTE"] == "two"
    res = world.rollback("prod")
    h = world.history("prod")
    assert [(r.id, r.status) for r in h.releases] == [(3, "live"), (2, "rolled_back"), (1, "superseded")]
    rb = h.get(3)
    assert rb.command == "rollback" and rb.restores == 1 and rb.rollback_of == 2 and rb.services == first.services
    assert rb.lineage_text() == "prod #3 (rollback to #1) <- test #1 <- dev #1"
    assert res.new_release and res.release.id == 3
    running = world.running("prod")
    assert {s: e["image"] for s, e in running.items()} == first.services
    assert running["api"]["env"]["NOTE"] == "one" and running["api"]["env"]["HELLO_ENV"] == "prod"
    assert running["api"]["env"]["DB_PASSWORD"] == "hunter22"
    assert world.nodes["p1"].ops("release_put") and world.nodes["p2"].ops("release_put")
    held = world.history("prod").nodes  # recorded on both prod nodes, at the same revision
    assert held["p1"][3] == held["p2"][3] == h.get(3).rev > 0


def test_rollback_to_an_id_and_refusals(world):
    with pytest.raises(InputError):
        world.rollback("dev")  # nothing live
    world.up()
    with pytest.raises(InputError) as err:
        world.rollback("dev")
    assert "nothing earlier to roll back to" in err.value.message
    world.version = 2
    world.up()
    world.version = 3
    world.up()
    res = world.rollback("dev", to=1)
    assert res.release.restores == 1 and world.running("dev")["api"]["image"].endswith(digest("api-v1"))


def test_a_rotated_secret_is_deployed_with_todays_value_and_a_missing_one_refused(world):
    world.up()
    world.version = 2
    world.up()
    world.environ["DB_PASSWORD"] = "rotated-pw"
    res = world.rollback("dev")
    assert res.new_release  # the ledger keeps nothing of the old value: today's is deployed
    assert world.running("dev")["api"]["env"]["DB_PASSWORD"] == "rotated-pw"
    ws = world.workspaces("dev")[0]
    with pytest.raises(InputError) as err:  # no Compose file at hand: the secret cannot be restored
        PR.rollback("hello", ws.environment, P.PipelineOptions(), to=2, progress=Progress(), seams=world.seams(),
                   today=None, working_dir=world.dir)
    assert "services.api.environment.DB_PASSWORD" in err.value.message


def test_down_takes_the_lock(world):
    world.up()
    taken = []

    class Handle:
        def release(self):
            taken.append("release")

    def locker(nodes, env, holder, wait, on_wait):
        taken.append(holder.command)
        return Handle()

    ws, _ = world.workspaces("dev")
    res = P.down(ws, P.PipelineOptions(command_line="orch down --env dev"), seams=world.seams(locker=locker))
    assert taken == ["orch down --env dev", "release"] and len(res.removed) == 2


# --------------------------------------------------------------------------- pure helpers


def test_parse_release_id():
    assert P.parse_release_id("7") == P.parse_release_id("#7") == P.parse_release_id("prod#7") == 7
    assert P.parse_release_id(None) is None
    with pytest.raises(InputError):
        P.parse_release_id("latest")


def test_keep_images_default():
    assert P.keep_images_default({}) == 5 and P.keep_images_default({"ORCH_KEEP_IMAGES": "9"}) == 9
    with pytest.raises(InputError):
        P.keep_images_default({"ORCH_KEEP_IMAGES": "0"})


def test_prune_images_keeps_used_and_listed_images_and_never_touches_others(tmp_path):
    engine = FakeEngine()
    ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path))
    old = engine.add_image("r/hello/api@" + digest("1"), {"io.orch.project": "hello"}, size=10)
    kept = engine.add_image("r/hello/api@" + digest("2"), {"io.orch.project": "hello"})
    used = engine.add_image("r/hello/api@" + digest("3"), {"io.orch.project": "hello"})
    foreign = engine.add_image("r/other/api@" + digest("4"), {"io.orch.project": "other"})
    plain = engine.add_image("busybox@" + digest("5"))
    engine.records["c"] = {"body": {}, "info": {"id": "c", "name": "x", "labels": {}, "image": "i", "image_id": used,
                                                "state": "exited"}}
    out = OPERATIONS["prune_images"](ctx, {"project": "hello", "keep": ["r/hello/api@" + digest("2")]})
    assert out["removed"] == ["r/hello/api@" + digest("1")] and out["reclaimed"] == 10
    assert set(engine.image_meta) == {kept, used, foreign, plain} and old not in engine.image_meta


def test_the_ledger_masks_a_base_project_with_a_secret_in_clear():
    from agent.ledger import check_record

    rel = R.Release(project="hello", env="dev", id=1, status="live", services={}, manifest={"services": {}},
                    project_hash="0" * 64, performer={"user": "a"}, created="t", updated="t", rev=1,
                    extra={"base": {"services": {"api": {"environment": {"DB_PASSWORD": "clear"}}}}})
    stored = check_record(rel.to_record())
    assert stored["extra"]["base"]["services"]["api"]["environment"]["DB_PASSWORD"] == "<redacted>"


def test_engine_id_from_socket_reads_info_without_the_sdk(tmp_path):
    import json as _json
    import socket
    import threading

    from agent.engine import engine_id_from_socket

    path = str(tmp_path / "docker.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        request = conn.recv(65536)
        assert request.startswith(b"GET /info HTTP/1.0")
        body = _json.dumps({"ID": "ABCD:EFGH"}).encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert engine_id_from_socket({"DOCKER_HOST": f"unix://{path}"}) == "ABCD:EFGH"
    t.join(5)
    server.close()
    assert engine_id_from_socket({"DOCKER_HOST": "tcp://10.250.0.11:2375"}) is None
    assert engine_id_from_socket({"DOCKER_HOST": f"unix://{tmp_path / 'nothing.sock'}"}) is None


def test_the_lock_uses_the_fast_engine_id_without_connecting_the_engine(tmp_path):
    def no_engine():
        raise AssertionError("the lock must not need the docker SDK")

    ctx = Context(engine_factory=no_engine, state_dir=str(tmp_path), engine_id=lambda: "FAST:ID")
    out = OPERATIONS["lock_acquire"](ctx, {"env": "prod", "holder": {"user": "a"}})
    assert out["acquired"] and ctx.data_dir().endswith("engines/FAST-ID")
    OPERATIONS["lock_release"](ctx, {"env": "prod"})

"""Releases: performer, redaction, transitions, merging, diff, gates, rollback, and the
ledger over (in-process) agents on several nodes."""

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from agent.fake import FakeEngine
from agent.wire.redact import first_clear_secret
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError as NodeAgentError
from orchestrator.core import releases as R
from orchestrator.io import ledger as RL
from orchestrator.io import transport as T
from orchestrator.core.environments import Gates
from orchestrator.errors import GateRefused, InputError

D = {c: "sha256:" + c * 64 for c in "abcdef"}
WEB = "10.250.0.1:5000/hello/web@"
PERF = {"user": "Ada <ada@example.com>", "host": "laptop"}


def manifest(web=D["a"], mode="prod", **extra):
    m = {"name": "hello", "services": {"web": {"image": WEB + web, "environment": {"MODE": mode}}}}
    m.update(extra)
    return m


def history(*releases, env="prod", max_id=0):
    return R.History("hello", env, list(sorted(releases, key=lambda r: r.id, reverse=True)), max_id)


def release(id, status="live", web=D["a"], env="prod", **kw):
    base = dict(project="hello", env=env, id=id, status=status, services={"web": WEB + web}, manifest=manifest(web),
                project_hash="ab" * 32, performer=PERF, created=f"2024-01-0{min(id, 9)}T00:00:00.000Z",
                updated=f"2024-01-0{min(id, 9)}T00:00:00.000Z", rev=1)
    base.update(kw)
    return R.Release(**base)


# --------------------------------------------------------------------------- performer


def fake_git(values):
    def run(argv, **kw):
        key = argv[-1]
        return subprocess.CompletedProcess(argv, 0 if key in values else 1, values.get(key, ""), "")

    return run


def test_performer_from_git_and_user():
    p = RL.detect_performer({"USER": "ada"}, run=fake_git({"user.name": "Ada L", "user.email": "ada@x"}))
    assert p.user == "Ada L <ada@x>" and p.login == "ada" and p.ci == {} and p.host
    p = RL.detect_performer({"USER": "ada"}, run=fake_git({}))
    assert p.user == "ada"


@pytest.mark.parametrize("environ,system,url", [
    ({"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "77", "GITHUB_REPOSITORY": "org/app", "GITHUB_ACTOR": "octo",
      "GITHUB_SERVER_URL": "https://gh.example"}, "github-actions", "https://gh.example/org/app/actions/runs/77"),
    ({"GITLAB_CI": "true", "CI_JOB_URL": "https://gl.example/j/5", "CI_PIPELINE_ID": "9", "GITLAB_USER_LOGIN": "ada"},
     "gitlab-ci", "https://gl.example/j/5"),
    ({"JENKINS_URL": "https://j", "BUILD_URL": "https://j/job/1/"}, "jenkins", "https://j/job/1/"),
    ({"CI": "true", "CI_JOB_URL": "https://ci/x"}, "ci", "https://ci/x"),
])
def test_performer_records_ci(environ, system, url):
    p = RL.detect_performer(environ, run=fake_git({}))
    assert p.ci["system"] == system and p.ci_job == url
    assert url in str(p)


# --------------------------------------------------------------------------- redaction


def test_redaction_masks_secrets_without_a_hash_and_the_agent_accepts_it():
    m = {"name": "hello", "services": {
        "db": {"environment": {"POSTGRES_PASSWORD": "hunter2!", "MODE": "x", "EMPTY_TOKEN": ""},
               "build": {"args": {"NPM_TOKEN": "npm-abc"}}},
        "api": {"environment": {"DATABASE_URL": "postgres://app:s3cret@db:5432/app", "GREETING": "hi k3y-material"}},
    }, "secrets": {"tls": {"content": "-----BEGIN KEY-----"}, "file": {"file": "/run/x"}}}
    out = R.redact_manifest(m, "hello", secret_values=["k3y-material"])
    text = json.dumps(out)
    for secret in ("hunter2!", "npm-abc", "s3cret", "k3y-material", "BEGIN KEY"):
        assert secret not in text
    db = out["services"]["db"]["environment"]
    assert db["POSTGRES_PASSWORD"] == "<redacted>" and db["MODE"] == "x" and db["EMPTY_TOKEN"] == ""
    assert out["services"]["api"]["environment"]["DATABASE_URL"] == "postgres://app:<redacted>@db:5432/app"
    assert out["services"]["api"]["environment"]["GREETING"] == "hi <redacted>"
    assert out["secrets"]["file"] == {"file": "/run/x"}
    assert m["services"]["db"]["environment"]["POSTGRES_PASSWORD"] == "hunter2!"  # input untouched
    assert first_clear_secret(out) is None  # the agent's own check
    # Nothing derived from the value: another password gives the same record.
    other = R.redact_manifest({"services": {"db": {"environment": {"POSTGRES_PASSWORD": "other"}}}}, "hello")
    assert other["services"]["db"]["environment"]["POSTGRES_PASSWORD"] == db["POSTGRES_PASSWORD"]
    assert R.redact_manifest(m, "other-project", ["k3y-material"]) == out


def test_restore_secrets_for_a_rollback():
    current = {"services": {"db": {"environment": {"POSTGRES_PASSWORD": "hunter2!", "URL": "pg://u:pw@h/x"},
                                   "command": ["run", "--token", "tok-123456"]}}}
    recorded = R.redact_manifest(current, "hello")
    assert recorded["services"]["db"]["command"] == ["run", "--token", "<redacted>"]
    restored, changed = R.restore_secrets(recorded, current, "hello")
    assert restored == current and changed == []
    rotated = {"services": {"db": {"environment": {"POSTGRES_PASSWORD": "new", "URL": "pg://u:pw2@h/x"},
                                   "command": ["run", "--token", "tok-2"]}}}
    restored, changed = R.restore_secrets(recorded, rotated, "hello")
    assert restored == rotated and changed == []  # today's values; a rotation cannot be told apart
    moved = {"services": {"db": {"environment": {"URL": "pg://u:pw@elsewhere/x"}}}}
    restored, changed = R.restore_secrets(recorded, moved, "hello")
    assert changed == ["services.db.environment.URL"]  # more than the secret changed
    assert restored["services"]["db"]["environment"]["POSTGRES_PASSWORD"] == "<redacted>"  # nothing today
    assert R.restore_secrets(recorded, moved, "hello", prefer_current=True)[0]["services"]["db"]["environment"][
        "URL"] == "pg://u:pw@elsewhere/x"
    old = {"services": {"db": {"environment": {"URL": "pg://u:<redacted sha256:0123456789abcdef>@h/x"}}}}
    assert R.restore_secrets(old, current, "hello")[0]["services"]["db"]["environment"]["URL"] == "pg://u:pw@h/x"


def test_render_manifest_pins_images_and_drops_build(tmp_path):
    from orchestrator.core.compose import LoadOptions, load_project

    (tmp_path / "compose.yaml").write_text("name: hello\nservices:\n  web: {build: ., environment: {A: b}}\n"
                                           "  cache: {image: busybox}\n")
    p = load_project(LoadOptions(working_dir=tmp_path, environ={}))
    m = R.render_manifest(p, {"web": WEB + D["a"], "cache": "busybox@" + D["b"]})
    assert m["services"]["web"]["image"] == WEB + D["a"] and "build" not in m["services"]["web"]
    assert m["services"]["cache"]["image"] == "busybox@" + D["b"]
    assert R.manifest_hash(m) == R.manifest_hash(json.loads(json.dumps(m)))


# --------------------------------------------------------------------------- transitions


def test_new_release_numbers_after_every_node_and_promotion_extends_lineage():
    src = release(31, env="dev", lineage=())
    test_rel = release(12, env="test", source=src.ref, lineage=(src.ref,))
    h = history(release(6, status="superseded"), release(7), max_id=9)
    new = R.new_release(h, services={"web": WEB + D["b"]}, manifest=manifest(D["b"]), performer=PERF,
                        command="promote", source=test_rel, now="2024-02-01T00:00:00.000Z")
    assert new.id == 10 and new.status == "deploying" and new.rev == 0 and new.command == "promote"
    assert new.lineage_text() == "prod #10 <- test #12 <- dev #31"
    assert new.project_hash == R.manifest_hash(new.manifest)


def test_mark_live_supersedes_and_rollback_marks_rolled_back():
    h = history(release(6, status="superseded"), release(7))
    new = release(8, status="deploying")
    writes = R.mark_live(h, new)
    assert [(r.id, r.status) for r in writes] == [(8, "live"), (7, "superseded")]
    rb = release(9, status="deploying", rollback_of=8, restores=7)
    h2 = history(release(7, status="superseded"), release(8))
    assert [(r.id, r.status) for r in R.mark_live(h2, rb)] == [(9, "live"), (8, "rolled_back")]
    failed = R.mark_failed(new, "web on prod-1 exited")
    assert failed.status == "failed" and failed.reason == "web on prod-1 exited"


def test_merge_highest_revision_wins_and_stale_nodes_are_found():
    old = release(2, status="deploying", rev=1).to_record()
    new = release(2, status="live", rev=2, updated="2024-01-02T00:00:09.000Z").to_record()
    one = release(1, status="superseded", rev=3).to_record()
    h = R.merge_histories("hello", "prod", {
        "prod-1": {"releases": [new, one], "max_id": 2},
        "prod-2": {"releases": [old], "max_id": 4},
    })
    assert [(r.id, r.status, r.rev) for r in h.releases] == [(2, "live", 2), (1, "superseded", 3)]
    assert h.live().id == 2 and h.next_id() == 5
    assert {n: [r.id for r in rs] for n, rs in h.stale().items()} == {"prod-2": [2, 1]}


def test_diff_of_two_releases():
    a = release(1, manifest=manifest(D["a"], mode="x"))
    b = release(2, web=D["b"], manifest=dict(manifest(D["b"], mode="y"), volumes={"data": {}}))
    d = R.diff_releases(a, b)
    assert d.images == {"web": (WEB + D["a"], WEB + D["b"])} and d.config == ("web",) and d.other == ("volumes",)
    assert d.summary() == "web (image, config), volumes"
    assert R.diff_releases(a, a).summary() == "no change"
    assert R.diff_releases(None, a).summary() == "+web"
    c = release(3, services={"web": WEB + D["a"], "api": "x@" + D["c"]})
    assert "+api" in R.diff_releases(a, c).summary()


# --------------------------------------------------------------------------- gates


def promote(src_h, dst_h, gates=Gates(), **kw):
    return R.check_promotion(src_h, dst_h, gates, **kw)


def test_gate_live():
    with pytest.raises(GateRefused) as err:
        promote(history(env="test"), history())
    assert err.value.exit_code == 3 and "gate 'live'" in err.value.render() and "orch up --env test" in err.value.fix


def test_gate_healthy():
    with pytest.raises(GateRefused) as err:
        promote(history(release(12, env="test"), env="test"), history(), source_healthy=False,
                health_problems=["test-1: hello-web-1 is unhealthy"])
    assert "gate 'healthy'" in err.value.render() and "hello-web-1 is unhealthy" in err.value.render()


def test_gate_verified():
    gates = Gates(verification=True)
    with pytest.raises(GateRefused) as err:
        promote(history(release(12, env="test"), env="test"), history(), gates)
    assert "gate 'verified'" in err.value.render() and "not been verified" in err.value.render()
    assert "orch verify --env test" in err.value.fix
    failed = release(12, env="test", verification={"ok": False, "results": [{"name": "web-home", "ok": False}]})
    with pytest.raises(GateRefused) as err:
        promote(history(failed, env="test"), history(), gates)
    assert "verification failed (web-home)" in err.value.render()
    ok = release(12, env="test", verification={"ok": True, "results": []})
    assert promote(history(ok, env="test"), history(), gates).source.id == 12


def test_gate_verified_names_both_ways_out_when_the_source_has_no_checks():
    from types import SimpleNamespace

    test = SimpleNamespace(name="test", file=Path("envs/test.yaml"), verify=SimpleNamespace(checks=()))
    prod = SimpleNamespace(name="prod", file=Path("envs/prod.yaml"))
    with pytest.raises(GateRefused) as err:
        promote(history(release(12, env="test"), env="test"), history(), Gates(verification=True),
                source_env=test, target_env=prod)
    assert "not been verified, and it cannot be: test has no verify checks" in err.value.message
    assert "`verify: checks:` in test's environment file (envs/test.yaml)" in err.value.fix
    assert "`gates.verification: false`) from prod's environment file (envs/prod.yaml)" in err.value.fix
    assert err.value.exit_code == 3 and err.value.details["no_checks"] is True
    with_checks = SimpleNamespace(name="test", file=Path("envs/test.yaml"), verify=SimpleNamespace(checks=("c",)))
    with pytest.raises(GateRefused) as err:
        promote(history(release(12, env="test"), env="test"), history(), Gates(verification=True),
                source_env=with_checks, target_env=prod)
    assert err.value.fix == "run `orch verify --env test` (and fix what fails), then promote again."


def test_gate_approved_by_flag_or_ci_variable():
    gates = Gates(approval=True)
    src = history(release(12, env="test"), env="test")
    with pytest.raises(GateRefused) as err:
        promote(src, history(), gates, environ={})
    assert "gate 'approved'" in err.value.render() and "--approve" in err.value.fix and "ORCH_APPROVE=1" in err.value.fix
    plan = promote(src, history(), gates, approve=True, performer=PERF, environ={}, now="t")
    assert plan.approval == {"by": "Ada <ada@example.com>", "at": "t", "via": "--approve"}
    plan = promote(src, history(), gates, environ={"ORCH_APPROVE": "1"}, performer=PERF)
    assert plan.approval["via"] == "ORCH_APPROVE"


def test_promoting_what_is_live_already_is_a_noop():
    src = release(12, env="test")
    live = release(7, source=src.ref, lineage=(src.ref,))
    plan = promote(history(src, env="test"), history(live), Gates(approval=True, verification=True))
    assert plan.noop and "already live in prod as prod #7" in plan.message


def test_health_from_state():
    rel = release(3, services={"web": WEB + D["a"], "migrate": "x@" + D["b"]})
    ok_state = {"prod-1": [{"project": "hello", "service": "web", "name": "hello-web-1", "image": WEB + D["a"],
                            "state": "running", "health": "healthy"},
                           {"project": "hello", "service": "migrate", "name": "m", "image": "x@" + D["b"],
                            "state": "exited", "exit_code": 0}]}
    assert R.health_from_state(rel, ok_state) == (True, [])
    bad = {"prod-1": [dict(ok_state["prod-1"][0], health="unhealthy", image=WEB + D["c"])]}
    ok, problems = R.health_from_state(rel, bad)
    assert not ok and any("unhealthy" in p for p in problems) and any("not the release's" in p for p in problems)
    assert "service migrate has no container" in problems


# --------------------------------------------------------------------------- rollback


def test_rollback_default_is_the_previous_live_release():
    h = history(release(5, status="superseded"), release(6, status="failed"), release(7))
    plan = R.select_rollback(h)
    assert (plan.target.id, plan.current.id) == (5, 7)
    new = R.rollback_release(h, plan, PERF)
    assert (new.id, new.rollback_of, new.restores, new.command) == (8, 7, 5, "rollback")
    assert new.services == h.get(5).services and new.manifest == h.get(5).manifest
    assert new.lineage_text() == "prod #8 (rollback to #5)"


def test_rollback_to_refuses_what_never_ran():
    h = history(release(5, status="superseded"), release(6, status="failed"), release(7))
    assert R.select_rollback(h, to=5).target.id == 5
    assert R.select_rollback(h, to=7).target.id == 7  # re-applies the live one (after a paused update)
    for to, words in ((6, "never went live"), (99, "no release #99")):
        with pytest.raises(InputError) as err:
            R.select_rollback(h, to=to)
        assert words in err.value.render()
    with pytest.raises(InputError):
        R.select_rollback(history(release(1)))
    with pytest.raises(InputError):
        R.select_rollback(history())


def test_images_to_keep_covers_the_last_n_that_ran():
    rs = [release(i, status="superseded", web=D[c]) for i, c in zip(range(1, 7), "abcdef")]
    h = history(*rs[:-1], release(6, web=D["f"]))
    keep = R.images_to_keep(h, keep=3)
    assert keep == {WEB + D["f"], WEB + D["e"], WEB + D["d"]}


# --------------------------------------------------------------------------- ledger over agents


class Node:
    """An in-process agent on its own state dir (like a node), behind the AgentSession API."""

    def __init__(self, name, root):
        self.name = name
        self.engine = FakeEngine()
        self.engine.id = f"ENGINE-{name}"
        self.root = root
        self.down = False
        self.calls = []

    def call(self, op, args=None, on_event=None, timeout=None):
        self.calls.append(op)
        if self.down:
            raise T.AgentProtocolError(f"{self.name}: the agent stopped", node=self.name)
        ctx = Context(engine_factory=lambda: self.engine, state_dir=str(self.root))
        try:
            return OPERATIONS[op](ctx, json.loads(json.dumps(args)))
        except NodeAgentError as err:
            raise T.AgentError(self.name, op, err.kind, err.message, err.details) from None


@pytest.fixture
def prod(tmp_path):
    return {n: Node(n, tmp_path) for n in ("prod-1", "prod-2")}


def test_ledger_write_read_and_go_live_on_every_node(prod):
    ledger = RL.ReleaseLedger(prod, "hello", "prod")
    h = ledger.history()
    assert h.releases == [] and h.next_id() == 1
    r1 = R.new_release(h, services={"web": WEB + D["a"]}, manifest=manifest(), performer=PERF)
    assert ledger.write(r1).stored_on == ["prod-1", "prod-2"]
    ledger.write(*R.mark_live(ledger.history(), r1))
    h = ledger.history()
    r2 = R.new_release(h, services={"web": WEB + D["b"]}, manifest=manifest(D["b"]), performer=PERF)
    ledger.write(r2)
    ledger.write(*R.mark_live(ledger.history(), r2))
    for node in prod.values():
        answer = node.call("release_list", {"env": "prod", "project": "hello"})
        assert [(r["id"], r["status"]) for r in answer["releases"]] == [(2, "live"), (1, "superseded")]
    h = ledger.history()
    assert h.live().id == 2 and h.get(2).rev == 2 and h.get(1).rev == 3 and h.stale() == {}


def test_node_that_missed_a_write_is_repaired_by_the_next(prod):
    warnings = []
    ledger = RL.ReleaseLedger(prod, "hello", "prod", on_warning=warnings.append)
    r1 = R.new_release(ledger.history(), services={"web": WEB + D["a"]}, manifest=manifest(), performer=PERF)
    prod["prod-2"].down = True
    res = ledger.write(r1)
    assert res.stored_on == ["prod-1"] and "prod-2" in res.failed and "next write repairs it" in warnings[-1]
    prod["prod-2"].down = False
    h = ledger.history()
    assert [r.id for r in h.stale()["prod-2"]] == [1]
    r2 = R.new_release(h, services={"web": WEB + D["b"]}, manifest=manifest(D["b"]), performer=PERF)
    assert r2.id == 2
    ledger.write(r2)
    ids = [r["id"] for r in prod["prod-2"].call("release_list", {"env": "prod", "project": "hello"})["releases"]]
    assert ids == [2, 1]


def test_ledger_fails_when_no_node_records(prod):
    ledger = RL.ReleaseLedger(prod, "hello", "prod")
    h = ledger.history()
    for n in prod.values():
        n.down = True
    with pytest.raises(R.LedgerError) as err:
        ledger.write(R.new_release(h, services={"web": WEB + D["a"]}, manifest=manifest(), performer=PERF))
    assert "on any node" in err.value.render()
    with pytest.raises(R.LedgerError):
        ledger.history()


def test_secrets_never_reach_a_node(prod):
    ledger = RL.ReleaseLedger(prod, "hello", "prod")
    m = {"name": "hello", "services": {"db": {"image": "x@" + D["a"], "environment": {"DB_PASSWORD": "hunter2!"}}}}
    ledger.write(R.new_release(ledger.history(), services={"db": "x@" + D["a"]}, manifest=m, performer=PERF,
                               secret_values=["hunter2!"]))
    for node in prod.values():
        db = node.root / "engines" / f"ENGINE-{node.name}" / "ledger.sqlite3"
        data = b"".join(p.read_bytes() for p in db.parent.glob("ledger.sqlite3*"))
        assert b"hunter2!" not in data and b"<redacted>" in data


def test_a_new_release_is_not_numbered_without_every_nodes_ledger(prod):
    ledger = RL.ReleaseLedger(prod, "hello", "prod")
    ledger.write(R.new_release(ledger.history(), services={"web": WEB + D["a"]}, manifest=manifest(),
                               performer=PERF))
    prod["prod-1"].down = True
    h = ledger.history()  # a read still answers (history, verify)...
    assert [r.id for r in h.releases] == [1] and "prod-1" in h.errors
    with pytest.raises(R.LedgerError) as err:  # ...but no new id is given out on it
        R.new_release(h, services={"web": WEB + D["b"]}, manifest=manifest(D["b"]), performer=PERF)
    assert "prod-1" in err.value.message and "could not be read" in err.value.message


def test_a_write_whose_id_another_release_holds_fails(prod):
    """Two controllers numbered their releases from the same history: the second one's
    write does not overwrite the first anywhere, and fails before it deploys."""
    one, two = RL.ReleaseLedger(prod, "hello", "prod"), RL.ReleaseLedger(prod, "hello", "prod")
    h1, h2 = one.history(), two.history()
    r1 = R.new_release(h1, services={"web": WEB + D["a"]}, manifest=manifest(), performer=PERF, now="2024-01-01T00:00:00.000Z")
    r2 = R.new_release(h2, services={"web": WEB + D["b"]}, manifest=manifest(D["b"]),
                       performer={"user": "bob", "host": "ci"}, now="2024-01-01T00:00:05.000Z")
    assert r1.id == r2.id == 1
    one.write(r1)
    with pytest.raises(R.LedgerError) as err:
        two.write(r2)
    assert "taken by another release" in err.value.message
    for node in prod.values():
        got = node.call("release_get", {"env": "prod", "project": "hello", "id": 1})["release"]
        assert got["services"] == r1.services and got["performer"] == PERF
    one.write(*R.mark_live(h1, r1))  # the first controller's updates still go through
    assert one.history().live().id == 1


def test_secrets_in_every_form_never_reach_a_nodes_ledger(prod):
    ledger = RL.ReleaseLedger(prod, "hello", "prod")
    m = {"name": "hello", "services": {"api": {
        "image": "x@" + D["a"],
        "environment": {"DB_PASSWORD": "env-pw-1", "STRIPE_KEY": "sk-key-2", "NOTE": "see known-val-3",
                        "REDIS_URL": "redis://:redis-pw-4@cache:6379/0", "MSSQL": "Server=db;Password=conn-pw-5;"},
        "command": ["serve", "--token", "cmd-tok-6"], "labels": {"app.auth-token": "label-tok-7"},
        "healthcheck": {"test": ["CMD", "wget", "http://u:hc-pw-8@localhost/"]}}}}
    rel = R.new_release(ledger.history(), services={"api": "x@" + D["a"]}, manifest=m, performer=PERF,
                        secret_values=["known-val-3"])
    ledger.write(replace(rel, extra={"base": R.redact_manifest(m, "hello", ["known-val-3"])}))
    for node in prod.values():
        db = node.root / "engines" / f"ENGINE-{node.name}" / "ledger.sqlite3"
        data = b"".join(p.read_bytes() for p in db.parent.glob("ledger.sqlite3*"))
        assert b"<redacted>" in data and b"cache:6379" in data, node.name  # the release is there, masked
        for secret in ("env-pw-1", "sk-key-2", "known-val-3", "redis-pw-4", "conn-pw-5", "cmd-tok-6",
                       "label-tok-7", "hc-pw-8"):
            assert secret.encode() not in data, (node.name, secret)


def test_a_failure_reason_is_masked_like_the_manifest():
    r = R.mark_failed(release(1, status="deploying"), "api exited: connect redis://:url-pw@cache failed; "
                      "password was hunter2-x", secret_values=["hunter2-x", "ab"])
    assert r.status == "failed" and "url-pw" not in r.reason and "hunter2-x" not in r.reason
    assert r.reason == "api exited: connect redis://:<redacted>@cache failed; password was <redacted>"

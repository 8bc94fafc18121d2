"""The agent's release ledger (SQLite under the per-node data dir), through its operations."""

import os
import sqlite3
import stat
import threading

import pytest

from agent import ledger as LG
from agent.fake import FakeEngine
from agent.operations import OPERATIONS, Context
from agent.protocol import AgentError

DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def run(tmp_path):
    engine = FakeEngine()

    def run(op, args):
        ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path / "state"))
        return OPERATIONS[op](ctx, args)

    run.path = os.path.join(str(tmp_path / "state"), "engines", "FAKE-ENGINE-1", LG.DB_NAME)
    return run


def rec(id=1, rev=1, status="deploying", env="prod", project="hello", **kw):
    r = {
        "project": project, "env": env, "id": id, "rev": rev, "status": status,
        "services": {"web": f"10.250.0.1:5000/hello/web@{DIGEST}"},
        "manifest": {"name": project, "services": {"web": {"image": f"10.250.0.1:5000/hello/web@{DIGEST}",
                                                           "environment": {"MODE": "prod"}}}},
        "project_hash": "ab" * 32, "performer": {"user": "ada", "host": "ci-1"},
        "created": "2024-01-01T00:00:00.000Z", "updated": "2024-01-01T00:00:00.000Z",
    }
    r.update(kw)
    return r


def test_put_then_get_and_list_round_trip(run):
    out = run("release_put", {"release": rec(source={"env": "test", "id": 12},
                                             lineage=[{"env": "test", "id": 12}, {"env": "dev", "id": 31}],
                                             verification={"ok": True, "results": []})})
    assert out == {"results": [{"project": "hello", "env": "prod", "id": 1, "stored": True, "rev": 1}], "stored": 1}
    got = run("release_get", {"env": "prod", "project": "hello", "id": 1})["release"]
    assert got["source"] == {"env": "test", "id": 12} and got["lineage"][1] == {"env": "dev", "id": 31}
    assert got["services"] == rec()["services"] and got["manifest"] == rec()["manifest"]
    assert got["verification"] == {"ok": True, "results": []} and got["approval"] is None
    assert run("release_get", {"env": "prod", "project": "hello", "id": 2})["release"] is None


def test_database_is_wal_private_and_under_the_engines_data_dir(run):
    run("release_put", {"release": rec()})
    assert os.path.exists(run.path)
    assert stat.S_IMODE(os.stat(run.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(run.path)).st_mode) == 0o700
    conn = sqlite3.connect(run.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LG.SCHEMA_VERSION


def test_put_is_idempotent_and_never_replaces_a_higher_revision(run):
    run("release_put", {"release": rec(rev=3, status="live", updated="2024-01-01T00:00:03.000Z")})
    again = run("release_put", {"release": rec(rev=3, status="live", updated="2024-01-01T00:00:03.000Z")})
    assert again["stored"] == 0
    stale = run("release_put", {"release": rec(rev=2, status="deploying", updated="2024-01-01T00:00:09.000Z")})
    assert stale["results"][0] == {"project": "hello", "env": "prod", "id": 1, "stored": False, "rev": 3}
    assert run("release_get", {"env": "prod", "project": "hello", "id": 1})["release"]["status"] == "live"
    newer = run("release_put", {"release": rec(rev=4, status="superseded", updated="2024-01-01T00:00:04.000Z")})
    assert newer["stored"] == 1
    assert run("release_get", {"env": "prod", "project": "hello", "id": 1})["release"]["status"] == "superseded"


def test_list_is_newest_first_with_limit_before_and_project_filter(run):
    run("release_put", {"releases": [rec(id=i) for i in range(1, 6)] + [rec(id=9, project="other")]})
    out = run("release_list", {"env": "prod", "project": "hello", "limit": 2})
    assert [r["id"] for r in out["releases"]] == [5, 4] and out["max_id"] == 5
    assert [r["id"] for r in run("release_list", {"env": "prod", "project": "hello", "before": 3})["releases"]] == [2, 1]
    assert run("release_list", {"env": "prod"})["max_id"] == 9
    assert run("release_list", {"env": "dev", "project": "hello"}) == {"releases": [], "max_id": 0}


def test_list_on_a_fresh_node_creates_nothing(run):
    assert run("release_list", {"env": "prod", "project": "hello"}) == {"releases": [], "max_id": 0}
    assert not os.path.exists(run.path)


def test_a_batch_is_one_transaction(run):
    with pytest.raises(AgentError):
        run("release_put", {"releases": [rec(id=1), rec(id=2, status="nonsense")]})
    assert run("release_list", {"env": "prod", "project": "hello"})["releases"] == []


@pytest.mark.parametrize("change,words", [
    ({"status": "done"}, "status 'done'"),
    ({"services": {"web": "busybox:latest"}}, "not pinned to a digest"),
    ({"project_hash": "XYZ"}, "project_hash"),
    ({"id": 0}, "id=0"),
    ({"surprise": 1}, "unknown keys: surprise"),
    ({"source": {"env": "test"}}, "source.id"),
    ({"manifest": {"services": {"db": {"environment": {"DB_PASSWORD": "hunter2"}}}}},
     "services.db.environment.DB_PASSWORD is in clear"),
    ({"manifest": {"secrets": {"key": {"content": "BEGIN KEY"}}}}, "secrets.key.content is in clear"),
])
def test_bad_records_are_refused_naming_the_problem(run, change, words):
    with pytest.raises(AgentError) as err:
        run("release_put", {"release": rec(**change)})
    assert err.value.kind == "bad_request" and words in err.value.message
    assert "hunter2" not in err.value.message


def test_redacted_secrets_are_accepted(run):
    m = {"services": {"db": {"environment": {"DB_PASSWORD": LG.REDACTED_PREFIX + "0123456789abcdef>", "MODE": "x"}}}}
    assert run("release_put", {"release": rec(manifest=m)})["stored"] == 1


def test_secret_key_names():
    for key in ("DB_PASSWORD", "password", "API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "SENTRY_DSN", "PGPASSWORD",
                "REDIS_PASS", "BASIC_AUTH", "PRIVATE_KEY", "passphrase", "MY_CREDENTIALS"):
        assert LG.looks_secret(key), key
    for key in ("MODE", "LOG_LEVEL", "PASSENGER_COUNT", "AUTHOR", "API_URL", "KEYBOARD", "HOST"):
        assert not LG.looks_secret(key), key


def test_concurrent_writers_from_several_connections(run):
    run("release_put", {"release": rec(id=1)})
    errors = []

    def writer(base):
        try:
            for i in range(10):
                run("release_put", {"release": rec(id=base + i)})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(100 * k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert run("release_list", {"env": "prod", "project": "hello", "limit": 100})["max_id"] == 409


def test_the_ledger_module_is_python39_compatible():
    import ast
    import pathlib

    for name in ("ledger.py", "lock.py"):
        src = (pathlib.Path(LG.__file__).parent / name).read_text()
        ast.parse(src, feature_version=(3, 9))

"""The agent's release ledger (SQLite under the per-node data dir), through its operations."""

import glob
import json
import os
import sqlite3
import stat
import threading

import pytest

from agent import ledger as LG
from agent.fake import FakeEngine
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError

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
])
def test_bad_records_are_refused_naming_the_problem(run, change, words):
    with pytest.raises(AgentError) as err:
        run("release_put", {"release": rec(**change)})
    assert err.value.kind == "bad_request" and words in err.value.message
    assert "hunter2" not in err.value.message


def test_redacted_secrets_are_accepted(run):
    m = {"services": {"db": {"environment": {"DB_PASSWORD": "<redacted sha256:0123456789abcdef>", "MODE": "x",
                                             "API_KEY": "<redacted>"}}}}
    assert run("release_put", {"release": rec(manifest=m)})["stored"] == 1
    assert run("release_get", {"env": "prod", "project": "hello", "id": 1})["release"]["manifest"] == m


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


# --------------------------------------------------------------------------- secrets (agent.wire.redact)

CLEAR = {"environment": {"DB_PASSWORD": "env-pw-1", "STRIPE_KEY": "sk-key-2",
                         "REDIS_URL": "redis://:redis-pw-3@cache:6379/0",
                         "MSSQL": "Server=db;User Id=sa;Password=conn-pw-4;"},
         "command": ["serve", "--password", "cmd-pw-5"],
         "labels": {"com.example.auth-token": "label-tok-6"},
         "healthcheck": {"test": ["CMD-SHELL", "check --api-key=hc-key-7"]}}


def ledger_bytes(run) -> bytes:
    return b"".join(open(p, "rb").read() for p in glob.glob(run.path + "*"))


def test_the_agent_stores_no_secret_whoever_sent_it(run):
    m = {"name": "hello", "services": {"api": dict(CLEAR, image="x@" + DIGEST)},
         "secrets": {"tls": {"content": "pem-body-8"}}}
    r = rec(manifest=m, extra={"base": m}, reason="failed: redis://:redis-pw-3@cache said no",
            verification={"ok": False, "results": [{"url": "http://u:verify-pw-9@web/"}]})
    run("release_put", {"release": r})
    data = ledger_bytes(run)
    for secret in ("env-pw-1", "sk-key-2", "redis-pw-3", "conn-pw-4", "cmd-pw-5", "label-tok-6", "hc-key-7",
                   "pem-body-8", "verify-pw-9"):
        assert secret.encode() not in data, secret
    got = run("release_get", {"env": "prod", "project": "hello", "id": 1})["release"]
    api = got["manifest"]["services"]["api"]
    assert api["environment"]["REDIS_URL"] == "redis://:<redacted>@cache:6379/0"
    assert api["environment"]["MSSQL"] == "Server=db;User Id=sa;Password=<redacted>;"
    assert got["extra"]["base"] == got["manifest"]


def test_no_digest_of_a_secret_is_stored(run):
    """Two releases differing only in their passwords are stored alike: nothing to guess from."""
    def manifest(pw):
        return {"name": "hello", "services": {"api": {"environment": {"DB_PASSWORD": pw,
                                                                      "URL": f"pg://u:{pw}@db/x"}}}}
    run("release_put", {"release": rec(id=1, manifest=manifest("first-pw"))})
    run("release_put", {"release": rec(id=2, manifest=manifest("second-pw"))})
    got = [run("release_get", {"env": "prod", "project": "hello", "id": i})["release"]["manifest"] for i in (1, 2)]
    assert got[0] == got[1] and b"<redacted sha" not in ledger_bytes(run)


# --------------------------------------------------------------------------- release ids (compare-and-set)


def test_an_id_is_never_given_to_another_release(run):
    first = rec(id=3, performer={"user": "ada", "host": "ci-1"})
    assert run("release_put", {"release": first})["stored"] == 1
    other = rec(id=3, rev=5, created="2024-02-02T00:00:00.000Z", updated="2024-02-02T00:00:00.000Z",
                performer={"user": "bob", "host": "laptop"})
    out = run("release_put", {"releases": [other, rec(id=4)]})
    res = {r["id"]: r for r in out["results"]}
    assert res[3]["stored"] is False and "another release" in res[3]["conflict"] and res[4]["stored"] is True
    got = run("release_get", {"env": "prod", "project": "hello", "id": 3})["release"]
    assert got["performer"]["user"] == "ada" and got["rev"] == 1
    # the same release's next revision is an update
    live = dict(first, rev=2, status="live", updated="2024-01-01T00:00:01.000Z")
    assert run("release_put", {"release": live})["stored"] == 1
    assert run("release_get", {"env": "prod", "project": "hello", "id": 3})["release"]["status"] == "live"


def test_rows_stored_in_clear_by_an_older_agent_are_masked_and_leave_the_file(run):
    """A node upgraded from schema 1 (its agent stored what the controller sent) keeps no
    secret in clear: the rows are masked on open, and the old bytes are not left in the
    file's free space nor in the WAL."""
    run("release_put", {"release": rec()})
    conn = sqlite3.connect(run.path)
    conn.execute("PRAGMA secure_delete=OFF")
    m = {"name": "hello", "services": {"api": {"environment": {"DB_PASSWORD": "old-clear-pw-1" * 40, "MODE": "x"}}}}
    conn.execute("UPDATE releases SET manifest=?, reason=? WHERE id=1",
                 (json.dumps(m), "failed: redis://:old-clear-pw-2@cache said no"))
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    assert b"old-clear-pw-1" in ledger_bytes(run)
    got = run("release_get", {"env": "prod", "project": "hello", "id": 1})["release"]
    assert got["manifest"]["services"]["api"]["environment"] == {"DB_PASSWORD": "<redacted>", "MODE": "x"}
    assert got["reason"] == "failed: redis://:<redacted>@cache said no"
    data = ledger_bytes(run)
    assert b"old-clear-pw-1" not in data and b"old-clear-pw-2" not in data
    # the rule is applied once: the release keeps its identity for the next revision
    assert run("release_put", {"release": rec(rev=2, status="live", updated="2024-01-01T00:00:01.000Z")})["stored"] == 1

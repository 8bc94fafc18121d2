"""The release ledger and the deploy lock on the lab's two prod nodes.

Every test uses its own project name (ledger) or its own environment name (lock: a
copy of prod's node list under the name e2elock<random>), so it never gets in the
way of a real deploy to prod. Controllers holding the lock are real processes, killed
with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.core import releases as R
from orchestrator.io import ledger as RL
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle
from orchestrator.core.environments import load_environment
from orchestrator.errors import LockHeld
from orchestrator.io.lock import LockHolder, acquire_lock, lock_status

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ORCH = str(Path(sys.executable).parent / "orch")
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def prod_env():
    return load_environment("prod", ROOT / "environments")


@pytest.fixture(scope="module")
def prod(prod_env):
    conns = T.connect_all(list(prod_env.nodes), T.options_from_env(prod_env))
    sessions = T.open_sessions(conns, current_bundle())
    yield {"conns": conns, "sessions": sessions}
    for s in sessions.values():
        s.close()
    T.close_all(conns)


# --------------------------------------------------------------------------- ledger


def manifest(tag: str) -> dict:
    return {"name": "x", "services": {"web": {"image": f"10.250.0.1:5000/x/web@{DIGEST}",
                                              "environment": {"TAG": tag, "DB_PASSWORD": "hunter2-e2e"}}}}


def test_releases_are_recorded_on_both_prod_nodes(prod):
    project = "e2eledger" + uuid.uuid4().hex[:6]
    sessions = prod["sessions"]
    ledger = RL.ReleaseLedger(sessions, project, "prod")
    who = RL.detect_performer()
    dev = R.Release(project, "dev", 31, "live", {"web": f"r/x@{DIGEST}"}, {}, "ab" * 32, {}, "t", "t")
    test = R.Release(project, "test", 12, "live", {"web": f"r/x@{DIGEST}"}, {}, "ab" * 32, {}, "t", "t",
                     source=dev.ref, lineage=(dev.ref,))
    r1 = R.new_release(ledger.history(), services={"web": f"10.250.0.1:5000/x/web@{DIGEST}"}, manifest=manifest("1"),
                       performer=who, command="promote", source=test)
    assert ledger.write(r1).stored_on == ["prod-1", "prod-2"]
    ledger.write(*R.mark_live(ledger.history(), r1))
    r2 = R.new_release(ledger.history(), services={"web": f"10.250.0.1:5000/x/web@{DIGEST}"}, manifest=manifest("2"),
                       performer=who)
    ledger.write(r2)
    ledger.write(*R.mark_live(ledger.history(), r2))

    per_node = {n: s.call("release_list", {"env": "prod", "project": project}) for n, s in sessions.items()}
    for node, answer in per_node.items():
        assert [(r["id"], r["status"]) for r in answer["releases"]] == [(2, "live"), (1, "superseded")], node
        assert answer["releases"][1]["lineage"] == [{"env": "test", "id": 12}, {"env": "dev", "id": 31}]
    h = ledger.history()
    assert h.get(1).lineage_text() == "prod #1 <- test #12 <- dev #31"
    assert R.diff_releases(h.get(1), h.get(2)).summary() == "web (config)"

    # Each node keeps its own SQLite file (WAL) under its engine's data dir; no secret in clear.
    info = {n: s.call("info") for n, s in sessions.items()}
    paths = {n: f"/var/lib/orch-agent/engines/{i['engine']['id'].replace(':', '-')}/ledger.sqlite3"
             for n, i in info.items()}
    assert len(set(paths.values())) == 2
    for node, path in paths.items():
        conn = prod["conns"][node]
        out = conn.run(["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                        "print(c.execute('PRAGMA journal_mode').fetchone()[0])", path], check=True)
        assert out.stdout.strip() == "wal"
        stored = conn.run(["cat", path, path + "-wal"]).stdout
        assert "hunter2-e2e" not in stored and "<redacted>" in stored


def test_a_row_an_older_agent_stored_in_clear_is_masked_on_the_node(prod):
    """A node upgraded from ledger schema 1 (its agent stored what the controller sent): the
    next request of the current agent masks the row, and the file and WAL keep no trace."""
    project = "e2eschema1" + uuid.uuid4().hex[:6]
    sessions = prod["sessions"]
    ledger = RL.ReleaseLedger({"prod-1": sessions["prod-1"]}, project, "prod")
    ledger.write(R.new_release(ledger.history(), services={"web": f"r/x@{DIGEST}"}, manifest=manifest("1"),
                               performer=RL.detect_performer()))
    info = sessions["prod-1"].call("info")
    path = f"/var/lib/orch-agent/engines/{info['engine']['id'].replace(':', '-')}/ledger.sqlite3"
    clear = json.dumps({"name": "x", "services": {"web": {"environment": {"DB_PASSWORD": "old-clear-e2e"}}}})
    conn = prod["conns"]["prod-1"]
    conn.run(["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
              "c.execute('PRAGMA secure_delete=OFF'); "
              "c.execute('UPDATE releases SET manifest=? WHERE project=?', (sys.argv[2], sys.argv[3])); "
              "c.execute('PRAGMA user_version=1'); c.commit()", path, clear, project], check=True)
    assert "old-clear-e2e" in conn.run(["cat", path, path + "-wal"]).stdout  # as an older agent left it
    got = sessions["prod-1"].call("release_get", {"env": "prod", "project": project, "id": 1})["release"]
    assert got["manifest"]["services"]["web"]["environment"]["DB_PASSWORD"] == "<redacted>"
    assert "old-clear-e2e" not in conn.run(["cat", path, path + "-wal"]).stdout


def test_a_node_that_missed_a_write_is_repaired_by_the_next(prod):
    project = "e2erepair" + uuid.uuid4().hex[:6]
    sessions = prod["sessions"]
    # Release 1 reached prod-1 only (say prod-2 was unreachable at that moment).
    only_one = RL.ReleaseLedger({"prod-1": sessions["prod-1"]}, project, "prod")
    r1 = R.new_release(only_one.history(), services={"web": f"r/x@{DIGEST}"}, manifest=manifest("1"),
                       performer=RL.detect_performer())
    only_one.write(r1)
    ledger = RL.ReleaseLedger(sessions, project, "prod")
    h = ledger.history()
    assert [r.id for r in h.stale()["prod-2"]] == [1] and h.next_id() == 2
    ledger.write(R.new_release(h, services={"web": f"r/x@{DIGEST}"}, manifest=manifest("2"),
                               performer=RL.detect_performer()))
    ids = [r["id"] for r in sessions["prod-2"].call("release_list", {"env": "prod", "project": project})["releases"]]
    assert ids == [2, 1]


def test_orch_history_reads_the_nodes(prod, tmp_path):
    project = "e2ehist" + uuid.uuid4().hex[:6]
    ledger = RL.ReleaseLedger(prod["sessions"], project, "prod")
    r1 = R.new_release(ledger.history(), services={"web": f"r/x@{DIGEST}"}, manifest=manifest("1"),
                       performer=RL.detect_performer())
    ledger.write(*R.mark_live(ledger.history(), r1))
    cp = subprocess.run([ORCH, "history", "--env", "prod", "-p", project, "--environments", str(ROOT / "environments"),
                         "--json"], capture_output=True, text=True, timeout=600)  # a hang guard
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert [(r["id"], r["status"], r["lineage_text"]) for r in doc["releases"]] == [(1, "live", "prod #1")]
    assert doc["releases"][0]["changes"]["summary"] == "+web"
    cp = subprocess.run([ORCH, "history", "--env", "prod", "-p", project, "--environments", str(ROOT / "environments"),
                         "--text"], capture_output=True, text=True, timeout=600)  # a hang guard
    assert cp.returncode == 0 and "#1  live" in cp.stdout and "hunter2-e2e" not in cp.stdout


# --------------------------------------------------------------------------- lock

HOLDER_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, %(root)r)
    from orchestrator.io import transport as T
    from orchestrator.io.agent_bundle import current_bundle
    from orchestrator.core.environments import load_environment
    from orchestrator.errors import LockHeld
    from orchestrator.io.lock import LockHolder, acquire_lock

    env_name, lock_env, hold, wait = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    from pathlib import Path
    env = load_environment(env_name, Path(%(envs)r))
    conns = T.connect_all(list(env.nodes), T.options_from_env(env))
    sessions = T.open_sessions(conns, current_bundle(), require_engine=False)
    print("READY", flush=True)
    try:
        lock = acquire_lock(lock_env, sessions, LockHolder.current("orch up --env " + lock_env), wait=wait)
    except LockHeld as err:
        print("LOCKED " + err.render(), flush=True)
        sys.exit(err.exit_code)
    print("ACQUIRED", flush=True)
    if hold < 0:
        sys.stdin.readline()  # hold until the test says so
    else:
        time.sleep(hold)
    lock.release()
    print("RELEASED", flush=True)
""")


@pytest.fixture
def lock_env():
    return "e2elock" + uuid.uuid4().hex[:6]


@pytest.fixture
def controller(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER_SCRIPT % {"root": str(ROOT), "envs": str(ROOT / "environments")})
    procs = []

    def start(lock_env, hold=600.0, wait=0.0, ci_job="https://ci.example/jobs/42"):
        env = {**os.environ, "GITLAB_CI": "true", "CI_JOB_URL": ci_job, "GITLAB_USER_LOGIN": "e2e"}
        p = subprocess.Popen([sys.executable, str(script), "prod", lock_env, str(hold), str(wait)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def wait_for(p, word, timeout=300):  # a wait (a hang guard), not a speed check
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(word):
            return line
    raise AssertionError(f"no {word!r} from the controller: {lines} {p.stderr.read() if p.poll() is not None else ''}")


@pytest.fixture
def lock_sessions(prod):
    sessions = T.open_sessions(prod["conns"], current_bundle(), require_engine=False)
    yield sessions
    for s in sessions.values():
        s.close()


def test_second_controller_is_refused_naming_the_holder(controller, lock_env, lock_sessions):
    holder = controller(lock_env)
    wait_for(holder, "ACQUIRED")
    with pytest.raises(LockHeld) as err:
        acquire_lock(lock_env, lock_sessions, LockHolder.current("orch up --env " + lock_env))
    e = err.value
    assert e.exit_code == 4
    h = e.details["holder"]
    assert h["command"] == f"orch up --env {lock_env}" and h["ci_job"] == "https://ci.example/jobs/42"
    assert h["pid"] == holder.pid and h["started"]
    text = e.render()
    assert f"running `orch up --env {lock_env}` since {h['started']}" in text and "CI job https://ci.example/jobs/42" in text
    st = lock_status(lock_env, lock_sessions)
    assert st.held and [n.node for n in st.nodes if n.held] == ["prod-1", "prod-2"]


def agent_gone(conn, pid):
    """Has agent process `pid` on the node ended (no such process, or a zombie)?"""
    out = conn.run(["cat", f"/proc/{pid}/stat"])
    return out.exit_code != 0 or out.stdout.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_sigkilled_controller_frees_the_lock_at_once(controller, lock_env, lock_sessions, prod):
    holder = controller(lock_env)
    wait_for(holder, "ACQUIRED")
    assert lock_status(lock_env, lock_sessions).held
    # The agent processes that hold the flock for the controller, one per node.
    agents = {node: s.call("lock_status", {"env": lock_env})["holder"]["agent_pid"]
              for node, s in lock_sessions.items()}
    assert all(not agent_gone(prod["conns"][node], pid) for node, pid in agents.items()), agents
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(60)
    # Its agents see their SSH channel close and end: no lease, no timeout to run out.
    deadline = time.monotonic() + 120  # a wait for the agents to end, not a speed check
    while not all(agent_gone(prod["conns"][node], pid) for node, pid in agents.items()):
        assert time.monotonic() < deadline, (
            f"the SIGKILLed controller's agents {agents} still run 120 s later: their channel's end "
            "did not end them, so the lock stays held")
        time.sleep(0.1)
    # At once: the moment those processes are gone the lock is free, on every node, with
    # nothing left to clean up; a controller that will not wait (wait=0) takes it.
    st = lock_status(lock_env, lock_sessions)
    assert not st.held and all(not n.held and n.holder is None for n in st.nodes), st
    lock = acquire_lock(lock_env, lock_sessions, LockHolder.current("orch up --env " + lock_env), wait=0)
    assert lock.held == ["prod-1", "prod-2"]
    lock.release()
    assert not lock_status(lock_env, lock_sessions).held


def test_lock_wait_waits_for_the_holder(controller, lock_env, lock_sessions):
    holder = controller(lock_env, hold=-1)  # holds until told to release
    wait_for(holder, "ACQUIRED")
    waits = []

    def on_wait(node, h, waited):
        waits.append((node, h.pid if h else None))
        if len(waits) == 1:  # we are waiting: now let the holder go
            holder.stdin.write("release\n")
            holder.stdin.flush()

    # (wait=600: how long it may wait, a hang guard; the holder releases once we wait)
    lock = acquire_lock(lock_env, lock_sessions, LockHolder.current("orch up"), wait=600, on_wait=on_wait)
    try:
        # it waited, on the first node, for that holder; it got the lock once it was released
        assert waits and waits[0] == ("prod-1", holder.pid), waits
        assert lock.held == ["prod-1", "prod-2"]
        wait_for(holder, "RELEASED")
        assert holder.wait(60) == 0
    finally:
        lock.release()


def test_two_controllers_at_once_exactly_one_gets_it(controller, lock_env):
    a, b = controller(lock_env), controller(lock_env)  # the winner holds it until the test ends
    wait_for(a, "READY")
    wait_for(b, "READY")
    outcomes = {}
    for p in (a, b):
        line = p.stdout.readline()
        outcomes[p.pid] = line
    got = [pid for pid, line in outcomes.items() if line.startswith("ACQUIRED")]
    refused = [p for p in (a, b) if outcomes[p.pid].startswith("LOCKED")]
    assert len(got) == 1 and len(refused) == 1, outcomes
    assert refused[0].wait(30) == 4 and "is locked by" in outcomes[refused[0].pid]


def test_orch_lock_status(controller, lock_env, tmp_path):
    envs = tmp_path / "environments"
    envs.mkdir()
    text = (ROOT / "environments" / "prod.yaml").read_text().replace("\nname: prod\n", f"\nname: {lock_env}\n")
    (envs / f"{lock_env}.yaml").write_text(text)
    cmd = [ORCH, "lock", "status", "--env", lock_env, "--environments", str(envs)]
    cp = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=600)  # a hang guard
    assert cp.returncode == 0 and json.loads(cp.stdout)["held"] is False, cp.stderr
    holder = controller(lock_env)
    wait_for(holder, "ACQUIRED")
    cp = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=600)  # a hang guard
    doc = json.loads(cp.stdout)
    assert doc["held"] and doc["holder"]["command"] == f"orch up --env {lock_env}"
    assert doc["holder"]["ci_job"] == "https://ci.example/jobs/42"
    cp = subprocess.run(cmd + ["--text"], capture_output=True, text=True, timeout=600)  # a hang guard
    assert f"environment {lock_env}: locked by" in cp.stdout and "(on prod-1, prod-2)" in cp.stdout

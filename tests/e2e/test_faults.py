"""Faults and bad input, end to end on the lab (DEV, node dev-1).

- a node unreachable before anything starts (a node on the lab subnet that nobody
  listens on, 10.250.0.99): fails naming the node and the cause; nothing touched;
- an unknown host key: refused with the trust command; nothing touched;
- a container that exits, and one that never becomes healthy: the command fails naming
  service, replica, node and the container's last 20 log lines; dependents not started;
- the agent killed mid-apply: re-running `orch up` converges.

Python3 or Docker missing on a node is covered at the transport level, against a real
sshd, in tests/unit/test_transport_ssh.py (test_missing_python_is_a_node_requirement_error,
and the "Docker Engine is not usable" check of test_agent_is_uploaded_once_and_answers_hello),
and through the deploy path in tests/unit/test_deploy.py
(test_docker_missing_on_a_node_fails_before_anything_with_the_fix).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import threading
import time
import uuid

import pytest

from .helpers import env_file, last_json

pytestmark = pytest.mark.e2e


class App:
    def __init__(self, orch, tmp, compose: str, environments):
        self.run_orch = orch
        self.dir = tmp
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "compose.yaml").write_text(textwrap.dedent(compose))
        self.environments = environments
        self.project = "e2e-fault-" + uuid.uuid4().hex[:6]

    def args(self, command, *rest):
        return [command, "--env", "dev", "--environments", str(self.environments),
                "--file", str(self.dir / "compose.yaml"), "-p", self.project, *rest]

    def orch(self, command, *rest, check=False, timeout=600):
        return self.run_orch(*self.args(command, *rest), check=check, timeout=timeout)

    def ps(self):
        return last_json(self.orch("ps", "--json", check=True).stdout)["containers"]


def untouched(ssh, project):
    node = ssh("dev-1")
    for kind in ("ps -a", "network ls", "volume ls"):
        out = node.check(f"docker {kind} -q --filter label=io.orch.project={project}")
        assert out.strip() == "", f"{kind}: {out}"


SIMPLE = """\
services:
  web:
    image: busybox
    init: true
    command: ["sleep", "3600"]
"""


@pytest.fixture
def real_env(lab, tmp_path):
    return env_file(tmp_path / "environments", lab)


def test_unreachable_node_fails_naming_it_and_touches_nothing(orch, lab, ssh, tmp_path):
    envs = env_file(tmp_path / "environments", lab, extra_nodes=[("ghost-1", "10.250.0.99")], connect_timeout=2)
    app = App(orch, tmp_path / "app", SIMPLE, envs)
    cp = app.orch("up", "--json")  # (App.orch's timeout of 600 s is a hang guard, not a speed check)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "ghost-1 (10.250.0.99:22)" in cp.stderr
    # Fails fast = each attempt is bounded by the environment's ssh.connect_timeout (2 s
    # here), not by the kernel's TCP timeout of minutes: a timeout names the value it used.
    # (Or the kernel already knows the address does not answer ARP: no route to host.)
    assert ("ghost-1 (10.250.0.99:22): timed out after 2s" in cp.stderr
            or "ghost-1 (10.250.0.99:22): no route to host" in cp.stderr), cp.stderr
    assert "nothing was changed on any node" in cp.stderr
    final = last_json(cp.stdout)
    assert final["status"] == "failed" and "ghost-1" in final["error"]["message"]
    assert final["error"]["kind"] == "NodesUnreachable"
    assert {n: f["kind"] for n, f in final["error"]["details"]["nodes"].items()} == {"ghost-1": "HostUnreachable"}
    # it failed at the connection: no agent session, lock or apply was started anywhere
    assert not [e for e in map(json.loads, (ln for ln in cp.stdout.splitlines() if ln.startswith('{"event"')))
                if e.get("phase") in ("lock", "apply") or e.get("event") in ("locked", "agent")]
    untouched(ssh, app.project)


def test_unknown_host_key_is_refused_with_the_trust_command(orch, lab, ssh, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    envs = env_file(tmp_path / "environments", lab, known_hosts=empty)
    app = App(orch, tmp_path / "app", SIMPLE, envs)
    cp = app.orch("up")
    assert cp.returncode == 1
    assert "dev-1" in cp.stderr and "unknown host key" in cp.stderr
    assert "orch nodes trust --env dev" in cp.stderr
    untouched(ssh, app.project)


FAILING = """\
services:
  bad:
    image: busybox
    restart: "no"
    command: ["sh", "-c", "i=1; while [ $$i -le 30 ]; do echo line $$i; i=$$((i+1)); done; exit 3"]
  after:
    image: busybox
    init: true
    command: ["sleep", "3600"]
    depends_on:
      bad: {condition: service_completed_successfully}
"""


def test_container_that_exits_fails_with_its_last_20_log_lines_and_dependents_not_started(orch, real_env, tmp_path):
    app = App(orch, tmp_path / "app", FAILING, real_env)
    try:
        cp = app.orch("up", "--json")
        assert cp.returncode == 1, cp.stdout + cp.stderr
        err = cp.stderr
        assert "failed on node dev-1" in err and "service bad replica 1" in err and "exited with code 3" in err
        assert f"Last 20 log lines of {app.project}-bad-1" in err
        assert "| line 30" in err and "| line 11" in err and "| line 10\n" not in err
        assert "Not started: after." in err
        details = last_json(cp.stdout)["error"]["details"]
        assert (details["service"], details["replica"], details["node"]) == ("bad", 1, "dev-1")
        assert len(details["logs"]) == 20
        assert [c["service"] for c in app.ps()] == ["bad"]
    finally:
        app.orch("down", "--volumes")


JOB = """\
services:
  migrate:
    image: busybox
    restart: "no"
    command: ["sh", "-c", "echo migrating RUN"]
  app:
    image: busybox
    init: true
    command: ["sleep", "3600"]
    depends_on:
      migrate: {condition: service_completed_successfully}
"""


def test_a_replaced_job_that_ran_to_completion_is_done_not_a_failed_update(orch, real_env, tmp_path):
    # A one-shot (restart "no", a migration) replaced by a release exits 0 before the update
    # ends: the end-of-update check must take that as done, not roll the release back.
    app = App(orch, tmp_path / "app", JOB.replace("RUN", "1"), real_env)
    try:
        assert app.orch("up").returncode == 0
        first = {c["service"]: c["id"] for c in app.ps()}
        (app.dir / "compose.yaml").write_text(JOB.replace("RUN", "2"))
        cp = app.orch("up", "--json")
        assert cp.returncode == 0, cp.stdout[-2000:] + cp.stderr
        assert sorted(last_json(cp.stdout)["changed"]) == ["migrate"]
        now = {c["service"]: c for c in app.ps()}
        assert now["migrate"]["id"] != first["migrate"] and now["migrate"]["state"] == "exited"
        assert now["app"]["state"] == "running"
    finally:
        app.orch("down", "--volumes")


BRIEF = """\
services:
  brief:
    image: busybox
    init: true
    restart: "no"
    command: ["sh", "-c", "sleep 0.8; exit 4"]
"""


def test_a_crash_within_1s_fails_the_deploy_unless_min_healthy_time_is_0s(orch, real_env, tmp_path):
    # orch's crash-at-start guard: a container without a healthcheck must have run 1 s.
    app = App(orch, tmp_path / "app", BRIEF, real_env)
    try:
        cp = app.orch("up", "--json")
        assert cp.returncode == 1, cp.stdout[-2000:] + cp.stderr
        assert "exited with code 4" in cp.stderr
        app.orch("down")
        # `x-orch.min_healthy_time: 0s`: ready once it runs, as docker compose up --wait.
        (app.dir / "compose.yaml").write_text(BRIEF + "    x-orch: {min_healthy_time: 0s}\n")
        cp = app.orch("up", "--json")
        assert cp.returncode == 0, cp.stdout[-2000:] + cp.stderr
        assert [(c["service"], c["state"]) for c in last_json(cp.stdout)["containers"]] == [("brief", "running")]
    finally:
        app.orch("down", "--volumes")


UNHEALTHY = """\
services:
  sick:
    image: busybox
    init: true
    command: ["sh", "-c", "echo starting sick; exec sleep 3600"]
    healthcheck: {test: ["CMD", "false"], interval: 1s, timeout: 1s, retries: 2}
  after:
    image: busybox
    init: true
    command: ["sleep", "3600"]
    depends_on:
      sick: {condition: service_healthy}
"""


def test_never_healthy_fails_within_its_budget_naming_service_replica_node(orch, real_env, tmp_path):
    app = App(orch, tmp_path / "app", UNHEALTHY, real_env)
    try:
        cp = app.orch("up", "--json")
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert "service sick replica 1" in cp.stderr and "failed on node dev-1" in cp.stderr
        assert "unhealthy" in cp.stderr and "| starting sick" in cp.stderr
        assert "Not started: after." in cp.stderr
        # failed on Docker's verdict after its retries (2; the agent may read the container a
        # probe later on a busy machine), not on a long timeout (no wall-clock bound: the
        # lab's machine may be busy)
        streak = re.search(r"is unhealthy: healthcheck failed (\d+) times in a row", cp.stderr)
        assert streak and int(streak.group(1)) >= 2, cp.stderr
        assert [c["service"] for c in app.ps()] == ["sick"]
    finally:
        app.orch("down", "--volumes")


SLOW = """\
services:
  slow:
    image: busybox
    init: true
    stop_grace_period: 1s
    command: ["sh", "-c", "sleep 8; touch /tmp/ready; exec sleep 3600"]
    healthcheck: {test: ["CMD", "test", "-f", "/tmp/ready"], interval: 1s, timeout: 1s, retries: 40}
  next:
    image: busybox
    init: true
    command: ["sleep", "3600"]
    depends_on:
      slow: {condition: service_healthy}
"""


def test_agent_killed_mid_apply_then_rerun_converges(orch, lab, ssh, real_env, tmp_path):
    from .conftest import ORCH

    app = App(orch, tmp_path / "app", SLOW, real_env)
    proc = subprocess.Popen([ORCH, *app.args("up", "--json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    events: list[dict] = []

    def read():
        for line in proc.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = [e for e in events if e.get("event") == "agent" and e.get("service") == "slow"
                       and e.get("type") == "container.start"]
            if started:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        assert started, events
        pids = sorted({e["pid"] for e in events if e.get("event") == "session" and e.get("node") == "dev-1"})
        assert pids
        node = ssh("dev-1")
        for pid in pids:  # this command's agents only: their pids came from its own hello
            node.run(f"kill -9 {pid}")
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert code == 1
    final = events[-1]
    assert final["status"] == "failed" and "the agent stopped" in final["error"]["message"]
    assert "while applying slow" in final["error"]["message"]
    try:
        again = app.orch("up", "--json", check=True)
        res = last_json(again.stdout)
        assert res["status"] == "ok"
        rows = {c["service"]: c for c in res["containers"]}
        assert rows["slow"]["health"] == "healthy" and rows["next"]["state"] == "running"
        assert len(app.ps()) == 2  # no duplicate left behind
        third = last_json(app.orch("up", "--json", check=True).stdout)
        assert third["noop"] is True
    finally:
        app.orch("down", "--volumes")

"""Rolling updates, the ingress and automatic rollback, end to end on PROD (two lab nodes).

The app: `api` (wave 1) and `web` (wave 2, replicas over prod-1 and prod-2, behind each
node's HAProxy ingress on WEB_PORT, start-first, parallelism 1). Each answer says which
version served it. A load from this host (30 requests/s per node, a new connection
each, every answer checked) runs while versions change:

- a new version rolls out with 0 failed requests, and every request sent after the
  deploy returned is answered by the new version;
- a version whose containers never become healthy is rolled back by itself (exit 1),
  with 0 failed requests; ps shows the previous release's containers (same ids), and
  history shows the failed release with its cause; api, updated in wave 1 of the same
  release, is back too;
- stop-first and start-first are told apart by the agent's events; parallelism 2 with
  4 replicas replaces 2 at a time (by the events' batch numbers);
- a release that takes web off the ingress and fails gets the frontend back;
- a controller killed mid-rollout: the next one waits for its agents' put-back, then
  converges;
- a node lost mid-rollout (its engine and sshd stopped): the command fails naming it,
  the other node is back on the previous release, and after the node returns a re-run
  converges.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from .conftest import LOCK_WAIT, ORCH
from .helpers import Load, get, last_json

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RATE_PER_NODE = 30.0  # 60 requests/s in all

COMPOSE = """\
name: roll
x-httpd: &httpd
  image: busybox
  init: true
  stop_grace_period: 2s
services:
  api:
    <<: *httpd
    command: ["sh", "-c", "mkdir -p /srv && echo api-$${VERSION} > /srv/index.html && echo api $${VERSION} up && exec httpd -f -p 9000 -h /srv"]
    environment: {VERSION: "${VERSION:-1}"}
    ports: ["${API_PORT}:9000"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9000/"]
      interval: 1s
      timeout: 2s
      retries: 3
  web:
    <<: *httpd
    command: ["sh", "-c", "sleep $${START_DELAY}; mkdir -p /srv && echo web-$${VERSION} > /srv/index.html && echo web $${VERSION} up && exec httpd -f -p 80 -h /srv"]
    environment: {VERSION: "${VERSION:-1}", BROKEN: "${BROKEN:-no}", START_DELAY: "${START_DELAY:-0}"}
    ports: ["${WEB_PORT}:80"]
    healthcheck:
      test: ["CMD-SHELL", "[ \\"$$BROKEN\\" != yes ] && wget -q -O /dev/null http://127.0.0.1:80/"]
      interval: 1s
      timeout: 2s
      retries: 3
      start_period: ${START_PERIOD:-0s}
    depends_on: {api: {condition: service_healthy}}
    deploy:
      replicas: ${REPLICAS:-2}
      update_config:
        parallelism: ${PARALLELISM:-1}
        order: ${ORDER:-start-first}
        monitor: 1s
    x-orch:
      ingress: {port: "${WEB_PORT}", health: {path: /, interval: 500ms, rise: 2, fall: 2}}
"""


class Roll:
    def __init__(self, tmp: Path):
        self.dir = tmp
        (tmp / "environments").mkdir(parents=True)
        shutil.copy(ROOT / "environments" / "prod.yaml", tmp / "environments" / "prod.yaml")
        (tmp / "compose.yaml").write_text(textwrap.dedent(COMPOSE))
        self.project = f"e2e-roll-{uuid.uuid4().hex[:6]}"
        base = random.randint(400, 499) * 100
        self.vars = {"WEB_PORT": str(base), "API_PORT": str(base + 1)}

        # The same app with web publishing its port itself (no x-orch ingress).
        direct = textwrap.dedent(COMPOSE).split("    x-orch:\n")[0]
        assert "ingress" not in direct
        (tmp / "compose-direct.yaml").write_text(direct)
        self.compose = "compose.yaml"

    def argv(self, command: str, *rest: str) -> list[str]:
        return [ORCH, command, "--env", "prod", "--file", str(self.dir / self.compose), "-p", self.project, *rest]

    def env(self, **variables: str) -> dict:
        return {**os.environ, **LOCK_WAIT, **self.vars, **variables}

    def run(self, command: str, *rest: str, check: bool = True, **variables: str) -> subprocess.CompletedProcess:
        cp = subprocess.run(self.argv(command, *rest), capture_output=True, text=True, timeout=900,
                            env=self.env(**variables))
        if check and cp.returncode != 0:
            pytest.fail(f"orch {command} exited {cp.returncode}:\n{cp.stdout[-4000:]}\n{cp.stderr[-4000:]}")
        return cp

    def up(self, check: bool = True, **variables: str) -> tuple[int, dict, list[dict]]:
        cp = self.run("up", "--json", "--watch", check=check, **variables)
        lines = [json.loads(ln) for ln in cp.stdout.splitlines() if ln.startswith("{")]
        return cp.returncode, lines[-1], lines[:-1]

    def ps(self) -> list[dict]:
        return last_json(self.run("ps", "--json").stdout)["containers"]

    def web(self) -> dict[str, dict]:
        return {c["name"]: c for c in self.ps() if c["service"] == "web"}

    def down(self) -> None:
        self.run("down", "--json", check=False)


@pytest.fixture(scope="module")
def roll(lab, tmp_path_factory):
    app = Roll(tmp_path_factory.mktemp("roll"))
    code, final, _ = app.up(VERSION="1")
    assert code == 0, final
    yield app
    app.down()


def loads(lab, port: int) -> list[Load]:
    return [Load(lab.node(n).address, port, RATE_PER_NODE).start() for n in ("prod-1", "prod-2")]


def stop(running: list[Load]) -> list[tuple]:
    results = []
    for load in running:
        results += [(load.host,) + r for r in load.stop()]
    return results


def agent_events(events: list[dict], service: str = "web") -> list[dict]:
    return [e for e in events if e.get("event") == "agent" and e.get("service") == service]


def test_new_version_rolls_out_under_load_without_a_failed_request(roll, lab):
    port = int(roll.vars["WEB_PORT"])
    for n in ("prod-1", "prod-2"):
        assert get(lab.node(n).address, port) == (200, "web-1\n")
    running = loads(lab, port)
    time.sleep(1)
    code, final, events = roll.up(VERSION="2")
    done_at = time.monotonic()
    time.sleep(1)
    results = stop(running)
    assert code == 0 and final["status"] == "ok", final
    failed = [r for r in results if r[4]]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    seconds = max(load.seconds for load in running)
    assert len(results) / seconds >= 50, f"only {len(results) / seconds:.0f} requests/s"
    late = [r for r in results if r[1] > done_at]
    assert late and all(r[3] == "web-2\n" for r in late)
    # the switch happened during the deploy, on both nodes, one batch after the other
    for host in {r[0] for r in results}:
        assert any(r[3] == "web-2\n" and r[1] < done_at for r in results if r[0] == host)
    batches = [e for e in events if e.get("event") == "batch" and e["service"] == "web"]
    assert [[(r["node"], r["replica"]) for r in b["replicas"]] for b in batches] == [
        [("prod-1", 1)], [("prod-2", 2)]]
    assert final["addresses"]["web"] == sorted(f"{lab.node(n).address}:{port}" for n in ("prod-1", "prod-2"))
    # nothing of the previous release is left once the release is live
    assert sorted(roll.web()) == [f"{roll.project}-web-1", f"{roll.project}-web-2"]
    # the ingress is part of ps and nodes check
    ps = last_json(roll.run("ps", "--json").stdout)
    assert [(r["service"], r["node"], r["port"], r["status"]) for r in ps["ingress"]] == [
        ("web", "prod-1", port, "OPEN"), ("web", "prod-2", port, "OPEN")]
    assert all([x["status"] for x in r["servers"]] == ["UP"] for r in ps["ingress"])
    text = roll.run("ps", "--text").stdout
    assert "INGRESS" in text and "1/1 up" in text
    check = json.loads(subprocess.run([ORCH, "nodes", "check", "--env", "prod", "--environments",
                                       str(roll.dir / "environments"), "--json"], capture_output=True, text=True,
                                      timeout=120).stdout)
    for node in check["nodes"]:
        mine = [f for f in node["ingress"]["frontends"] if f["project"] == roll.project]
        assert node["ingress"]["running"] and mine == [{"project": roll.project, "service": "web", "port": port,
                                                        "status": "OPEN", "servers": 1, "servers_up": 1}]


def test_unhealthy_release_rolls_back_by_itself_under_load(roll, lab):
    port = int(roll.vars["WEB_PORT"])
    before = {c["name"]: (c["id"], c["release"]) for c in roll.ps()}
    history = last_json(roll.run("history", "--json").stdout)
    live = next(r for r in history["releases"] if r["status"] == "live")
    running = loads(lab, port)
    time.sleep(1)
    code, final, events = roll.up(check=False, VERSION="3", BROKEN="yes")
    time.sleep(1)
    results = stop(running)
    assert code == 1, final
    error = final["error"]
    assert final["status"] == "failed" and error["details"]["rolled_back"] is True
    text = error["message"]
    assert "service web replica 1" in text and "is unhealthy" in text and "prod-1" in text
    assert "Last " in text and "web 3 up" in text  # the failed container's log lines
    failed = [r for r in results if r[4]]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert {r[3] for r in results} == {"web-2\n"}  # the broken version never took a request
    # the previous release's very containers run again (api of wave 1 included)
    after = {c["name"]: (c["id"], c["release"]) for c in roll.ps()}
    assert after == before and {rel for _, rel in after.values()} == {str(live["id"])}
    history = last_json(roll.run("history", "--json").stdout)
    newest = history["releases"][0]
    assert newest["status"] == "failed" and "is unhealthy" in newest["reason"] and "Rolled back" in newest["reason"]
    assert next(r for r in history["releases"] if r["status"] == "live")["id"] == live["id"]
    kinds = [e["type"] for e in agent_events(events, "api")]
    assert "container.restore" in kinds  # wave 1 was put back too


def test_a_failed_move_off_the_ingress_gets_the_frontend_back(roll, lab):
    """A release that takes web off the ingress (its port published directly) and whose
    containers never become healthy: the rollback brings the ingress back on both nodes,
    serving the previous release's containers."""
    port = int(roll.vars["WEB_PORT"])
    before = {c["name"]: c["id"] for c in roll.ps()}
    roll.compose = "compose-direct.yaml"
    try:
        code, final, events = roll.up(check=False, VERSION="4", BROKEN="yes")
    finally:
        roll.compose = "compose.yaml"
    assert code == 1 and final["error"]["details"]["rolled_back"] is True, final
    assert "ingress.remove" in [e["type"] for e in agent_events(events)]
    assert {c["name"]: c["id"] for c in roll.ps()} == before
    for n in ("prod-1", "prod-2"):
        assert get(lab.node(n).address, port) == (200, "web-2\n")
    ps = last_json(roll.run("ps", "--json").stdout)
    assert [(r["service"], r["node"], r["status"]) for r in ps["ingress"]] == [
        ("web", "prod-1", "OPEN"), ("web", "prod-2", "OPEN")]
    # and the next deploy of the ingress app sees nothing to fix
    plan = last_json(roll.run("plan", "--json", VERSION="2").stdout)
    assert plan["plan"]["noop"] is True, plan


def test_a_controller_killed_mid_rollout_and_a_new_one_at_once(roll, lab):
    """The killed controller's agent puts its batch back (here: restarting the old
    container, which takes a few seconds to start); the next controller waits for that
    put-back before it deploys (the lock frees only then, and lock_acquire also waits
    for the other agents' work), then converges."""
    slow = {"START_DELAY": "4", "START_PERIOD": "20s"}  # containers slow to (re)start
    code, final, _ = roll.up(VERSION="2", **slow)
    assert code == 0, final
    proc = subprocess.Popen(roll.argv("up", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=roll.env(VERSION="8", ORDER="stop-first", **slow))
    killed = False
    try:
        for line in proc.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "agent" and event.get("service") == "web" \
                    and event.get("type") == "container.create":
                proc.kill()  # SIGKILL: no goodbye; sshd closes the channels
                killed = True
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
    assert killed
    code, final, events = roll.up(VERSION="9")
    assert code == 0, final
    # It waited: for the lock (held by the killed controller's first agent until that one
    # has put its batch back) or, lock taken, for the other agents' put-back (ENV.work).
    lock_events = [e for e in events if e.get("event") == "phase" and e.get("phase") == "lock"]
    waits = [e for e in lock_events if (e.get("reason") and "putting a batch back" in e["reason"])
             or (e.get("holder") or {}).get("pid") == proc.pid]
    assert waits, lock_events
    port = int(roll.vars["WEB_PORT"])
    for n in ("prod-1", "prod-2"):
        assert get(lab.node(n).address, port) == (200, "web-9\n")
    assert sorted(roll.web()) == [f"{roll.project}-web-1", f"{roll.project}-web-2"]


def _order_of(events: list[dict], node: str) -> list[str]:
    return [e["type"] for e in agent_events(events) if e["node"] == node
            and e["type"] in ("container.retire", "container.create", "container.healthy", "container.stopping")]


def test_stop_first_and_start_first_order(roll):
    code, final, events = roll.up(VERSION="4", ORDER="stop-first")
    assert code == 0, final
    # stop-first: the old container is stopped (and kept) before the new one exists
    assert _order_of(events, "prod-1")[:3] == ["container.retire", "container.create", "container.healthy"]
    retire = next(e for e in agent_events(events) if e["type"] == "container.retire")
    assert retire["running"] is False
    code, final, events = roll.up(VERSION="5", ORDER="start-first")
    assert code == 0, final
    # start-first: the new one is healthy (and in the ingress) before the old one stops (in the
    # background: `up` does not wait for that stop)
    assert _order_of(events, "prod-1") == ["container.retire", "container.create", "container.healthy",
                                           "container.stopping"]
    assert next(e for e in agent_events(events) if e["type"] == "container.retire")["running"] is True


def test_parallelism_two_with_four_replicas_replaces_two_at_a_time(roll):
    code, final, _ = roll.up(VERSION="5", REPLICAS="4", PARALLELISM="2")
    assert code == 0, final
    # `orch plan --json` shows the batches `orch up` then runs (and its plan event carries)
    plan = last_json(roll.run("plan", "--json", VERSION="6", REPLICAS="4", PARALLELISM="2").stdout)["plan"]
    code, final, events = roll.up(VERSION="6", REPLICAS="4", PARALLELISM="2")
    assert code == 0, final
    starts = [e for e in agent_events(events) if e["type"] == "container.start"]
    (web,) = [s for s in plan["rollout"]["services"] if s["service"] == "web"]
    assert [b["batch"] for b in web["batches"]] == [1, 2] and web["parallelism"] == 2
    assert {(r["replica"], b["batch"]) for b in web["batches"] for r in b["replicas"]} == {
        (e["replica"], e["batch"]) for e in starts}
    shown = next(e for e in events if e.get("event") == "plan")["rollout"]
    assert [s for s in shown["services"] if s["service"] == "web"] == [web]
    assert sorted(e["batch"] for e in starts) == [1, 1, 2, 2]
    healthy_1 = [i for i, e in enumerate(agent_events(events)) if e["type"] == "container.healthy"
                 and e.get("container", "").endswith(("-1", "-2"))]
    first_of_2 = min(i for i, e in enumerate(agent_events(events)) if e["type"] == "container.start"
                     and e["batch"] == 2)
    assert len(healthy_1) == 2 and max(healthy_1) < first_of_2  # batch 2 starts after batch 1 is healthy
    assert {(e["replica"], e["batch"]) for e in starts} == {(1, 1), (2, 1), (3, 2), (4, 2)}
    code, final, _ = roll.up(VERSION="6")  # back to 2 replicas
    assert code == 0, final


def _stop_node(name: str) -> None:
    from orchestrator.lab import nodes
    from orchestrator.lab.up import resolve_spec

    nodes.stop_everything(resolve_spec("orch-lab", None, None), name)


def test_node_lost_mid_rollout_fails_puts_the_others_back_and_a_rerun_converges(roll, orch):
    before = {c["name"]: c["id"] for c in roll.ps()}
    proc = subprocess.Popen(roll.argv("up", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=roll.env(VERSION="7"))
    lines = []
    killer = None
    try:
        for line in proc.stdout:
            lines.append(line)
            event = json.loads(line) if line.startswith("{") else {}
            # batch 2 (prod-2) has begun: the node goes away under it
            if killer is None and event.get("event") == "batch" and event.get("service") == "web" \
                    and event.get("batch") == 2:
                killer = threading.Thread(target=_stop_node, args=("prod-2",))
                killer.start()
        code = proc.wait(timeout=600)
    finally:
        if killer is not None:
            killer.join()
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert killer is not None, "".join(lines) + stderr
    final = json.loads(lines[-1])
    try:
        assert code == 1, final
        assert "prod-2" in final["error"]["message"]
        assert "web on prod-1" in final["error"]["message"]  # batch 1, put back
    finally:  # the node comes back (ps needs every node)
        orch("lab", "up", env={"ORCH_LAB_NAME": "orch-lab"})
    after = {c["name"]: c["id"] for c in roll.ps()}
    web1 = f"{roll.project}-web-1"
    assert after[web1] == before[web1]  # put back: the same container as before the failed release
    code, final, _ = roll.up(VERSION="7")
    assert code == 0, final
    for name, c in roll.web().items():
        assert c["state"] == "running" and c["health"] == "healthy", c
    port = int(roll.vars["WEB_PORT"])
    for host in final["addresses"]["web"]:
        assert get(host.split(":")[0], port) == (200, "web-7\n")


def test_down_removes_the_projects_ingress_ports(roll, lab):
    roll.run("down", "--json")
    check = json.loads(subprocess.run([ORCH, "nodes", "check", "--env", "prod", "--environments",
                                       str(roll.dir / "environments"), "--json"], capture_output=True, text=True,
                                      timeout=600).stdout)
    for node in check["nodes"]:
        assert not [f for f in (node["ingress"] or {}).get("frontends", []) if f["project"] == roll.project]
    port = int(roll.vars["WEB_PORT"])
    for n in ("prod-1", "prod-2"):
        with pytest.raises(OSError):  # nobody listens on the port any more
            get(lab.node(n).address, port)

"""The deploy lock's lease on the lab (node dev-1, an environment of its own, `lockkeys`,
so other deploys to dev never hold its lock):

- a controller whose main thread waits 40 s on one rollout (a health check that takes
  longer than the lease) keeps its lock: its session pings from a thread of its own;
- `orch lock break` frees a live holder's lock at once, and the break is recorded;
- a controller cut off from the node (its packets dropped in dev-1's netns by iptables,
  then SIGKILLed: the node sees a half-open connection, no end of input) loses the lock
  within the lease (30 s): a second `orch up` gets it while dev-1's sshd still has the
  dead connection ESTABLISHED. The lab's sshd has ClientAliveInterval 30 (count 3: it
  would give up after 90 s), with default settings TCP would take about 2 h, so the
  bound comes from the agent's lease, not from sshd.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from agent.wire.protocol import LEASE_SECONDS
from orchestrator.lab import netns

from .events import wait_for_event
from .helpers import env_file

pytestmark = pytest.mark.e2e

ORCH = str(Path(sys.executable).parent / "orch")
ENV = "lockkeys"
DELAY = int(LEASE_SECONDS) + 20  # the health check outlasts the lease (and a status probe after it)
COMPOSE = f"""\
services:
  slow:
    image: busybox:latest
    command: ["sh", "-c", "sleep {DELAY}; touch /tmp/ready; exec sleep 3600"]
    environment: {{ROUND: "${{ROUND:-1}}"}}
    healthcheck: {{test: ["CMD", "test", "-f", "/tmp/ready"], interval: 1s, timeout: 1s, retries: 120}}
    init: true
    stop_grace_period: 1s
"""


class Project:
    def __init__(self, lab, tmp: Path):
        self.dir = tmp
        (tmp / "compose.yaml").write_text(COMPOSE)
        self.envs = env_file(tmp / "envs", lab, name=ENV)
        self.name = "e2e-lockkeys-" + uuid.uuid4().hex[:6]

    def argv(self, command: str, *rest: str) -> list[str]:
        return [ORCH, command, "--env", ENV, "--environments", str(self.envs), "-p", self.name, *rest]

    def popen(self, *args: str, round_: int = 1, lock_wait: int = 0) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "ROUND": str(round_), "ORCH_LOCK_WAIT": str(lock_wait)})

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), cwd=self.dir, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "ORCH_LOCK_WAIT": "600"})


def sshd_gives_up_after(lab) -> float:
    """How long dev-1's sshd takes to drop a silent client (ClientAliveInterval x CountMax)."""
    config = (lab.state_dir / "nodes" / "dev-1" / "sshd_config").read_text()
    interval = re.search(r"^ClientAliveInterval\s+(\d+)", config, re.M)
    count = re.search(r"^ClientAliveCountMax\s+(\d+)", config, re.M)
    return float("inf") if not interval or interval.group(1) == "0" else \
        int(interval.group(1)) * int(count.group(1) if count else 3)


def controller_port(pid: int, node_address: str) -> int:
    """The local port of process pid's SSH connection to the node (one connection per node)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", "dst", f"{node_address}:22"],
                         capture_output=True, text=True, check=True).stdout
    ports = {int(ln.split()[2].rsplit(":", 1)[1]) for ln in out.splitlines() if f"pid={pid}," in ln}
    assert len(ports) == 1, out
    return ports.pop()


def node_sees(node, port: int) -> bool:
    """Does the node's sshd still have the connection from that port?"""
    out = subprocess.run(netns.in_netns(Path(node.netns).name, ["ss", "-Htn", "state", "established",
                                                                 "dport", f"= :{port}"]),
                         capture_output=True, text=True, check=True).stdout
    return bool(out.strip())


def test_a_busy_controller_keeps_the_lock_a_cut_off_one_loses_it_within_the_lease(lab, tmp_path):
    assert LEASE_SECONDS < sshd_gives_up_after(lab), "the lab's sshd would hide the lease"
    node = lab.node("dev-1")
    p = Project(lab, tmp_path)
    rules: list[list[str]] = []
    procs: list[subprocess.Popen] = []
    try:
        # 1. busy, alive: one rollout of DELAY s (> the lease) with nothing sent but pings
        a = p.popen("up", "--json")
        procs.append(a)
        wait_for_event(a, lambda ev: ev.get("event") == "locked")
        time.sleep(LEASE_SECONDS + 5)
        status = subprocess.run([ORCH, "lock", "status", "--env", ENV, "--environments", str(p.envs), "--json"],
                                capture_output=True, text=True, timeout=300)
        doc = json.loads(status.stdout.strip().splitlines()[-1])
        assert doc["held"] and doc["holder"]["project"] == p.name, doc
        out, err = a.communicate(timeout=600)
        assert a.returncode == 0, out + err

        # 2. cut off mid-rollout, then killed: the node never hears that it went away
        b = p.popen("up", "--json", round_=2)
        procs.append(b)
        wait_for_event(b, lambda ev: ev.get("event") == "agent" and ev.get("type") == "container.start")
        port = controller_port(b.pid, node.address)
        for chain, match in (("INPUT", ["-s", lab.host_address, "--sport", str(port)]),
                             ("OUTPUT", ["-d", lab.host_address, "--dport", str(port)])):
            rule = [chain, "-p", "tcp", *match, "-j", "DROP"]
            subprocess.run(netns.in_netns(Path(node.netns).name, ["iptables", "-I", *rule]), check=True)
            rules.append(rule)
        os.kill(b.pid, signal.SIGKILL)
        b.wait(30)
        killed = time.monotonic()

        c = p.popen("up", "--json", round_=2, lock_wait=600)
        procs.append(c)
        seen = wait_for_event(c, lambda ev: ev.get("event") == "locked", timeout=600)
        took = time.monotonic() - killed
        waits = [e for e in seen if "waiting for the lock" in e.get("text", "")]
        # it was held by the cut-off controller, and freed by its lease: well before sshd
        # would have dropped the connection, which the node still has
        assert any((w.get("holder") or {}).get("project") == p.name for w in waits), seen[-5:]
        assert node_sees(node, port), "sshd dropped the dead connection already: the test proves nothing"
        assert took < LEASE_SECONDS + 15, f"the lock took {took:.0f}s to free (lease {LEASE_SECONDS:.0f}s)"
        out, err = c.communicate(timeout=600)
        assert c.returncode == 0, out + err
        final = json.loads(out.strip().splitlines()[-1])
        assert final["new_release"] and final["release_id"] == 3
        print(f"cut-off controller: the next orch up took the lock {took:.1f}s after it was killed "
              f"(lease {LEASE_SECONDS:.0f}s, sshd would take {sshd_gives_up_after(lab):.0f}s)")
    finally:
        for rule in rules:
            subprocess.run(netns.in_netns(Path(node.netns).name, ["iptables", "-D", *rule]), check=False)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        p.run("down")


def test_lock_break_frees_a_live_holder_and_is_recorded(lab, tmp_path):
    """An operator breaks the lock of a controller that is alive and mid-rollout: its
    agent puts the batch back and lets go, the controller fails, the break is in the
    ledger (and `orch lock status`) with who and why."""
    p = Project(lab, tmp_path)
    procs: list[subprocess.Popen] = []
    lock = [ORCH, "lock"]
    try:
        a = p.popen("up", "--json")
        procs.append(a)
        wait_for_event(a, lambda ev: ev.get("event") == "agent" and ev.get("type") == "container.start")
        t0 = time.monotonic()
        cp = subprocess.run([*lock, "break", "--env", ENV, "--environments", str(p.envs), "--json",
                             "--reason", "e2e: a deploy someone forgot"], capture_output=True, text=True, timeout=300)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        doc = json.loads(cp.stdout.strip().splitlines()[-1])
        node = doc["nodes"][0]
        assert node["broken"] and not node["killed"] and node["holder"]["project"] == p.name, doc
        assert time.monotonic() - t0 < 60
        out, err = a.communicate(timeout=300)
        assert a.returncode == 1 and "orch lock break" in (out + err), out + err
        cp = subprocess.run([*lock, "status", "--env", ENV, "--environments", str(p.envs), "--json"],
                            capture_output=True, text=True, timeout=300)
        status = json.loads(cp.stdout.strip().splitlines()[-1])
        assert not status["held"]
        last = status["last_break"]
        assert last["reason"] == "e2e: a deploy someone forgot" and last["by"]["user"] and last["by"]["host"]
        assert last["holder"]["project"] == p.name and last["killed"] is False
        cp = subprocess.run([*lock, "break", "--env", ENV, "--environments", str(p.envs), "--text",
                             "--reason", "again"], capture_output=True, text=True, timeout=300)
        assert cp.returncode == 0 and "not locked; nothing to break" in cp.stdout, cp.stdout + cp.stderr
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        p.run("down")

"""Connections kept between commands (ssh.persist; orchestrator/io/transport/keeper.py) on
the lab's prod, with a keeper of this module's own (ORCH_KEEPER_SOCKET):

- the second command reuses the kept SSH connections and an agent started ahead on each
  node (one connect per node in the keeper's log; its sessions say warm);
- a command killed while it holds the deploy lock frees it at once (its channel closes with
  its socket), not after the agent's 30 s lease;
- a host key that no longer matches known_hosts fails the command, though the keeper still
  holds a connection made under the old entry;
- the keeper closes its connections and exits when idle for `persist` seconds, leaving no
  agent behind on the nodes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from bench.netem import many_services
from orchestrator.io.transport.keeper import MAX_SPARES

from .helpers import ROOT, last_json

pytestmark = pytest.mark.e2e

PERSIST = "20"


@pytest.fixture(scope="module")
def keeper_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("keeper") / "k"
    d.mkdir(mode=0o700)
    env = {"ORCH_SSH_PERSIST": PERSIST, "ORCH_KEEPER_SOCKET": str(d / "keeper.sock")}
    yield env
    _stop_keeper(d)


def _keeper_pids(sock: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"orchestrator.io.transport.keeper {sock}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _stop_keeper(d: Path) -> None:
    for pid in _keeper_pids(d / "keeper.sock"):
        os.kill(pid, signal.SIGTERM)


def _log(env: dict) -> str:
    path = Path(env["ORCH_KEEPER_SOCKET"]).parent / "keeper.log"
    return path.read_text() if path.exists() else ""


class App:
    def __init__(self, orch, tmp: Path, keeper_env: dict):
        self.orch_ = orch
        self.dir = tmp
        (tmp / "compose.yaml").write_text(many_services(2))
        shutil.copytree(ROOT / "environments", tmp / "environments")
        self.name = f"kept-{uuid.uuid4().hex[:6]}"
        self.env = keeper_env

    def up(self, *args: str, check: bool = True, env: dict | None = None, envs: Path | None = None):
        return self.orch_("up", "--env", "prod", "-f", str(self.dir / "compose.yaml"), "-p", self.name, "--json",
                          "--environments", str(envs or self.dir / "environments"), *args,
                          env={"NO_COLOR": "1", **self.env, **(env or {})}, check=check, timeout=900)


def sessions(stdout: str) -> list[dict]:
    return [d for d in (json.loads(l) for l in stdout.splitlines() if l.startswith("{"))
            if d.get("event") == "session"]


@pytest.fixture(scope="module")
def app(lab, orch, tmp_path_factory, keeper_env):
    made = App(orch, tmp_path_factory.mktemp("keptapp"), keeper_env)
    first = last_json(made.up().stdout)
    assert first["status"] == "ok" and first["new_release"], first
    yield made
    orch("down", "--env", "prod", "-f", str(made.dir / "compose.yaml"), "-p", made.name,
         "--environments", str(made.dir / "environments"), check=False, env={"ORCH_SSH_PERSIST": "0"})


def test_the_next_command_reuses_the_connections_and_a_warm_agent(app, keeper_env):
    cp = app.up()
    final = last_json(cp.stdout)
    assert final["status"] == "ok" and final["noop"], final
    first = {s["node"]: s for s in sessions(cp.stdout)}
    assert set(first) == {"prod-1", "prod-2"} and all(s["kept"] and s["warm"] for s in first.values()), first
    log = _log(keeper_env)
    assert log.count("connected to prod-1 ") == 1 and log.count("connected to prod-2 ") == 1, log


def test_the_few_calls_commands_go_through_the_keeper_too(app, keeper_env):
    """history, lock status (nodes.env_sessions) answer through kept connections as directly."""
    args = ("--env", "prod", "-p", app.name, "--environments", str(app.dir / "environments"), "--json")
    kept = json.loads(app.orch_("history", *args, env=keeper_env).stdout)
    direct = json.loads(app.orch_("history", *args, env={"ORCH_SSH_PERSIST": "0"}).stdout)
    assert [r["id"] for r in kept["releases"]] == [r["id"] for r in direct["releases"]] == [1]
    status = app.orch_("lock", "status", "--env", "prod", "--environments", str(app.dir / "environments"), "--json",
                       env=keeper_env)
    assert json.loads(status.stdout)["status"] == "ok"
    log = _log(keeper_env)
    assert log.count("connected to prod-1 ") == 1, log


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from orchestrator.core.environments import load_environment
    from orchestrator.core.progress import Progress
    from orchestrator.io.lock import LockHolder, acquire_lock
    from orchestrator.io.nodes import ssh_connect

    env = load_environment("prod", Path(sys.argv[1]))
    nodes = ssh_connect(env, Progress(), None)
    sessions = {n: node.lock_session() for n, node in nodes.items()}
    acquire_lock("prod", sessions, LockHolder.current("orch up --env prod (held by test_keeper)"), wait=300)
    print("held", all(getattr(n.conn, "kept", False) for n in nodes.values()), flush=True)
    time.sleep(600)
""")


def test_a_killed_command_frees_the_lock_at_once(app, keeper_env):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(app.dir / "environments")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, **keeper_env})
    try:
        assert holder.stdout.readline().strip() == "held True"
        locked = app.up("--lock-wait", "0", check=False)
        assert locked.returncode == 4, (locked.stdout, locked.stderr)  # held: the lock works through the keeper
    finally:
        holder.kill()
        holder.wait()
    # The agent's lease is 30 s; the lock must be free well before (the channel closed with
    # the killed process's socket).
    after = app.up("--lock-wait", "10", check=False)
    assert after.returncode == 0, (after.stdout[-2000:], after.stderr)


def test_a_changed_host_key_fails_the_command_though_a_connection_is_kept(app, keeper_env, lab, tmp_path):
    app.up()  # the keeper holds connections made under the lab's known_hosts
    lines = Path(lab.known_hosts).read_text().splitlines()
    keys = {ln.split()[0]: ln.split(None, 1)[1] for ln in lines if ln.strip()}
    assert keys["10.250.0.31"] != keys["10.250.0.32"]
    tampered = tmp_path / "known_hosts"  # prod-1 listed with prod-2's key: a man in the middle
    tampered.write_text("".join(f"{h} {keys['10.250.0.32'] if h == '10.250.0.31' else k}\n" for h, k in keys.items()))
    envs = tmp_path / "environments"
    shutil.copytree(app.dir / "environments", envs)
    prod = envs / "prod.yaml"
    prod.write_text(prod.read_text().replace(str(lab.known_hosts), str(tampered)))
    cp = app.orch_("up", "--env", "prod", "-f", str(app.dir / "compose.yaml"), "-p", app.name, "--json",
                   "--environments", str(envs), env={"NO_COLOR": "1", **keeper_env}, check=False)
    assert cp.returncode != 0
    error = last_json(cp.stdout)["error"]
    assert error["details"]["nodes"]["prod-1"]["kind"] == "HostKeyChanged", error
    assert "prod-2" not in error["details"]["nodes"], error


def test_a_kept_connection_the_node_dropped_is_replaced(app, keeper_env):
    """prod-1's sshd ends the keeper's session (as a node's restart or an sshd restart
    would): the next command connects anew and converges; prod-2's connection stays."""
    app.up()
    seen = len(_log(keeper_env))
    killed = _kill_sshd_sessions("prod-1", "10.250.0.31", keeper_env)
    assert killed, "no sshd session of the keeper on prod-1"
    time.sleep(0.5)
    final = last_json(app.up().stdout)
    assert final["status"] == "ok" and final["noop"], final
    log = _log(keeper_env)[seen:]
    assert log.count("connected to prod-1 ") == 1 and "connected to prod-2 " not in log, log


def _kill_sshd_sessions(node: str, address: str, keeper_env: dict) -> list[int]:
    """The node's sshd processes serving the keeper's connections (found by their peer
    ports; other connections into the node, e.g. other fixtures', are left alone)."""
    pids = _keeper_pids(Path(keeper_env["ORCH_KEEPER_SOCKET"]))
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :22 and dst {address} )"],
                         capture_output=True, text=True).stdout
    ports = {ln.split()[2].rsplit(":", 1)[1] for ln in out.splitlines()
             if any(f"pid={p}," in ln for p in pids)}
    out = subprocess.run(["ip", "netns", "exec", f"orch-lab.{node}", "ss", "-tnpH", "state", "established",
                          "( sport = :22 )"], capture_output=True, text=True).stdout
    killed = []
    for ln in out.splitlines():
        peer_port = ln.split()[3].rsplit(":", 1)[1]
        m = re.search(r"pid=(\d+),", ln)
        if peer_port in ports and m:
            os.kill(int(m.group(1)), signal.SIGKILL)
            killed.append(int(m.group(1)))
    return killed


def test_the_keeper_exits_when_idle_and_leaves_no_agent_behind(app, keeper_env, tmp_path):
    d = tmp_path / "short"
    d.mkdir(mode=0o700)
    env = {"ORCH_SSH_PERSIST": "4", "ORCH_KEEPER_SOCKET": str(d / "keeper.sock")}
    # Agents started for these commands run /usr/bin/python3.11 (the same python, by another
    # name), told apart from any other agent on the nodes.
    envs = tmp_path / "environments"
    shutil.copytree(app.dir / "environments", envs)
    prod = envs / "prod.yaml"
    prod.write_text(prod.read_text().replace("python: /usr/bin/python3\n", "python: /usr/bin/python3.11\n"))
    assert not _agents()
    app.up(env=env, envs=envs)
    app.up(env=env, envs=envs)  # spare agents started after each command
    # The commands' agents end and spares start on each node (as many as the node had agents
    # at once, at most MAX_SPARES); counted once the set stops changing, as one ending and
    # another starting can pass through any count.
    spares = _settled_agents(deadline=time.monotonic() + 15)
    assert set(spares) == {"prod-1", "prod-2"} and all(1 <= n <= MAX_SPARES for n in spares.values()), spares
    assert _keeper_pids(d / "keeper.sock"), _log(env)
    deadline = time.monotonic() + 30
    while _keeper_pids(d / "keeper.sock") and time.monotonic() < deadline:
        time.sleep(0.5)
    log = _log(env)
    assert not _keeper_pids(d / "keeper.sock") and "exits (idle)" in log, log
    assert "closing the connection to prod-1 (idle)" in log and not (d / "keeper.sock").exists()
    deadline = time.monotonic() + 10  # the agents see their input end
    while _agents() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _agents()


def _settled_agents(deadline: float) -> dict[str, int]:
    """This test's agents per node, once the same processes were seen for a second."""
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = _agents()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
        time.sleep(0.2)
    nodes = {os.stat(f"/run/netns/orch-lab.{n}").st_ino: n for n in ("prod-1", "prod-2")}
    per_node: dict[str, int] = {}
    for line in last or []:
        try:
            node = nodes.get(os.stat(f"/proc/{line.split()[0]}/ns/net").st_ino, "?")
        except FileNotFoundError:
            node = "gone"
        per_node[node] = per_node.get(node, 0) + 1
    return per_node


def _agents() -> list[str]:
    """This test's agents (the lab's nodes share this machine's processes)."""
    out = subprocess.run(["pgrep", "-af", r"^/usr/bin/python3\.11 .*orch-agent-.*\.pyz rpc"], capture_output=True,
                         text=True)
    return out.stdout.splitlines()

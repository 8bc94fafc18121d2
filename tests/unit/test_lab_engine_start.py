"""Starting engines: a dockerd that dies before answering (its containerd was slow
to come up) is started again; one that keeps dying or hangs is reported with its log."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import OrchError
from orchestrator.lab import dockerd, engine, proc
from orchestrator.lab.model import build_spec

ROOT = Path(__file__).resolve().parents[2]


class FakeEngines:
    """Spawned dockerds: the first `deaths` die at once, the next one answers."""

    def __init__(self, deaths: int, hang: bool = False):
        self.deaths, self.hang = deaths, hang
        self.spawned: list[int] = []

    def spawn(self, argv, log):
        pid = 1000 + len(self.spawned)
        self.spawned.append(pid)
        return pid

    def alive(self, pid):
        return self.hang or self.spawned.index(pid) >= self.deaths

    def wait_ready(self, sock, pid_alive, timeout):
        return not self.hang and pid_alive()


@pytest.fixture
def fake(monkeypatch):
    def install(deaths, hang=False):
        f = FakeEngines(deaths, hang)
        monkeypatch.setattr(proc, "spawn", f.spawn)
        monkeypatch.setattr(proc, "alive", f.alive)
        monkeypatch.setattr(engine, "wait_ready", f.wait_ready)
        return f

    return install


def test_host_engine_is_started_again_after_an_early_exit(fake, monkeypatch):
    monkeypatch.setattr(engine, "ping", lambda *a, **k: False)
    monkeypatch.setattr(engine, "start_host_engine_argv", lambda: [])
    monkeypatch.setattr(proc, "which", lambda prog: "/usr/sbin/dockerd")
    monkeypatch.setattr(engine, "stale_pidfile", lambda path: None)
    f = fake(deaths=2)
    said = []
    engine.ensure_host_engine(said.append)
    assert len(f.spawned) == 3
    assert any("attempt 3 of 4" in s for s in said)


def test_host_engine_that_keeps_dying_is_reported_with_its_log(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "ping", lambda *a, **k: False)
    monkeypatch.setattr(engine, "start_host_engine_argv", lambda: [])
    monkeypatch.setattr(proc, "which", lambda prog: "/usr/sbin/dockerd")
    monkeypatch.setattr(engine, "stale_pidfile", lambda path: None)
    log = tmp_path / "docker.log"
    log.write_text("failed to start containerd: timeout waiting for containerd to start\n")
    monkeypatch.setattr(engine, "HOST_LOG", log)
    f = fake(deaths=99)
    with pytest.raises(OrchError) as e:
        engine.ensure_host_engine(lambda s: None)
    assert len(f.spawned) == engine.START_ATTEMPTS
    assert "timeout waiting for containerd" in str(e.value)


def test_a_hanging_engine_is_not_started_twice(fake, monkeypatch):
    monkeypatch.setattr(engine, "ping", lambda *a, **k: False)
    monkeypatch.setattr(engine, "start_host_engine_argv", lambda: [])
    monkeypatch.setattr(proc, "which", lambda prog: "/usr/sbin/dockerd")
    monkeypatch.setattr(engine, "stale_pidfile", lambda path: None)
    f = fake(deaths=0, hang=True)
    with pytest.raises(OrchError):
        engine.ensure_host_engine(lambda s: None)
    assert len(f.spawned) == 1


def test_node_engine_is_started_again_and_the_new_pid_returned(fake, monkeypatch, tmp_path):
    spec = build_spec("orch-lab-unit", "10.251.0.0/24", "dev=1")
    node = spec.nodes[0]
    # start() makes the node's directories under /var/lib; only its spawn matters here.
    monkeypatch.setattr(dockerd, "start", lambda spec, node: proc.spawn([], None))
    f = fake(deaths=1)
    first = proc.spawn([], None)
    assert dockerd.wait(spec, node, first) == f.spawned[1]
    f = fake(deaths=99)
    with pytest.raises(OrchError, match=f"dockerd of node {node.name} did not start"):
        dockerd.wait(spec, node, proc.spawn([], None))
    assert len(f.spawned) == engine.START_ATTEMPTS


def test_stale_pidfile_removed_only_when_its_process_is_gone(tmp_path):
    live, dead = tmp_path / "live.pid", tmp_path / "dead.pid"
    live.write_text(str(os.getpid()))
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead.write_text(str(gone.pid))
    engine.stale_pidfile(live)
    engine.stale_pidfile(dead)
    assert live.exists() and not dead.exists()


def test_host_docker_script_restarts_a_dockerd_that_exits(tmp_path):
    """scripts/host-docker.sh with fake docker/dockerd: two starts die, the third serves."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    state = tmp_path / "starts"
    (bin_ / "dockerd").write_text(
        "#!/bin/bash\n"
        f"n=$(( $(cat {state} 2>/dev/null || echo 0) + 1 )); echo $n > {state}\n"
        "echo 'failed to start containerd: timeout waiting for containerd to start'\n"
        f'[ "$n" -ge 3 ] && touch {tmp_path}/up && echo $$ > {tmp_path}/serving.pid && exec sleep 30\n'
        "exit 1\n"
    )
    (bin_ / "docker").write_text(f"#!/bin/bash\n[ -e {tmp_path}/up ]\n")
    (bin_ / "id").write_text("#!/bin/bash\necho 0\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}")
    script = (ROOT / "scripts/host-docker.sh").read_text()
    # Run the real script with its log and the systemd test pointed into tmp_path.
    script = script.replace("/var/log/docker.log", str(tmp_path / "docker.log"))
    script = script.replace("/run/systemd/system", str(tmp_path / "no-systemd"))
    script = script.replace("/var/run/docker.pid", str(tmp_path / "docker.pid"))
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    try:
        assert run.returncode == 0, run.stderr
        assert state.read_text().strip() == "3"
        assert "attempt 3 of 4" in run.stdout
    finally:
        serving = tmp_path / "serving.pid"
        if serving.exists():
            os.kill(int(serving.read_text()), 15)

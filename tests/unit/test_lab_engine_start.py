"""Starting engines: a dockerd that dies before answering (its containerd was slow
to come up) is started again; one that keeps dying or hangs is reported with its log."""

from __future__ import annotations

import os
import subprocess

import pytest

from orchestrator.errors import OrchError
from orchestrator.lab import dockerd, engine, proc
from orchestrator.lab.model import build_spec

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
    monkeypatch.setattr(engine, "clear_stale_pidfiles", lambda *a: [])
    f = fake(deaths=2)
    said = []
    engine.ensure_host_engine(said.append)
    assert len(f.spawned) == 3
    assert any("attempt 3 of 4" in s for s in said)


def test_host_engine_that_keeps_dying_is_reported_with_its_log(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "ping", lambda *a, **k: False)
    monkeypatch.setattr(engine, "start_host_engine_argv", lambda: [])
    monkeypatch.setattr(proc, "which", lambda prog: "/usr/sbin/dockerd")
    monkeypatch.setattr(engine, "clear_stale_pidfiles", lambda *a: [])
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
    monkeypatch.setattr(engine, "clear_stale_pidfiles", lambda *a: [])
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


def test_stale_pid_files_are_removed_unless_they_name_the_engines_own_processes(tmp_path):
    """After a restart a pid file may name whatever process got that pid again."""
    exec_root = tmp_path / "exec"
    (exec_root / "containerd").mkdir(parents=True)
    toml = exec_root / "containerd" / "containerd.toml"
    docker_pid, containerd_pid = tmp_path / "docker.pid", exec_root / "containerd" / "containerd.pid"
    unrelated = subprocess.Popen(["sleep", "30"])
    # A live process whose argv names this exec root's containerd config: kept.
    # (bash does not exec a compound command, so its argv stays as given)
    genuine = subprocess.Popen(["bash", "-c", "sleep 30; true", "containerd", "--config", str(toml)])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        docker_pid.write_text(str(unrelated.pid))
        containerd_pid.write_text(str(unrelated.pid))
        assert engine.clear_stale_pidfiles(docker_pid, exec_root) == [docker_pid, containerd_pid]
        assert not docker_pid.exists() and not containerd_pid.exists()

        containerd_pid.write_text(str(genuine.pid))
        assert engine.clear_stale_containerd_pidfile(exec_root) == []
        assert containerd_pid.exists()

        containerd_pid.write_text(str(gone.pid))
        assert engine.clear_stale_containerd_pidfile(exec_root) == [containerd_pid]
        docker_pid.write_text("2")  # kthreadd: a live pid with an empty argv
        assert engine.clear_stale_pidfiles(docker_pid, exec_root) == [docker_pid]
        containerd_pid.write_text("garbage")
        assert engine.clear_stale_containerd_pidfile(exec_root) == [containerd_pid]
        assert engine.clear_stale_containerd_pidfile(exec_root) == []  # no file: nothing to do
    finally:
        unrelated.kill()
        genuine.kill()

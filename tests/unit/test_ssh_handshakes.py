"""The bound on SSH handshakes in flight (transport.ssh.HandshakeGate), and its settings in
the environment file (the real sshd's MaxStartups: tests/unit/test_transport_ssh.py)."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.core.environments import parse_environment
from orchestrator.errors import InputError
from orchestrator.io.transport import SSHOptions
from orchestrator.io.transport.ssh import HandshakeGate, handshake_gate


def _hammer(gate: HandshakeGate, servers: list[str], per_server: int) -> None:
    def one(server: str) -> None:
        with gate.slot(server):
            time.sleep(0.02)  # a handshake's worth of waiting, so they overlap

    threads = [threading.Thread(target=one, args=(s,)) for s in servers for _ in range(per_server)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)


def test_handshakes_to_one_server_stay_under_its_bound():
    gate = HandshakeGate(total=32, per_server=3)
    _hammer(gate, ["10.0.0.1:22"], 20)
    assert gate.peak_per_server == 3 and gate.peak == 3 and gate.in_flight == {"10.0.0.1:22": 0}


def test_handshakes_over_all_servers_stay_under_the_total():
    gate = HandshakeGate(total=5, per_server=3)
    _hammer(gate, [f"10.0.0.{i}:22" for i in range(10)], 4)
    assert gate.peak == 5 and gate.peak_per_server <= 3


def test_a_handshake_that_fails_frees_its_slot():
    gate = HandshakeGate(total=1, per_server=1)
    with pytest.raises(OSError):
        with gate.slot("a:22"):
            raise OSError("refused")
    done = threading.Event()
    threading.Thread(target=lambda: (gate.slot("a:22").__enter__(), done.set()), daemon=True).start()
    assert done.wait(2)


def test_one_gate_per_process_for_the_same_limits():
    a = handshake_gate(SSHOptions(handshakes=7, handshakes_per_server=2))
    assert a is handshake_gate(SSHOptions(handshakes=7, handshakes_per_server=2, connect_timeout=3))
    assert (a.total, a.per_server) == (7, 2)
    assert handshake_gate(SSHOptions()).per_server == 8 and handshake_gate(SSHOptions()).total == 32


def _env(tmp_path, ssh: str):
    path = tmp_path / "prod.yaml"
    path.write_text("name: prod\nnodes:\n  - {name: prod-1, host: 10.0.0.1}\n" + ssh)
    return path


def test_environment_file_sets_the_bounds(tmp_path):
    env = parse_environment(_env(tmp_path, "ssh: {handshakes: 64, handshakes_per_server: 4}\n"))
    assert (env.ssh.handshakes, env.ssh.handshakes_per_server) == (64, 4)
    assert parse_environment(_env(tmp_path, "")).ssh.handshakes_per_server == 8


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "many"])
def test_a_bound_that_is_not_a_positive_number_is_refused(tmp_path, value):
    with pytest.raises(InputError) as err:
        parse_environment(_env(tmp_path, f"ssh:\n  handshakes_per_server: {value}\n"))
    problem = err.value.problems[0]
    assert problem.key == "ssh.handshakes_per_server" and problem.line == 5 and "prod.yaml" in str(problem.file)

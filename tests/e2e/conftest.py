"""Fixtures for end-to-end tests against the local lab (root only).

`lab` brings the default lab up (idempotent: about a second when it is already up)
and returns its facts, an orchestrator.lab.LabInfo. `ssh` opens strict-host-key
paramiko connections to its nodes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ORCH = shutil.which("orch", path=str(Path(sys.executable).parent)) or shutil.which("orch")
# Deploys to one environment take its lock: a test waits for another's deploy (e.g. a
# concurrent run on the same lab) instead of failing with exit 4. The lock tests pass
# --lock-wait 0 explicitly.
LOCK_WAIT = {"ORCH_LOCK_WAIT": os.environ.get("ORCH_LOCK_WAIT", "600")}


def run_orch(*args: str, timeout: float = 1800, check: bool = True, env: dict | None = None):
    """Run the orch CLI; returns CompletedProcess (text). Fails the test on error if check."""
    assert ORCH, "the orch command is not installed (pip install -e '.[test]')"
    cp = subprocess.run(
        [ORCH, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **LOCK_WAIT, **(env or {})},
    )
    if check and cp.returncode != 0:
        pytest.fail(f"orch {' '.join(args)} exited {cp.returncode}:\n{cp.stdout}\n{cp.stderr}")
    return cp


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="end-to-end tests need root (they run the lab)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def orch():
    """run_orch(*args, check=True, env=None): the orch CLI as a subprocess."""
    return run_orch


@pytest.fixture(scope="session")
def lab():
    """The default lab, up and healthy; its facts (orchestrator.lab.LabInfo)."""
    from orchestrator.lab import lab_info

    run_orch("lab", "up", env={"ORCH_LAB_NAME": "orch-lab"})
    return lab_info("orch-lab")


class NodeShell:
    """A paramiko connection to one node; run() returns (exit status, stdout, stderr)."""

    def __init__(self, client, node):
        self.client = client
        self.node = node

    def run(self, command: str, timeout: float = 300) -> tuple[int, str, str]:
        _, out, err = self.client.exec_command(command, timeout=timeout)
        # Both streams are read before the exit status: output larger than the channel's
        # window (2 MiB) would otherwise block the command, and this call, for ever.
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(err.read()), daemon=True)
        reader.start()
        stdout = out.read()
        reader.join(timeout)
        status = out.channel.recv_exit_status()
        return status, stdout.decode(), b"".join(errors).decode()

    def check(self, command: str, timeout: float = 300) -> str:
        status, out, err = self.run(command, timeout)
        assert status == 0, f"{self.node.name}: `{command}` exited {status}: {err or out}"
        return out


@pytest.fixture(scope="session")
def ssh(lab):
    """ssh(node_name) -> NodeShell, strict host-key checking against the lab's known_hosts."""
    import paramiko

    clients = []

    def connect(name: str) -> NodeShell:
        node = lab.node(name)
        client = paramiko.SSHClient()
        client.load_host_keys(str(lab.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            node.address,
            port=node.ssh_port,
            username=lab.ssh_user,
            key_filename=str(lab.ssh_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=15,
        )
        clients.append(client)
        return NodeShell(client, node)

    yield connect
    for c in clients:
        c.close()

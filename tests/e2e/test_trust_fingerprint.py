"""`orch nodes trust --fingerprint` against the lab's real sshd (node test-1), with a
known_hosts file of its own: the node's key checked against the fingerprint OpenSSH's
ssh-keygen prints for the node's host key file; a wrong one refused with nothing
recorded; no terminal and no fingerprint: refused unless --yes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import ORCH
from .helpers import env_file

pytestmark = pytest.mark.e2e


def keygen_fingerprint(lab, node: str) -> str:
    pub = lab.state_dir / "nodes" / node / "ssh_host_ed25519_key.pub"
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def orch(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # stdin never a terminal, even under `pytest -s` on one: no prompt to wait on
    cp = subprocess.run([ORCH, *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                        env=dict(os.environ))
    assert not check or cp.returncode == 0, cp.stdout + cp.stderr
    return cp


def test_trust_checks_the_pinned_fingerprint_on_the_real_node(lab, tmp_path):
    kh = tmp_path / "known_hosts"
    envs = env_file(tmp_path / "environments", lab, name="trustkeys", known_hosts=kh)
    args = ["nodes", "trust", "--env", "trustkeys", "--environments", str(envs)]
    right = keygen_fingerprint(lab, "dev-1")
    wrong = keygen_fingerprint(lab, "test-1")  # a real key, of another node
    assert right != wrong

    cp = orch(*args, "--fingerprint", f"dev-1={wrong}", "--json", check=False)
    assert cp.returncode == 2, cp.stdout + cp.stderr
    assert f"dev-1 ({lab.node('dev-1').address}:22) presents ssh-ed25519 {right}, not the expected {wrong}" \
        in cp.stderr
    err = json.loads(cp.stdout.strip().splitlines()[-1])["error"]
    assert err["kind"] == "InputError" and err["details"]["nodes"] == [
        {"node": "dev-1", "expected": wrong, "seen": right}]
    assert not kh.exists() or kh.read_text() == ""

    cp = orch(*args, "--text", check=False)  # no terminal (stdin is not one), no fingerprint, no --yes
    assert cp.returncode == 2 and "no terminal to confirm" in cp.stderr and right in cp.stderr, cp.stderr
    assert not kh.exists() or kh.read_text() == ""

    cp = orch(*args, "--fingerprint", f"dev-1={right}", "--json")
    node = json.loads(cp.stdout.strip().splitlines()[-1])["nodes"][0]
    assert (node["node"], node["status"], node["fingerprint"]) == ("dev-1", "added", right)
    assert kh.read_text().startswith(f"{lab.node('dev-1').address} ssh-ed25519 ")
    # recorded as OpenSSH would have it: ssh-keygen finds the node in the file with the same fingerprint
    found = subprocess.run(["ssh-keygen", "-F", lab.node("dev-1").address, "-f", str(kh), "-l"],
                           capture_output=True, text=True, check=True).stdout
    assert right in found
    cp = orch("nodes", "check", "--env", "trustkeys", "--environments", str(envs), "--json", check=False)
    assert json.loads(cp.stdout.strip().splitlines()[-1])["nodes"][0]["host_key"] == "trusted"

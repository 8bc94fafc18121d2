"""A lab of many nodes comes up and goes down without a trace (issue 17: `orch lab down`
of 24 nodes crashed with "a bug in orch: JSONDecodeError" while the nodes were torn down
in parallel, and left the bridge, iptables rules and state behind).

A separate lab of its own name and subnet (never the shared orch-lab): 24 nodes, 12 of
them in one environment (more than the 9 an environment had room for before: the 10th
on take .100 on), so the parallel teardown has as many links coming and going as the
run that crashed. Root only, like every e2e test.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .lab_traces import _default_lab, _traces

pytestmark = pytest.mark.e2e

NAME = "orch-lab-spdscale"
SUBNET = "10.250.78.0/24"
NODES = "dev=12,test=6,prod=6"


def test_many_nodes_come_up_and_go_down_without_a_trace(orch):
    run_orch = orch
    run_orch("lab", "down", "--name", NAME, check=False)  # a run killed half-way
    shared = _default_lab()
    try:
        up = json.loads(run_orch("lab", "up", "--name", NAME, "--subnet", SUBNET, "--nodes", NODES, "--json")
                        .stdout.splitlines()[-1])
        assert up["status"] == "ok", up
        st = json.loads(run_orch("lab", "status", "--name", NAME, "--json").stdout)
        assert st["healthy"], st["issues"]
        nodes = {n["name"]: n for n in st["nodes"]}
        assert len(nodes) == 24 and all(n["sshd_up"] and n["engine_up"] for n in nodes.values())
        assert (nodes["dev-9"]["address"], nodes["dev-10"]["address"], nodes["dev-12"]["address"]) == (
            "10.250.78.19", "10.250.78.100", "10.250.78.102")
        bridge = st["bridge"]
        assert _traces(NAME, bridge)

        # Something already gone (a teardown killed half-way, a node removed by hand) does
        # not stop the rest.
        subprocess.run(["ip", "netns", "delete", f"{NAME}.test-3"], check=True)
        down = run_orch("lab", "down", "--name", NAME, "--json", check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "a bug in orch" not in down.stderr
        assert _traces(NAME, bridge) == {}
        # Again: nothing to do, nothing to fail.
        again = run_orch("lab", "down", "--name", NAME, "--json", check=False)
        assert again.returncode == 0, again.stdout + again.stderr
        assert _traces(NAME, bridge) == {}
    finally:
        run_orch("lab", "down", "--name", NAME, check=False)
    assert _default_lab() == shared

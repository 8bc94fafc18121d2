"""Light lab nodes (issue 17): a lab of 12 nodes with a real sshd each and the real agent
over the lab's fake Docker Engine, deployed to like any environment, then removed
without a trace. A lab of its own name and subnet, never the shared orch-lab.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .helpers import last_json
from .lab_traces import _default_lab, _traces

pytestmark = pytest.mark.e2e

NAME = "orch-lab-simtest"
SUBNET = "10.250.93.0/24"
COUNT = 12
PROJECT = "e2e-sim"


def _project(d: Path, lab: dict) -> Path:
    (d / "environments").mkdir()
    nodes = "".join(f"  - {{name: {n['name']}, host: {n['address']}, user: {lab['ssh_user']}, "
                    f"identity_file: {lab['ssh_key']}, python: /usr/bin/python3}}\n" for n in lab["nodes"])
    (d / "environments" / "sim.yaml").write_text(f"name: sim\nnodes:\n{nodes}ssh: {{known_hosts: {lab['known_hosts']}}}\n"
                                                     "mesh: {mode: 'off'}\n")
    image = f"{lab['registry']}/library/busybox@sha256:{'7' * 64}"  # the fake engine pulls anything at once
    compose = d / "compose.yaml"
    compose.write_text(f"name: {PROJECT}\nservices:\n  web:\n    image: {image}\n    command: [sleep, infinity]\n"
                       "    deploy: {mode: global}\n    healthcheck: {test: [CMD, 'true'], interval: 1s}\n")
    return compose


def test_a_global_service_on_twelve_light_nodes(orch, tmp_path):
    run_orch = orch
    run_orch("lab", "down", "--name", NAME, check=False)  # a run killed half-way
    shared = _default_lab()
    try:
        up = last_json(run_orch("lab", "up", "--name", NAME, "--subnet", SUBNET, "--nodes", f"prod={COUNT}:light",
                            "--json").stdout)
        assert up["status"] == "ok", up
        st = json.loads(run_orch("lab", "status", "--name", NAME, "--json").stdout)
        assert st["healthy"], st["issues"]
        assert len(st["nodes"]) == COUNT and all(n["light"] and n["sshd_up"] and n["engine_up"] for n in st["nodes"])
        assert len({n["engine_id"] for n in st["nodes"]}) == COUNT  # the agent keys its data by it
        bridge = st["bridge"]
        # No dockerd: one fake engine process serves every node's socket.
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        assert not [ln for ln in ps.splitlines() if ln.startswith("dockerd") and f"/{NAME}/" in ln]
        assert len([ln for ln in ps.splitlines() if "fake_engine.py" in ln and f"/{NAME}/" in ln]) == 1

        compose = _project(tmp_path, up["lab"])
        common = ("--env", "sim", "--file", str(compose), "-p", PROJECT)
        first = last_json(run_orch("up", *common, "--json").stdout)
        assert first["status"] == "ok", first
        ps_rows = last_json(run_orch("ps", *common, "--json").stdout)["containers"]
        assert sorted(c["node"] for c in ps_rows) == sorted(n["name"] for n in up["lab"]["nodes"])
        assert all(c["service"] == "web" and c["state"] == "running" and c["health"] == "healthy" for c in ps_rows)

        again = last_json(run_orch("up", *common, "--json").stdout)
        assert again["status"] == "ok" and not again.get("new_release"), again
        assert {c["id"] for c in last_json(run_orch("ps", *common, "--json").stdout)["containers"]} == {
            c["id"] for c in ps_rows}  # nothing recreated

        down = last_json(run_orch("down", *common, "--json").stdout)
        assert down["status"] == "ok", down
        assert last_json(run_orch("ps", *common, "--json").stdout)["containers"] == []

        gone = run_orch("lab", "down", "--name", NAME, "--json", check=False)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert _traces(NAME, bridge) == {}
        assert not os.path.exists(f"/run/{NAME}")
    finally:
        run_orch("lab", "down", "--name", NAME, check=False)
    assert _default_lab() == shared

"""Deploy benchmarks against the local lab (`make bench` brings it up first).

- `orch up` of examples/shop to DEV (1 node) from nothing;
- the no-op re-run on PROD (2 nodes): one SSH connection, one agent session and one
  `state` call per node, no `apply`;
- `orch up` against Debian's `docker-compose up -d` (1.29, run on this machine with
  DOCKER_HOST pointing at dev-1's engine socket) on the same single-node Compose file,
  alternating, as a ratio;
- the lab's floor: what one SSH exec and the agent's start cost on a lab node.

The shop file is used without its top-level `name:` (docker-compose 1.29 predates it;
both tools get the project name from -p). Each run starts from nothing (the previous
run's project is taken down, volumes included, outside the timing). Host ports are
39080-39082, away from the e2e tests' ranges.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import BIN, ORCH, ROOT, Row

PORTS = {"WEB_PORT": "39080", "API_PORT": "39081", "DB_PORT": "39082"}
COMPOSE = "/usr/bin/docker-compose"


def _shop_copy(tmp: Path) -> Path:
    d = tmp / "shop"
    shutil.copytree(ROOT / "examples" / "shop", d)
    compose = d / "compose.yaml"
    compose.write_text("".join(ln for ln in compose.read_text().splitlines(keepends=True)
                               if not ln.startswith("name:")))
    return d


def _run(argv: list[str], cwd: Path, env: dict, check: bool = True) -> tuple[float, str]:
    t0 = time.perf_counter()
    cp = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {cp.returncode}:\n{cp.stdout[-2000:]}\n{cp.stderr[-2000:]}")
    return took, cp.stdout


def _final(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _orch(*args: str) -> list[str]:
    return [ORCH, *args]


def bench_deploy(runs: int) -> list[Row]:
    from orchestrator.lab import lab_info

    lab = lab_info()
    env = {**os.environ, **PORTS, "NO_COLOR": "1", "ORCH_LOCK_WAIT": "600"}  # a shared lab: wait, don't fail
    dc_env = {**env, "DOCKER_HOST": lab.node("dev-1").docker_host}
    runs = max(1, min(runs, 5))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        shop = _shop_copy(Path(tmp))

        # 1. orch up to dev from nothing; 3. alternated with docker-compose on the same node
        fresh = Row("orch up shop -> dev (1 node) from nothing", "s")
        dc = Row("docker-compose up -d, same file, same node (dev-1)", "s")
        ratio = Row("ratio orch up / docker-compose up -d", "x")
        project, dc_project = "bench-up", "bench-dc"
        _run(_orch("down", "--env", "dev", "-p", project, "--volumes", "--json"), shop, env)
        _run([COMPOSE, "-p", dc_project, "down", "-v"], shop, dc_env, check=False)
        phases: dict[str, list[float]] = {}
        for _ in range(runs):
            took, out = _run(_orch("up", "--env", "dev", "-p", project, "--json"), shop, env)
            final = _final(out)
            assert final["status"] == "ok" and len(final["changed"]) == 5, final
            for k, v in final["timings"].items():
                phases.setdefault(k, []).append(v)
            fresh.samples.append(took)
            _run(_orch("down", "--env", "dev", "-p", project, "--volumes", "--json"), shop, env)
            took_dc, _ = _run([COMPOSE, "-p", dc_project, "up", "-d"], shop, dc_env)
            dc.samples.append(took_dc)
            _run([COMPOSE, "-p", dc_project, "down", "-v"], shop, dc_env)
            ratio.samples.append(took / took_dc)
        fresh.note = "5 services, 4 waves; in-command phases (median): " + ", ".join(
            f"{k} {statistics.median(v):.2f}s" for k, v in phases.items() if statistics.median(v) >= 0.01)
        dc.note = "docker-compose 1.29 with DOCKER_HOST=" + lab.node("dev-1").docker_host
        ratio.note = ("per run; orch waits until web and worker have run 1s, docker-compose returns once they "
                      "started, and orch goes over SSH to the node agent")
        rows += [fresh, dc, ratio]

        # 2. the no-op re-run on prod (2 nodes)
        noop = Row("orch up no-op re-run, prod (2 nodes)", "s")
        inside = Row("  of which inside the command (connect + state + plan)", "s")
        project = "bench-noop"
        _run(_orch("up", "--env", "prod", "-p", project, "--json"), shop, env)
        try:
            for _ in range(max(runs, 5)):
                took, out = _run(_orch("up", "--env", "prod", "-p", project, "--json"), shop, env)
                final = _final(out)
                assert final["noop"] is True and final["changed"] == [], final
                noop.samples.append(took)
                inside.samples.append(final["duration_s"])
        finally:
            _run(_orch("down", "--env", "prod", "-p", project, "--volumes", "--json"), shop, env)
        noop.note = "goal < 1 s; wall time of the whole process (Python start, load, SSH, agent, state, exit)"
        rows += [noop, inside]
    rows += _lab_floor(runs)
    return rows


def _lab_floor(runs: int) -> list[Row]:
    """What any SSH command costs on a lab node: the part of a no-op orch does not control."""
    code = r'''
import json, sys, time
from orchestrator import transport as T
from orchestrator.agent_bundle import current_bundle
from orchestrator.lab import lab_info
lab = lab_info(); n = lab.node("dev-1")
t = T.NodeTarget(n.name, n.address, n.ssh_port, lab.ssh_user, lab.ssh_key)
o = T.SSHOptions(known_hosts=lab.known_hosts, allow_agent=False)
t0 = time.perf_counter(); c = T.connect(t, o); t1 = time.perf_counter()
c.run(["true"]); t2 = time.perf_counter()
c.run(["/usr/bin/true"]); c.run(["python3", "-c", "pass"]); t3 = time.perf_counter()
b = current_bundle(); remote = T.bundle_path(b)
t4 = time.perf_counter(); s = T.AgentSession(c, c.open_exec(T.agent_command(remote)), remote, False)
s.call("hello", {"protocol": 1}); t5 = time.perf_counter(); s.call("state", {"project": "none"}); t6 = time.perf_counter()
s.close(); c.close()
print(json.dumps({"connect": t1 - t0, "exec": t2 - t1, "python": (t3 - t2) - (t2 - t1), "hello": t5 - t4,
                  "state": t6 - t5}))
'''
    rows = {k: Row(label, "s") for k, label in (
        ("connect", "lab floor: SSH connect + auth (paramiko)"),
        ("exec", "lab floor: one SSH exec of `true` (sshd + root's ~/.bashrc)"),
        ("python", "lab floor: `python3 -c pass` over SSH minus the exec (pyenv shim)"),
        ("hello", "lab floor: agent start + hello"),
        ("state", "lab floor: first `state` (imports the docker SDK)"))}
    for _ in range(max(runs, 3)):
        out = subprocess.run([str(BIN / "python"), "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        for k, v in json.loads(out.stdout).items():
            rows[k].samples.append(v)
    rows["exec"].note = "root's ~/.bashrc runs `pyenv init` for every SSH command on this machine"
    return list(rows.values())


if __name__ == "__main__":  # pragma: no cover
    for r in bench_deploy(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(r.cells())

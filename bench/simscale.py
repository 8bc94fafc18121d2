"""The controller's cost at 10, 50 and 100 nodes, on light lab nodes (issue 17).

Nodes with their own dockerd cannot exceed a few on 2 cores, so this brings up a lab of
its own (`orch-lab-sim`, 10.250.92.0/24, never the shared lab) with 100 light nodes: each
a network namespace with its own real sshd, running the real agent over the lab's fake
Docker Engine (orchestrator/lab/fake_engine.py, docs/lab.md "Light nodes"). Three
environment files take the first 10, 50 and 100 of them. At each size: a first deploy of
two `mode: global` services (no ports, no ingress, `mesh: off`; images by digest: the fake
pull succeeds at once), then no-op `orch up` runs, then `orch down`.

Per run: wall time; the orch process's CPU (user + sys) and peak RSS from wait4's rusage;
the phases of `--json` timings. The baseline of the no-op rows is the floor of the nodes
themselves: OpenSSH sessions starting python3 on every node at once (the sshd + python
start that each agent session also pays, all sharing the machine's 2 cores). The lab
is removed at the end (BENCH_SIM_KEEP=1 keeps it for another run).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Goal, OwnKeeper, Row, final, lab_env, med, orch, run

LAB, SUBNET, LAB_NODES = "orch-lab-sim", "10.250.92.0/24", "prod=100:light"
SIZES = (10, 50, 100)
PROJECT = "bench-sim"
DIGEST = "sha256:" + "5" * 64  # any digest: the fake engine's pull succeeds for every reference


def _compose(registry: str) -> str:
    image = f"{registry}/library/busybox@{DIGEST}"
    return (f"name: {PROJECT}\nservices:\n"
            f"  web:\n    image: {image}\n    command: [sleep, infinity]\n    deploy: {{mode: global}}\n"
            f"    healthcheck: {{test: [CMD, 'true'], interval: 1s}}\n"
            f"  worker:\n    image: {image}\n    command: [sleep, infinity]\n    deploy: {{mode: global}}\n")


def _environment(name: str, lab: dict, nodes: list[dict]) -> str:
    lines = [f"name: {name}", "nodes:"]
    lines += [f"  - {{name: {n['name']}, host: {n['address']}, user: {lab['ssh_user']}, "
              f"identity_file: {lab['ssh_key']}, python: /usr/bin/python3}}" for n in nodes]
    lines.append(f"ssh: {{known_hosts: {lab['known_hosts']}}}")
    lines.append("mesh: {mode: 'off'}  # the controller's cost, not WireGuard's: no service here needs another")
    return "\n".join(lines) + "\n"


def _measured(argv: list[str], cwd: Path, env: dict) -> tuple[float, float, float, dict]:
    """(wall s, CPU s of the orch process (user + sys), peak RSS MB, final JSON object)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        took = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {text[-1500:]}\n{err.read()[-1500:]}")
    return took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, final(text)


def _floor(lab: dict, nodes: list[dict]) -> float:
    """OpenSSH sessions running python3 on every node at once: the nodes' own start-up cost."""
    argv = ["ssh", "-i", lab["ssh_key"], "-o", f"UserKnownHostsFile={lab['known_hosts']}", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(argv + [f"{lab['ssh_user']}@{n['address']}", "/usr/bin/python3", "-c", "pass"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in nodes]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"plain ssh + python3 failed on {sum(1 for c in codes if c)} node(s)")
    return time.perf_counter() - t0


def simscale(runs: int) -> list[Row]:
    env = lab_env()
    _, cp = run(orch("lab", "up", "--name", LAB, "--subnet", SUBNET, "--nodes", LAB_NODES, "--json"), env=env,
                timeout=900)
    lab = json.loads(cp.stdout.strip().splitlines()[-1])["lab"]
    rows: list[Row] = []
    cpu_per_node: dict[int, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "environments").mkdir()
            (d / "compose.yaml").write_text(_compose(lab["registry"]))
            for n in SIZES:
                name = f"sim{n}"
                (d / "environments" / f"{name}.yaml").write_text(_environment(name, lab, lab["nodes"][:n]))
            for n in SIZES:  # what a run killed half-way left, in any of them
                run(orch("down", "--env", f"sim{n}", "-p", PROJECT, "--json"), d, env, check=False, timeout=600)
            for n in SIZES:
                rows += _size(d, f"sim{n}", n, lab, runs, env, cpu_per_node)
    finally:
        if not os.environ.get("BENCH_SIM_KEEP"):
            run(orch("lab", "down", "--name", LAB, "--json"), env=env, check=False, timeout=600)
    return rows + derived(cpu_per_node)


def derived(cpu_per_node: dict[int, float]) -> list[Row]:
    """From the no-op CPU per node at each size: the cost of one more node, and its growth."""
    lo, hi = SIZES[0], SIZES[-1]
    marginal = Row(f"controller CPU of one more node, no-op ({lo} -> {hi} nodes)", "ms", goal=Goal("< 20 ms", 20.0))
    growth = Row(f"controller CPU per node of a no-op, {hi} nodes / {lo} nodes (nothing quadratic)", "x",
                 goal=Goal("<= 1.5x", 1.5))
    if lo in cpu_per_node and hi in cpu_per_node:
        total = {k: v * k for k, v in cpu_per_node.items()}
        marginal.samples.append((total[hi] - total[lo]) / (hi - lo) * 1000)
        marginal.note = (f"(CPU at {hi} - CPU at {lo}) / {hi - lo}, medians: what each node adds, without the "
                         "fixed start-up")
        growth.samples.append(cpu_per_node[hi] / cpu_per_node[lo])
        growth.note = ("a cost that grows with the square of the nodes would make this ~10x; per-node CPU "
                       + ", ".join(f"{k} nodes {v * 1000:.1f} ms" for k, v in sorted(cpu_per_node.items())))
    return [marginal, growth]


def _size(d: Path, env_name: str, n: int, lab: dict, runs: int, env: dict, cpu_per_node: dict) -> list[Row]:
    up = orch("up", "--env", env_name, "-p", PROJECT, "--json")
    first = Row(f"first deploy (up from nothing), 2 global services on {n} light nodes", "s")
    wall = Row(f"no-op `orch up`, {n} light nodes", "s",
               baseline_name=f"plain `ssh NODE python3 -c pass` on all {n} nodes at once",
               goal=Goal("< 3 s", 3.0) if n == 100 else None)
    # The goal is on the largest size: at 10 nodes Python's own start-up (~0.45 s) is most of it.
    cpu = Row(f"controller CPU (user + sys) per node, no-op, {n} nodes", "ms",
              goal=Goal("< 20 ms", 20.0) if n == SIZES[-1] else None, level=1)
    rss = Row(f"controller peak RSS, no-op, {n} nodes", "MB", goal=Goal("< 200 MB", 200.0), level=1)
    phases: dict[str, list[float]] = {}
    try:
        took, cpu_s, _, fin = _measured(up, d, env)
        first.samples.append(took)
        first.note = (f"controller CPU {cpu_s:.2f} s ({cpu_s / n * 1000:.0f} ms/node); phases: "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in sorted((fin.get("timings") or {}).items(),
                                                                      key=lambda kv: -kv[1]) if v >= 0.01))
        for _ in range(runs):
            took, cpu_s, rss_mb, fin = _measured(up, d, env)
            wall.samples.append(took)
            cpu.samples.append(cpu_s / n * 1000)
            rss.samples.append(rss_mb)
            for k, v in (fin.get("timings") or {}).items():
                phases.setdefault(k, []).append(v)
            phases.setdefault("(outside duration_s)", []).append(took - float(fin.get("duration_s") or took))
            wall.baseline.append(_floor(lab, lab["nodes"][:n]))
        cpu_per_node[n] = med(cpu.samples) / 1000
        wall.note = ("phases (medians): " + ", ".join(f"{k} {med(v):.2f}s" for k, v in
                                                      sorted(phases.items(), key=lambda kv: -med(kv[1]))
                                                      if med(v) >= 0.01)
                     + f"; per node {med(wall.samples) / n * 1000:.0f} ms of wall; the orch process used "
                     f"{med(cpu.samples) * n / 1000:.2f} s of CPU of it, the rest is waiting for the nodes, whose "
                     "sshd, python3 and agent start-ups share the machine's 2 cores (the baseline: the same start-up "
                     "without orch)")
        cpu.note = f"{med(cpu.samples) * n / 1000:.2f} s in all (Python start-up and imports included)"
        rss.note = "ru_maxrss of the orch process"
        kept = _kept(d, up, n, runs, env)
    finally:
        run(orch("down", "--env", env_name, "-p", PROJECT, "--json"), d, env, check=False)
    return [first, wall, cpu, rss] + kept


def _kept(d: Path, up: list[str], n: int, runs: int, env: dict) -> list[Row]:
    """The same no-op with ssh.persist: a keeper of its own holds the connections and an agent
    started ahead on each node. The first run (which connects) is not measured."""
    keeper = OwnKeeper()
    kenv = keeper.env(env)
    row = Row(f"no-op `orch up`, {n} light nodes, connections kept (ssh.persist)", "s",
              baseline_name="the same no-op without ssh.persist (above)", goal=Goal("< 3 s", 3.0) if n == 100 else None)
    keeper_cpu: list[float] = []
    orch_cpu: list[float] = []
    try:
        _measured(up, d, kenv)  # connects, and leaves a spare agent on every node
        for _ in range(runs):
            took_plain, _, _, _ = _measured(up, d, env)
            row.baseline.append(took_plain)
            time.sleep(1.0)  # the nodes settle (the plain run's agents exit)
            before = keeper.cpu()
            took, cpu_s, _, _ = _measured(up, d, kenv)
            after = keeper.cpu()
            row.samples.append(took)
            orch_cpu.append(cpu_s)
            keeper_cpu.append(after - before)
            # Between commands, as a user's are: the spare agents started after this one
            # (a python3 start-up on each of the 100 nodes sharing 2 cores) are up.
            time.sleep(5.0)
        row.note = (f"CPU per no-op: orch {med(orch_cpu):.2f} s + keeper {med(keeper_cpu):.2f} s = "
                    f"{(med(orch_cpu) + med(keeper_cpu)) / n * 1000:.1f} ms/node; the keeper (one process per user) "
                    "holds the SSH connections and starts each node's next agent after a command")
    finally:
        keeper.stop()
    return [row]

"""Deploy benchmarks against the local lab (`make bench` brings it up first), on a copy
of examples/shop (5 services in 4 waves, busybox only):

- `up`: `orch up` to DEV (dev-1) from nothing against docker-compose 1.29's
  `up -d` of the same file on the same engine (DOCKER_HOST = dev-1's engine socket), and
  against `up -d` followed by polling the engine until every container runs or is
  healthy (docker-compose 1.29 has no `--wait`; bench.recreate.wait_ready),
  alternating, each run from nothing (the previous run's project is taken down,
  volumes included, outside the timing). One untimed warm-up of each first (image
  pulled on the node, agent bundle uploaded).
- `noop`: `orch up` again on PROD (prod-1 and prod-2) when nothing changed: one SSH
  connection, agent session and `state` per node, no `apply`; beside a no-op
  `docker-compose up -d` on both prod nodes at once (its own copy of the project) over
  SSH, `DOCKER_HOST=ssh://root@NODE`, which is what a user without orch would run
  (the lab's key and known_hosts through an ssh_config of the measurement's own, given
  to the `ssh` client docker-compose runs), and straight at each engine's socket; and
  the lab's floor (what one SSH exec and the agent's start cost on a lab node).

The copy has no top-level `name:` (docker-compose 1.29 predates it; both tools get the
project name from -p), and DEV's overlay is dropped so both tools deploy exactly the
same file. Host ports 39080-39085, away from the e2e tests' ranges.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (BIN, COMPOSE, ROOT, Goal, OwnKeeper, Row, add_phases, final, lab_env, orch, phases_note,
                          run)
from bench.recreate import wait_ready

PORTS = {"WEB_PORT": "39080", "API_PORT": "39081", "DB_PORT": "39082"}
DC_PORTS = {"WEB_PORT": "39083", "API_PORT": "39084", "DB_PORT": "39085"}  # docker-compose's copy on prod
PROD = ("prod-1", "prod-2")


def shop_copy(tmp: Path) -> Path:
    d = tmp / "shop"
    shutil.copytree(ROOT / "examples" / "shop", d)
    compose = d / "compose.yaml"
    compose.write_text("".join(ln for ln in compose.read_text().splitlines(keepends=True)
                               if not ln.startswith("name:")))
    dev = d / "environments" / "dev.yaml"
    text = dev.read_text()
    dev.write_text(re.sub(r"(?ms)^overlay:.*\Z", "", text))  # the overlay is the file's last block
    return d


def _dc(lab, node: str, env: dict) -> dict:
    return {**env, "DOCKER_HOST": lab.node(node).docker_host}


def _dc_ssh(lab, node: str, env: dict, tmp: Path) -> dict:
    """docker-compose at the node over SSH (DOCKER_HOST=ssh://...), as a user would point
    it: the ssh client docker-compose runs gets the lab's key and known_hosts from an
    ssh_config here (OpenSSH reads ~/.ssh/config from the passwd entry, not $HOME, hence
    the `ssh` wrapper first on PATH; HOME for paramiko, should it be used)."""
    home = tmp / "home"
    config = home / ".ssh" / "config"
    if not config.exists():
        config.parent.mkdir(parents=True, mode=0o700)
        config.write_text(f"Host {' '.join(n.address for n in lab.nodes)}\n  User {lab.ssh_user}\n"
                          f"  IdentityFile {lab.ssh_key}\n  UserKnownHostsFile {lab.known_hosts}\n"
                          "  StrictHostKeyChecking yes\n  BatchMode yes\n")
        config.chmod(0o600)
        wrapper = tmp / "bin" / "ssh"
        wrapper.parent.mkdir()
        wrapper.write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {config} \"$@\"\n")
        wrapper.chmod(0o755)
    return {**env, "DOCKER_HOST": f"ssh://{lab.ssh_user}@{lab.node(node).address}", "HOME": str(home),
            "PATH": f"{tmp / 'bin'}:{env.get('PATH', '')}"}


def up(runs: int) -> list[Row]:
    from orchestrator.lab import lab_info

    lab = lab_info()
    env = lab_env(**PORTS)
    dc_env = _dc(lab, "dev-1", env)
    row = Row("`orch up` vs `docker-compose up -d`: shop (5 services, 4 waves) from nothing, one node (dev-1)", "s",
              baseline_name="`docker-compose up -d`, same file, same engine", goal=Goal("<= 1.2x", 1.2, on="ratio"))
    waited = Row("vs docker-compose up -d, then waiting until every container runs or is healthy", "s", level=1,
                 baseline_name="`docker-compose up -d` + polling the engine's inspect until running/healthy",
                 goal=Goal("<= 1.2x", 1.2, on="ratio"))
    fast = Row("`orch up` of shop from nothing, ready once running (`x-orch.min_healthy_time: 0s` on web and "
               "worker), vs docker-compose up -d + waiting", "s", level=1,
               baseline_name="`docker-compose up -d` + polling the engine's inspect until running/healthy",
               goal=Goal("<= 1.2x", 1.2, on="ratio"))
    project, dc_project = "bench-up", "bench-dc"
    phases: dict[str, list[float]] = {}
    fast_phases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shop = shop_copy(Path(tmp))
        fast_shop = Path(tmp) / "fast"
        fast_shop.mkdir()
        (fast_shop / "compose.yaml").write_text(_ready_once_running(shop / "compose.yaml"))
        (fast_shop / "environments").symlink_to(shop / "environments")
        fast_up = orch("up", "--env", "dev", "-p", project, "--json")
        down = orch("down", "--env", "dev", "-p", project, "--volumes", "--json")
        dc_down = [COMPOSE, "-p", dc_project, "down", "-v", "-t", "2"]
        run(down, shop, env)
        run(dc_down, shop, dc_env, check=False)
        try:
            for i in range(runs + 1):  # run 0 is the warm-up
                took, cp = run(orch("up", "--env", "dev", "-p", project, "--json"), shop, env)
                fin = final(cp.stdout)
                if fin.get("status") != "ok" or len(fin.get("changed", [])) != 5:
                    raise RuntimeError(f"orch up did not deploy the 5 services: {json.dumps(fin)[:800]}")
                run(down, shop, env)
                took_fast, cp = run(fast_up, fast_shop, env)
                fin_fast = final(cp.stdout)
                if fin_fast.get("status") != "ok" or len(fin_fast.get("changed", [])) != 5:
                    raise RuntimeError(f"orch up did not deploy the 5 services: {json.dumps(fin_fast)[:800]}")
                run(down, shop, env)
                took_dc, _ = run([COMPOSE, "-p", dc_project, "up", "-d"], shop, dc_env)
                run(dc_down, shop, dc_env)
                t0 = time.perf_counter()
                run([COMPOSE, "-p", dc_project, "up", "-d"], shop, dc_env)
                wait_ready(dc_env["DOCKER_HOST"], dc_project)
                took_wait = time.perf_counter() - t0
                run(dc_down, shop, dc_env)
                if i:
                    row.add(took, took_dc)
                    waited.add(took, took_wait)
                    fast.add(took_fast, took_wait)
                    add_phases(phases, fin)
                    add_phases(fast_phases, fin_fast)
        finally:
            run(down, shop, env, check=False)
            run(dc_down, shop, dc_env, check=False)
    row.note = ("wall time of each process; orch goes over SSH to the node agent, waits until db and api are healthy "
                "(as docker-compose does for service_healthy) and until web and worker have run 1 s (its "
                "crash-at-start guard), where "
                "docker-compose returns once they started; docker-compose talks to the engine's socket directly. "
                "orch's phases (medians): " + phases_note(phases))
    waited.note = ("Debian's docker-compose 1.29 has no `--wait`: `up -d`, then the engine's inspect (over its socket) "
                   "every 50 ms until every container runs (healthy, with a healthcheck; migrate: exited 0); the same orch "
                   "samples")
    fast.note = ("web and worker (no healthcheck) with `x-orch.min_healthy_time: 0s`: ready once they run, as with "
                 "docker-compose's `--wait`, where orch's default waits until they have run 1 s (its crash-at-start "
                 "guard); orch's phases (medians): " + phases_note(fast_phases))
    return [row, waited, fast]


def _ready_once_running(compose: Path) -> str:
    """shop's compose file with `x-orch.min_healthy_time: 0s` on its services without a
    healthcheck (web, worker): docker-compose's `--wait` readiness."""
    text = compose.read_text()
    for anchor in ("    deploy:\n      replicas: 1\n", "    depends_on:\n      - api\n"):
        if anchor not in text:
            raise RuntimeError(f"examples/shop/compose.yaml changed: {anchor!r} not found")
        text = text.replace(anchor, anchor + "    x-orch: {min_healthy_time: 0s}\n", 1)
    return text


def noop(runs: int) -> list[Row]:
    from orchestrator.lab import lab_info

    lab = lab_info()
    env = lab_env(**PORTS)
    row = Row("`orch up` no-op re-deploy, shop on prod (2 nodes)", "s",
              baseline_name="no-op `docker-compose up -d` on both prod nodes at once, over SSH "
              "(DOCKER_HOST=ssh://root@NODE)", goal=Goal("< 0.8 s", 0.8))
    inside = Row("of which inside the command (connect, lock, ledger, state, plan)", "s", level=1)
    local = Row("vs docker-compose straight at the engines' sockets (no SSH)", "s", level=1,
                baseline_name="no-op `docker-compose up -d` on both prod engines at once, DOCKER_HOST = each "
                "engine's unix socket")
    project, dc_project = "bench-noop", "bench-dc-noop"
    phases: dict[str, list[float]] = {}
    containers = 0
    with tempfile.TemporaryDirectory() as tmp:
        shop = shop_copy(Path(tmp))
        dc_envs = {n: _dc(lab, n, {**env, **DC_PORTS}) for n in PROD}
        ssh_envs = {n: _dc_ssh(lab, n, {**env, **DC_PORTS}, Path(tmp)) for n in PROD}
        dc_up = [COMPOSE, "-p", dc_project, "up", "-d"]

        def dc_all(argv: list[str], envs: dict) -> float:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(len(PROD)) as pool:
                list(pool.map(lambda n: run(argv, shop, envs[n]), PROD))
            return time.perf_counter() - t0

        try:
            run(orch("up", "--env", "prod", "-p", project, "--json"), shop, env)
            dc_all(dc_up, dc_envs)
            dc_all(dc_up, ssh_envs)  # the same project, the same engines: a no-op, and SSH known to work
            skipped = 0
            while len(row.samples) < runs:
                took, cp = run(orch("up", "--env", "prod", "-p", project, "--json"), shop, env)
                fin = final(cp.stdout)
                if fin.get("noop") is not True and not fin.get("changed") and (fin.get("plan") or {}).get("mesh") \
                        and skipped < runs:
                    # On a shared lab another project of prod joined or left the environment's
                    # mesh meanwhile: this run brought the mesh up to date. Not a no-op: again.
                    skipped += 1
                    continue
                if fin.get("noop") is not True or fin.get("changed"):
                    raise RuntimeError(f"the re-run was not a no-op: {json.dumps(fin)[:800]}")
                row.samples.append(took)
                local.samples.append(took)
                inside.samples.append(fin["duration_s"])
                containers = len(fin.get("containers") or [])
                add_phases(phases, fin)
                row.baseline.append(dc_all(dc_up, ssh_envs))
                local.baseline.append(dc_all(dc_up, dc_envs))
            kept = _kept_noop(shop, project, env, runs, row.samples)
        finally:
            run(orch("down", "--env", "prod", "-p", project, "--volumes", "--json"), shop, env, check=False)
            for n in PROD:
                run([COMPOSE, "-p", dc_project, "down", "-v", "-t", "2"], shop, dc_envs[n], check=False)
    ratio = row.ratio()
    row.note = (f"{containers} containers; wall time of the whole process (Python start, load, SSH to both nodes, "
                "agent, lock, ledger, state, plan, exit); docker-compose over SSH: its ssh client per API "
                "connection, `docker system dial-stdio` on the node, no lock or ledger; goal 2, no slower than "
                "docker-compose over SSH (ratio <= 1x): " + ("n/a" if ratio is None else "met" if ratio <= 1 else
                                                           "not met"))
    local.note = "docker-compose reads its engine's socket directly, with no SSH, lock or ledger"
    if skipped:
        row.note += (f"; {skipped} run(s) not counted: they re-applied the environment's mesh, which another "
                     "project of prod had changed meanwhile (a shared lab)")
    inside.note = "orch's own `duration_s`; phases (medians): " + phases_note(phases)
    return [row, inside, local, kept] + _lab_floor(max(3, runs // 2))


def _kept_noop(shop: Path, project: str, env: dict, runs: int, plain: list[float]) -> Row:
    """The same no-op with ssh.persist (a keeper of its own, stopped after): the SSH
    connections kept, each node's agent started ahead. Its first run connects (not counted)."""
    keeper = OwnKeeper()
    kenv = keeper.env(env)
    row = Row("`orch up` no-op, shop on prod, connections kept (ssh.persist)", "s", level=1,
              baseline_name="the same no-op without ssh.persist (above)", goal=Goal("< 0.8 s", 0.8))
    row.baseline.extend(plain)
    try:
        run(orch("up", "--env", "prod", "-p", project, "--json"), shop, kenv)
        for _ in range(runs):
            time.sleep(1.0)  # between commands: the spare agents of the last one are up
            took, cp = run(orch("up", "--env", "prod", "-p", project, "--json"), shop, kenv)
            fin = final(cp.stdout)
            if fin.get("noop") is not True:
                raise RuntimeError(f"the re-run was not a no-op: {json.dumps(fin)[:800]}")
            row.samples.append(took)
        row.note = ("the keeper holds both nodes' SSH connections between commands and starts each node's next "
                    "agent after a command (docs/operations.md, Kept connections); 1 s between runs")
    finally:
        keeper.stop()
    return row


def _lab_floor(runs: int) -> list[Row]:
    """What any SSH command costs on a lab node: the part of a no-op orch does not control."""
    code = r'''
import json, sys, time
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle
from orchestrator.core.environments import load_environment
from pathlib import Path
env = load_environment("prod", Path("environments"))  # prod-1 as orch reaches it, its nodes[].python included
t = env.node("prod-1")
o = T.options_from_env(env, allow_agent=False)
t0 = time.perf_counter(); c = T.connect(t, o); t1 = time.perf_counter()
c.run(["true"]); t2 = time.perf_counter()
c.run(["/usr/bin/true"]); c.run([t.python, "-c", "pass"]); t3 = time.perf_counter()
b = current_bundle(); remote = T.bundle_path(b)
T.AgentSession.open(c, b).close()  # uploaded and unpacked, as after any earlier command
t4 = time.perf_counter(); s = T.AgentSession(c, c.open_exec(T.agent_command(remote, python=t.python)), remote, False)
s.call("hello", {"protocol": 1}); t5 = time.perf_counter()
s.call("state", {"project": "none"}); t6 = time.perf_counter()
s.close(); c.close()
print(json.dumps({"connect": t1 - t0, "exec": t2 - t1, "python": (t3 - t2) - (t2 - t1), "hello": t5 - t4,
                  "state": t6 - t5}))
'''
    rows = {k: Row(label, "s", level=1) for k, label in (
        ("connect", "lab floor: SSH connect + auth (paramiko), one node"),
        ("exec", "lab floor: one SSH exec of `true`"),
        ("python", "lab floor: `python -c pass` over SSH (the node's `nodes[].python`), minus the exec"),
        ("hello", "lab floor: agent start + hello"),
        ("state", "lab floor: first `state` of a session"))}
    for _ in range(runs):
        out = subprocess.run([str(BIN / "python"), "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        for k, v in json.loads(out.stdout).items():
            rows[k].samples.append(v)
    rows["exec"].note = ("sshd + root's shell; the lab's nodes see Debian's stock root ~/.bashrc (this machine's "
                         "runs `pyenv init`, 0.15 s more per command: orchestrator/lab/sshd.py)")
    rows["python"].note = ("the lab's environment files say /usr/bin/python3: `python3` on root's PATH is a pyenv "
                           "shim here, ~0.2 s more")
    rows["state"].note = ("list + inspect straight from the engine's unix socket (agent.engine_reads); "
                          "with the docker SDK it was 0.35-0.5 s, its import")
    return list(rows.values())


if __name__ == "__main__":  # pragma: no cover
    for r in up(int(sys.argv[1]) if len(sys.argv) > 1 else 3) + noop(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(r.to_json())

"""Recreate benchmarks against the local lab (issue 17's "up from nothing / recreate"):

- `recreate`: every replica recreated after an environment change, on one node (dev-1):
  two `deploy.mode: global` busybox services (`init: true`, so a stop takes no grace
  period), `orch up` of the next value of V against docker-compose 1.29's `up -d` of the
  same file with the same change on the same engine (DOCKER_HOST = dev-1's socket), and
  against a compose run that waits: Debian's docker-compose 1.29 has no `--wait`, so that
  baseline is `up -d` followed by polling the engine (list + inspect every 50 ms)
  until every container of the project runs and, when it has a healthcheck, is healthy.
  orch also waits: each new container must have run 1 s (no healthcheck).
- `batches`: one global service with a healthcheck (every 1 s) on prod's 2 nodes,
  `update_config: {parallelism: 1, order: start-first}`: two batches, one per node. From
  `orch up --json`'s events, per batch: the batch's time (the controller's `batch`
  event to its step's `done`) less the container's own create + start + health (its
  `container.create` to its `container.healthy` event); the old container stops off the
  critical path (start-first; no host port). Goal: under 0.3 s per batch.

Projects bench-recreate, bench-dc-recreate (dev) and bench-batches (prod); no host ports.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import COMPOSE, ROOT, Goal, Row, add_phases, final, json_lines, lab_env, med, orch, phases_note, run

GLOBAL = """\
services:
  a:
    image: busybox
    init: true
    command: ["sh", "-c", "echo $${V}; exec sleep 100000"]
    environment:
      V: ${V:-0}
    deploy:
      mode: global
  b:
    image: busybox
    init: true
    command: ["sh", "-c", "echo $${V}; exec sleep 100000"]
    environment:
      V: ${V:-0}
    deploy:
      mode: global
"""

BATCHES = """\
services:
  g:
    image: busybox
    init: true
    command: ["sh", "-c", "echo $${V}; mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 80 -h /w"]
    environment:
      V: ${V:-0}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 10
    deploy:
      mode: global
      update_config:
        parallelism: 1
        order: start-first
"""


def _project(tmp: Path, compose: str) -> Path:
    d = tmp / "app"
    (d / "environments").mkdir(parents=True)
    (d / "compose.yaml").write_text(compose)
    for f in (ROOT / "environments").glob("*.yaml"):
        (d / "environments" / f.name).write_text(f.read_text())
    return d


def wait_ready(docker_host: str, project: str, budget: float = 120.0) -> None:
    """Poll the engine (list + inspect over its unix socket, a few ms; the `docker` CLI
    would add ~0.1 s a look) every 50 ms until every container of the compose project
    runs (and is healthy when it has a healthcheck) or, a one-shot, exited 0: the "waits
    for health" baseline."""
    from agent.engine_reads import SocketReads

    reads = SocketReads(docker_host[len("unix://"):])
    deadline = time.monotonic() + budget
    try:
        while True:
            found = reads.containers([f"com.docker.compose.project={project}"])
            if found and all(_ready(c) for c in found):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{project}: not ready within {budget:.0f}s")
            time.sleep(0.05)
    finally:
        reads.close()


def _ready(c) -> bool:
    if c.state != "running":
        return c.state == "exited" and c.exit_code == 0  # a one-shot that completed
    return c.health in ("", "healthy")


def recreate(runs: int) -> list[Row]:
    from orchestrator.lab import lab_info

    lab = lab_info()
    host = lab.node("dev-1").docker_host
    row = Row("`orch up` recreating every replica after an env change: two global busybox services, one node "
              "(dev-1)", "s", baseline_name="`docker-compose up -d` with the same change, same file, same engine",
              goal=Goal("<= 1.2x", 1.2, on="ratio"))
    waited = Row("vs docker-compose up -d, then waiting until every container runs (polling the engine)", "s",
                 level=1, baseline_name="`docker-compose up -d` + polling the engine's inspect until running/healthy",
                 goal=Goal("<= 1.2x", 1.2, on="ratio"))
    project, dc_project = "bench-recreate", "bench-dc-recreate"
    phases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        app = _project(Path(tmp), GLOBAL)
        down = orch("down", "--env", "dev", "-p", project, "--json")
        dc = lambda v: {**lab_env(V=str(v)), "DOCKER_HOST": host}  # noqa: E731
        dc_down = [COMPOSE, "-p", dc_project, "down", "-t", "2"]
        try:
            run(orch("up", "--env", "dev", "-p", project, "--json"), app, lab_env(V="0"))
            run([COMPOSE, "-p", dc_project, "up", "-d"], app, dc(0))
            for i in range(1, 2 * runs + 2):  # run 1 is a warm-up; then odd: up -d, even: up -d + wait
                took, cp = run(orch("up", "--env", "dev", "-p", project, "--json"), app, lab_env(V=str(i)))
                fin = final(cp.stdout)
                if fin.get("status") != "ok" or sorted(fin.get("changed") or []) != ["a", "b"]:
                    raise RuntimeError(f"orch up did not recreate a and b: {json.dumps(fin)[:800]}")
                t0 = time.perf_counter()
                run([COMPOSE, "-p", dc_project, "up", "-d"], app, dc(i))
                if i % 2 == 0:
                    wait_ready(host, dc_project)
                took_dc = time.perf_counter() - t0
                if i == 1:
                    continue
                target = row if i % 2 else waited
                target.samples.append(took)
                target.baseline.append(took_dc)
                add_phases(phases, fin)
        finally:
            run(down, app, lab_env(), check=False)
            run(dc_down, app, dc(0), check=False)
    row.note = ("wall time of each process; orch goes over SSH to the node's agent, replaces each replica "
                "stop-first (the old container kept, renamed, until the release is live) and waits until each new "
                "container has run 1 s (it has no healthcheck); docker-compose talks to the engine's socket and "
                "returns once the containers started. orch's phases (medians): " + phases_note(phases))
    waited.note = ("Debian's docker-compose 1.29 has no `--wait`: `up -d`, then the engine's inspect (over its socket) "
                   "every 50 ms until every container runs (healthy, for one with a healthcheck)")
    return [row, waited]


def _batch_overheads(events: list[dict]) -> list[tuple[float, float, float, float]]:
    """(batch seconds, the container's own create -> healthy seconds, batch -> create
    seconds, healthy -> step done seconds) per batch."""
    batch_t: dict[int, float] = {}
    node_of: dict[int, str] = {}
    done_t: dict[int, float] = {}
    created: dict[int, float] = {}
    healthy: dict[int, float] = {}
    current: dict[str, int] = {}  # node -> its batch under way
    for ev in events:
        t = ev.get("t")
        if not isinstance(t, (int, float)):
            continue
        kind = ev.get("type") if ev.get("event") == "agent" else ev.get("event")
        if kind == "batch" and ev.get("batch"):
            k = int(ev["batch"])
            batch_t[k] = t
            node_of[k] = (ev.get("replicas") or [{}])[0].get("node", "")
            current[node_of[k]] = k
        node = ev.get("node") or ""
        k = current.get(node)
        if k is None:
            continue
        if kind == "container.create" and ev.get("batch") == k:
            created[k] = t
        elif kind == "container.healthy":
            healthy.setdefault(k, t)
        elif kind == "step" and ev.get("status") == "done":
            done_t[k] = t
            current.pop(node, None)
    return [(done_t[k] - batch_t[k], healthy[k] - created[k], created[k] - batch_t[k], done_t[k] - healthy[k])
            for k in sorted(batch_t) if k in done_t and k in created and k in healthy]


def batches(runs: int) -> list[Row]:
    row = Row("per-batch overhead of a rolling update: a global service on prod's 2 nodes, parallelism 1 "
              "(batch time less the container's own create + start + health)", "s", goal=Goal("< 0.3 s", 0.3))
    whole = Row("the batch's whole time (controller's `batch` event to its step's `done`)", "s", level=1)
    own = Row("the container's own create + start + health (its create to healthy events)", "s", level=1)
    before = Row("of the overhead: the controller's `batch` event to the agent's `container.create`", "s", level=1)
    after = Row("of the overhead: the agent's `container.healthy` to the controller's step `done`", "s", level=1)
    wall = Row("the whole `orch up` (2 batches)", "s", level=1)
    project = "bench-batches"
    with tempfile.TemporaryDirectory() as tmp:
        app = _project(Path(tmp), BATCHES)
        try:
            run(orch("up", "--env", "prod", "-p", project, "--json"), app, lab_env(V="0"))
            for i in range(1, runs + 2):  # run 1 is a warm-up
                took, cp = run(orch("up", "--env", "prod", "-p", project, "--json"), app, lab_env(V=str(i)))
                found = _batch_overheads(json_lines(cp.stdout))
                if len(found) != 2:
                    raise RuntimeError(f"expected 2 batches with their events, found {len(found)}: "
                                       f"{json.dumps(final(cp.stdout))[:600]}")
                if i == 1:
                    continue
                wall.samples.append(took)
                for batch_s, own_s, before_s, after_s in found:
                    row.samples.append(batch_s - own_s)
                    whole.samples.append(batch_s)
                    own.samples.append(own_s)
                    before.samples.append(before_s)
                    after.samples.append(after_s)
        finally:
            run(orch("down", "--env", "prod", "-p", project, "--json"), app, lab_env(), check=False)
    row.note = (f"{len(row.samples)} batches; what remains is orch's: the controller's call and answer over SSH, "
                "the agent's checks (names, image, network), container listings, the readiness polling (every "
                "50 ms for the first 2 s), the old container's rename, the background stop's hand-off and the node's "
                f"mesh names refresh; median own time {med(own.samples):.2f}s")
    before.note = ("the call over SSH to a free agent session (the first of a session imports the docker SDK), the "
                   "agent's checks and listings, the old container's rename")
    after.note = ("the background stop's hand-off, the node's mesh names refresh (prod has the mesh), the answer over "
                  "SSH; the readiness poll's granularity (50 ms) falls in the container's own time")
    return [row, whole, own, before, after, wall]

"""Recreate benchmarks against the local lab (issue 17's "up from nothing / recreate"):

- `recreate`: every replica recreated after an environment change, on one node (dev-1):
  two `deploy.mode: global` busybox services (`init: true`, so a stop takes no grace
  period), `orch up` of the next value of V against docker-compose 1.29's `up -d` of the
  same file with the same change on the same engine (DOCKER_HOST = dev-1's socket), and
  against a compose run that waits: Debian's docker-compose 1.29 has no `--wait`, so that
  baseline is `up -d` followed by polling the engine (list + inspect every 50 ms)
  until every container of the project runs and, when it has a healthcheck, is healthy.
  orch also waits: each new container must have run 1 s (no healthcheck), and the same
  with `x-orch.min_healthy_time: 0s` (ready once running, as compose's `--wait`), without
  and with kept connections (`ssh.persist`).
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


def _ready_once_running(compose: str) -> str:
    """The same services, ready as soon as they run (`x-orch.min_healthy_time: 0s`):
    docker-compose's `--wait` readiness, without orch's 1 s crash-at-start guard."""
    return compose.replace("    deploy:\n      mode: global\n",
                           "    deploy:\n      mode: global\n    x-orch: {min_healthy_time: 0s}\n")


def recreate(runs: int) -> list[Row]:
    from orchestrator.lab import lab_info

    from bench.common import OwnKeeper

    lab = lab_info()
    host = lab.node("dev-1").docker_host
    row = Row("`orch up` recreating every replica after an env change: two global busybox services, one node "
              "(dev-1)", "s", baseline_name="`docker-compose up -d` with the same change, same file, same engine",
              goal=Goal("<= 1.2x", 1.2, on="ratio"))
    waited = Row("vs docker-compose up -d, then waiting until every container runs (polling the engine)", "s",
                 level=1, baseline_name="`docker-compose up -d` + polling the engine's inspect until running/healthy",
                 goal=Goal("<= 1.2x", 1.2, on="ratio"))
    fast = Row("`orch up` recreating them, ready once running (`x-orch.min_healthy_time: 0s`), vs docker-compose "
               "up -d + waiting until they run", "s", level=1,
               baseline_name="`docker-compose up -d` + polling the engine's inspect until running/healthy",
               goal=Goal("<= 1.2x", 1.2, on="ratio"))
    kept = Row("the same, connections kept (`ssh.persist`), vs docker-compose up -d + waiting", "s", level=1,
               baseline_name="`docker-compose up -d` + polling the engine's inspect until running/healthy",
               goal=Goal("<= 1.2x", 1.2, on="ratio"))
    project, fast_project, dc_project = "bench-recreate", "bench-recreate-fast", "bench-dc-recreate"
    phases: dict[str, list[float]] = {}
    fast_phases: dict[str, list[float]] = {}
    keeper = OwnKeeper()
    with tempfile.TemporaryDirectory() as tmp:
        app = _project(Path(tmp), GLOBAL)
        fast_app = Path(tmp) / "fast"
        fast_app.mkdir()
        (fast_app / "compose.yaml").write_text(_ready_once_running(GLOBAL))
        (fast_app / "environments").symlink_to(app / "environments")
        dc = lambda v: {**lab_env(V=str(v)), "DOCKER_HOST": host}  # noqa: E731
        dc_down = [COMPOSE, "-p", dc_project, "down", "-t", "2"]

        def orch_up(where: Path, name: str, v: str, env: dict | None = None) -> tuple[float, dict]:
            took, cp = run(orch("up", "--env", "dev", "-p", name, "--json"), where, {**(env or lab_env()), "V": v})
            fin = final(cp.stdout)
            if fin.get("status") != "ok" or sorted(fin.get("changed") or []) != ["a", "b"]:
                raise RuntimeError(f"orch up did not recreate a and b: {json.dumps(fin)[:800]}")
            return took, fin

        def dc_up(v: str, wait: bool) -> float:
            t0 = time.perf_counter()
            run([COMPOSE, "-p", dc_project, "up", "-d"], app, dc(v))
            if wait:
                wait_ready(host, dc_project)
            return time.perf_counter() - t0

        try:
            orch_up(app, project, "0")
            orch_up(fast_app, fast_project, "0")
            orch_up(fast_app, fast_project, "k0", keeper.env(lab_env()))  # the keeper's first: it connects
            run([COMPOSE, "-p", dc_project, "up", "-d"], app, dc(0))
            for i in range(runs + 1):  # run 0 is a warm-up
                took, fin = orch_up(app, project, f"{i + 1}")
                took_fast, fin_fast = orch_up(fast_app, fast_project, f"{i + 1}")
                time.sleep(1.0)  # between commands: the keeper's spare agent is up
                took_kept, _ = orch_up(fast_app, fast_project, f"k{i + 1}", keeper.env(lab_env()))
                took_dc = dc_up(f"{i + 1}", wait=False)
                took_wait = dc_up(f"w{i + 1}", wait=True)
                if i == 0:
                    continue
                row.add(took, took_dc)
                waited.add(took, took_wait)
                fast.add(took_fast, took_wait)
                kept.add(took_kept, took_wait)
                add_phases(phases, fin)
                add_phases(fast_phases, fin_fast)
        finally:
            keeper.stop()
            run(orch("down", "--env", "dev", "-p", project, "--json"), app, lab_env(), check=False)
            run(orch("down", "--env", "dev", "-p", fast_project, "--json"), fast_app, lab_env(), check=False)
            run(dc_down, app, dc(0), check=False)
    row.note = ("wall time of each process; orch goes over SSH to the node's agent, replaces each replica "
                "stop-first (the old container kept, renamed, until the release is live) and waits until each new "
                "container has run 1 s (it has no healthcheck: orch's crash-at-start guard); docker-compose talks "
                "to the engine's socket and returns once the containers started. orch's phases (medians): "
                + phases_note(phases))
    waited.note = ("Debian's docker-compose 1.29 has no `--wait`: `up -d`, then the engine's inspect (over its socket) "
                   "every 50 ms until every container runs (healthy, for one with a healthcheck)")
    fast.note = ("the same services with `x-orch.min_healthy_time: 0s`: a container without a healthcheck is ready "
                 "once it runs, as with docker-compose's `--wait`; orch's phases (medians): " + phases_note(fast_phases))
    kept.note = ("as above, with ssh.persist (a keeper of the bench's own; 1 s between commands, so that its spare "
                 "agent is up): no SSH handshake or agent start")
    return [row, waited, fast, kept]


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

"""Rolling deploy vs the floor, under HTTP load, on PROD (prod-1 and prod-2).

Two apps, each its own measurement (`rolling`, `rolling-deaf`): a busybox httpd service
`web` answering its version, 4 replicas (2 per node),
`deploy.update_config: {parallelism: 1, order: start-first}`, a healthcheck every
second, and `x-orch.ingress: {port: 8080, health: /}`. In `rolling` httpd runs under
Docker's init (`init: true`), which passes SIGTERM on: the old container stops at once.
In `rolling-deaf` httpd is PID 1 with no handler, so SIGTERM does nothing (like many
shell-wrapped apps) and each stop takes the whole `stop_grace_period` (10s) before
Docker's SIGKILL (the node's HAProxy owns port
8080 and forwards to the replicas). Version v1 is deployed; then, for each run, while
this host sends GET / to 10.250.0.31:8080 and 10.250.0.32:8080 (RATE requests/s per
node, each on a new connection, every answer checked: HTTP 200 and a body that is the
old or the new version), `orch up --json` deploys the next version. Recorded:

- the rolling deploy's wall time (the whole `orch up` process);
- the floor: what bringing the new containers into service costs by itself, from the
  `--json` progress events of that `orch up`: for each new container, from its
  `container.create` (or `container.start`) event to its `container.healthy` event
  (or, lacking a start event, the healthy event's `seconds`), and for each new server
  of the ingress from its `ingress.server` add to its ready (HAProxy's rise checks), as
  the controller received them (`t`). The floor is the length of the union of these
  intervals: the sum over batches when batches run one after another, and no more than
  the slowest node when the nodes roll in parallel;
- their ratio (of the medians), and the request success rate.

When `orch up` does not act on these settings (an orch from before rolling updates and
the ingress landed, in commit e1a5ba5), this measurement reports "not available:
<reason>" instead of figures: when `orch up` of v1 fails, or warns that `x-orch.ingress`
is "not acted on yet" or that `deploy.update_config` is ignored, or when the ingress
does not answer v1 afterwards. The event parser is tolerant (agent events as
`{"event": "agent", "type": ...}` or flattened as `{"event": "container.healthy"}`,
container keyed by name or id, healthy `seconds` when the start event is missing); if
the rolling events change, adjust `floor_from_events`: a run without the events it
needs says so in the notes rather than reporting a wrong floor.

Port: BENCH_ROLLING_PORT (default 8080). Projects: bench-rolling, bench-rolling-deaf. Lab:
BENCH_LAB (default orch-lab; another one, e.g. `orch lab up --name bench --nodes prod=2`,
keeps the measurement clear of other users' ingress frontends on a shared lab): the
committed environments/prod.yaml with that lab's addresses and files.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    ROOT,
    Goal,
    Row,
    add_phases,
    final,
    json_lines,
    lab_env,
    med,
    orch,
    phases_note,
    run,
    unavailable,
)

PORT = int(os.environ.get("BENCH_ROLLING_PORT", "8080"))
NODES = ("prod-1", "prod-2")
LAB = os.environ.get("BENCH_LAB", "orch-lab")
RATE = 30.0  # requests per second per node: 60/s in all
REPLICAS = 4

COMPOSE = """\
services:
  web:
    image: busybox
INIT_AND_GRACE    command: ["sh", "-c", "mkdir -p /www && echo \\"$${VERSION}\\" > /www/index.html && exec httpd -f -p 80 -h /www"]
    environment:
      VERSION: ${VERSION:-v1}
    ports:
      - "PORT:80"
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 10
    deploy:
      replicas: REPLICAS
      update_config:
        parallelism: 1
        order: start-first
    x-orch:
      ingress:
        port: PORT
        health: /
"""


def _compose(init: bool, grace: str) -> str:
    head = ("    init: true\n" if init else "") + f"    stop_grace_period: {grace}\n"
    return COMPOSE.replace("INIT_AND_GRACE", head).replace("PORT", str(PORT)).replace("REPLICAS", str(REPLICAS))


@dataclass(frozen=True)
class App:
    project: str
    compose: str
    name: str  # the main row's
    success: str  # the success-rate row's


APPS = {
    "rolling": App("bench-rolling", _compose(True, "2s"),
                   "rolling deploy vs the floor: busybox httpd, 4 replicas on prod (2 nodes), parallelism 1, "
                   "start-first, under HTTP load",
                   "request success rate during the rolling deploy"),
    "deaf": App("bench-rolling-deaf", _compose(False, "10s"),
                "rolling deploy vs the floor, SIGTERM-deaf app (busybox httpd as PID 1, stop_grace_period 10s): "
                "4 replicas on prod (2 nodes), parallelism 1, start-first, under HTTP load",
                "request success rate during the SIGTERM-deaf rolling deploy"),
}
NAMES = APPS["rolling"].name
GOAL = Goal("<= 1.5x", 1.5, on="ratio")  # issue 17
SUCCESS = APPS["rolling"].success
SUCCESS_GOAL = Goal("100 %", 100.0, higher_is_better=True)

# What `orch up` says while it does not act on the settings yet.
NOT_YET = (re.compile(r"x-orch\.ingress is not acted on yet"), re.compile(r"ignored deploy\.update_config"),
           re.compile(r"not acted on yet"))


# ----------------------------------------------------------------------------- the floor


def _kind(ev: dict) -> str:
    if ev.get("event") == "agent":
        return str(ev.get("type") or "")
    return str(ev.get("type") or ev.get("event") or "")


def floor_from_events(events: list[dict]) -> dict:
    """The floor of a deploy from its `--json` events (see the module's docstring), and
    where the rest of the time went when the events say so.

    Returns {"floor": seconds or None, "containers": n, "batches": n, "sum": seconds,
    "in_batches", "ingress", "drained", "span": seconds or None}:
    `batches` are the groups of overlapping intervals (container and ingress rise), `sum`
    the plain sum of the container intervals; `in_batches` sums the agent's
    `rollout.start` -> `rollout.done` per node and batch, `ingress` the ingress's
    `ingress.server` add -> ready (HAProxy's rise checks) per server, `drained` per batch
    the time from the old server's drain (its first `ingress.server` maint: 0 sessions left)
    to the batch's `rollout.done` (the old container's stop, when it is on the critical
    path); `span` from the first batch's `rollout.start` to the last one's `rollout.done`.
    Missing events give None for what they would measure.
    """
    open_: dict[tuple, float] = {}
    intervals: list[tuple[float, float]] = []
    rises: list[tuple[float, float]] = []
    batch_open: dict[tuple, float] = {}
    in_batches: list[float] = []
    server_open: dict[tuple, float] = {}
    maint: dict[str, float] = {}  # node -> when the batch's old server was drained
    drained: list[float] = []
    starts: list[float] = []  # the batches' rollout.start (batch > 0: not a settle)
    ends: list[float] = []
    for ev in events:
        kind, t = _kind(ev), ev.get("t")
        if not isinstance(t, (int, float)):
            continue
        t = float(t)
        node = ev.get("node") or ""
        if kind == "rollout.start" and ev.get("batch"):
            starts.append(t)
        if kind == "rollout.done" and ev.get("batch"):
            ends.append(t)
        if kind == "rollout.start":
            batch_open[(node, ev.get("batch"))] = t
            maint.pop(node, None)
        elif kind == "rollout.done" and (node, ev.get("batch")) in batch_open:
            in_batches.append(t - batch_open.pop((node, ev.get("batch"))))
            if node in maint:
                drained.append(t - maint.pop(node))
        elif kind == "ingress.server" and ev.get("server"):
            key = (node, ev["server"])
            if ev.get("action") == "add":
                server_open[key] = t
            elif ev.get("action") == "ready" and key in server_open:
                rises.append((server_open.pop(key), t))
            elif ev.get("action") == "maint":
                maint.setdefault(node, t)  # the first: the old server drained (a later sync deletes it)
        name = ev.get("container") or ev.get("name") or ev.get("id")
        if not name:
            continue
        key = (node, str(name))
        if kind in ("container.create", "container.start"):
            open_.setdefault(key, t)
        elif kind.endswith(".healthy") and kind.startswith("container"):
            start = open_.pop(key, None)
            if start is None and isinstance(ev.get("seconds"), (int, float)):
                start = t - float(ev["seconds"])
            if start is not None:
                intervals.append((start, t))
    merged: list[list[float]] = []
    for a, b in sorted(intervals + rises):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return {"floor": sum(b - a for a, b in merged) if intervals else None, "containers": len(intervals),
            "batches": len(merged), "sum": sum(b - a for a, b in intervals),
            "in_batches": sum(in_batches) if in_batches else None,
            "ingress": sum(b - a for a, b in rises) if rises else None,
            "drained": sum(drained) if drained else None,
            "span": (max(ends) - min(starts)) if starts and ends else None}


# ----------------------------------------------------------------------------- the load


class Load:
    """GET / on every target at a fixed rate, each request on a new connection; every
    answer is checked against the versions allowed at that moment."""

    def __init__(self, targets: list[tuple[str, int]], rate: float, allowed: set[str]):
        self.targets, self.interval, self.allowed = targets, 1.0 / rate, set(allowed)
        self.results: list[tuple[str, float, bool, str]] = []  # target, sent at, ok, body or error
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=48)
        self._threads = [threading.Thread(target=self._pace, args=(t,), daemon=True) for t in targets]

    def _one(self, target: tuple[str, int], sent: float) -> None:
        ok, what = False, ""
        try:
            c = http.client.HTTPConnection(*target, timeout=5)
            c.request("GET", "/", headers={"Connection": "close"})
            r = c.getresponse()
            body = r.read().decode(errors="replace").strip()
            c.close()
            ok = r.status == 200 and body in self.allowed
            what = body if ok else f"HTTP {r.status} {body[:60]!r}"
        except Exception as exc:  # refused, reset, timeout: all count as failures
            what = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.results.append((f"{target[0]}:{target[1]}", sent, ok, what))

    def _pace(self, target: tuple[str, int]) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.02))
                continue
            self._pool.submit(self._one, target, next_at)
            next_at += self.interval

    def start(self) -> "Load":
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._pool.shutdown(wait=True)
        seconds = time.monotonic() - self.started
        total = len(self.results)
        failed = [r for r in self.results if not r[2]]
        return {"total": total, "ok": total - len(failed), "seconds": seconds,
                "rate": total / seconds if seconds else 0.0, "errors": sorted({f"{r[0]} {r[3]}" for r in failed})[:5]}


def _get(host: str, port: int) -> str:
    try:
        c = http.client.HTTPConnection(host, port, timeout=5)
        c.request("GET", "/")
        r = c.getresponse()
        return r.read().decode(errors="replace").strip() if r.status == 200 else f"HTTP {r.status}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- the measurement


def _not_yet(fin: dict, stderr: str) -> str:
    texts = [str(w) for w in fin.get("warnings") or []] + stderr.splitlines()
    for text in texts:
        if any(p.search(text) for p in NOT_YET):
            return text.replace("orch: warning: ", "").strip()
    return ""


def _skip(app: App, reason: str) -> list[Row]:
    return [unavailable(app.name, "not available: " + reason, goal=GOAL),
            unavailable(app.success, "not available", unit="%", goal=SUCCESS_GOAL)]


def rolling(runs: int) -> list[Row]:
    """httpd under Docker's init: the old containers stop at once."""
    return _rolling(APPS["rolling"], runs)


def rolling_deaf(runs: int) -> list[Row]:
    """httpd as PID 1, deaf to SIGTERM: each old container takes its stop_grace_period."""
    return _rolling(APPS["deaf"], runs)


def prod_env_for(lab) -> str:
    """environments/prod.yaml, pointed at `lab` (its subnet and state directory) when it is
    not the default one."""
    text = (ROOT / "environments" / "prod.yaml").read_text()
    if lab.name == "orch-lab":
        return text
    prefix = lab.host_address.rsplit(".", 1)[0] + "."
    return text.replace("10.250.0.", prefix).replace("/var/lib/orch-lab/", f"{lab.state_dir}/")


def _rolling(spec: App, runs: int) -> list[Row]:
    from orchestrator.lab import lab_info

    lab = lab_info(LAB)
    targets = [(lab.node(n).address, PORT) for n in NODES]
    env = lab_env()
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "rolling"
        (app / "environments").mkdir(parents=True)
        (app / "environments" / "prod.yaml").write_text(prod_env_for(lab))
        (app / "compose.yaml").write_text(spec.compose)
        down = orch("down", "--env", "prod", "-p", spec.project, "--json")
        run(down, app, env, check=False)
        try:
            return _measure(spec, runs, app, env, targets, [lab.node(n).docker_host for n in NODES])
        finally:
            run(down, app, env, check=False)


def _kept_gone(project: str, engines: list[str], budget: float = 120.0) -> float:
    """Until no kept (`-prev`) container of the project is left on the nodes: `orch up`
    returns before the old containers' stops end, and the next deploy would wait for them
    (the environment's work lock). Seconds waited."""
    from agent.engine_reads import SocketReads

    t0 = time.monotonic()
    readers = [SocketReads(h[len("unix://"):]) for h in engines]
    try:
        while any(c.name.endswith("-prev") for r in readers for c in r.containers([f"io.orch.project={project}"])):
            if time.monotonic() - t0 > budget:
                raise RuntimeError(f"{project}: kept containers still there after {budget:.0f}s")
            time.sleep(0.2)
    finally:
        for r in readers:
            r.close()
    return time.monotonic() - t0


def _measure(spec: App, runs: int, app: Path, env: dict, targets: list[tuple[str, int]],
             engines: list[str]) -> list[Row]:
    up = orch("up", "--env", "prod", "-p", spec.project, "--json")
    _, cp = run(up, app, {**env, "VERSION": "v1"}, check=False)
    fin = final(cp.stdout)
    if cp.returncode != 0:
        err = (fin.get("error") or {}).get("message") or (cp.stderr.strip().splitlines() or ["?"])[-1]
        return _skip(spec, f"`orch up` of a service with x-orch.ingress and deploy.update_config failed "
                     f"(exit {cp.returncode}): {err[:300]}")
    why = _not_yet(fin, cp.stderr)
    if why:
        return _skip(spec, f"`orch up` warns: {why[:300]}")
    answers = {f"{h}:{p}": _get(h, p) for h, p in targets}
    if any(a != "v1" for a in answers.values()):
        return _skip(spec, f"after `orch up` of v1 the ingress does not answer v1: {answers}")

    row = Row(spec.name, "s", baseline_name="the floor: new containers' create + start + time to healthy, and "
              "their ingress servers' add -> ready (HAProxy rise), from orch up's --json events", goal=GOAL)
    apply = Row("of which the apply phase (orch's `timings`)", "s", level=1)
    success = Row(spec.success, "%", goal=SUCCESS_GOAL)
    phases: dict[str, list[float]] = {}
    notes: list[str] = []
    counted: list[str] = []
    parts: dict[str, list[float]] = {}
    rates: list[float] = []
    errors: list[str] = []
    totals = [0, 0]
    settled: list[float] = []
    for i in range(runs):
        old, new = f"v{i + 1}", f"v{i + 2}"
        settled.append(_kept_gone(spec.project, engines))  # the previous deploy's last stop, outside the timing
        load = Load(targets, RATE, {old, new}).start()
        time.sleep(1.0)
        took, cp = run(up, app, {**env, "VERSION": new}, check=False)
        time.sleep(1.0)
        got = load.stop()
        fin = final(cp.stdout)
        if cp.returncode != 0 or fin.get("status") != "ok":
            err = (fin.get("error") or {}).get("message") or (cp.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"the rolling deploy {old} -> {new} failed (exit {cp.returncode}): {err[:500]}")
        after = {f"{h}:{p}": _get(h, p) for h, p in targets}
        if any(a != new for a in after.values()):
            raise RuntimeError(f"after the rolling deploy to {new} the ingress answers {after}")
        fl = floor_from_events(json_lines(cp.stdout))
        row.samples.append(took)
        if fl["floor"] is not None:
            row.baseline.append(fl["floor"])
        counted.append(f"{fl['containers']} containers, {fl['batches']} disjoint interval(s)")
        if fl["in_batches"] is not None:
            parts.setdefault("in the agent's batches (rollout.start -> done)", []).append(fl["in_batches"])
            parts.setdefault("outside them (connect, lock, ledger, monitor window, record, process)", []).append(
                took - fl["in_batches"])
        if fl["ingress"] is not None:
            parts.setdefault("ingress add -> ready (HAProxy rise checks)", []).append(fl["ingress"])
        if fl["span"] is not None:
            parts.setdefault("first rollout.start -> last rollout.done (the rolling part)", []).append(fl["span"])
        if fl["drained"] is not None:
            parts.setdefault("old server drained -> batch done (the old container's stop when the batch waits "
                             "for it)", []).append(fl["drained"])
        apply.samples.append((fin.get("timings") or {}).get("apply", float("nan")))
        add_phases(phases, fin)
        success.samples.append(100.0 * got["ok"] / got["total"] if got["total"] else 0.0)
        rates.append(got["rate"])
        totals[0] += got["ok"]
        totals[1] += got["total"]
        errors += got["errors"]
    if not row.baseline:
        notes.append("no container.create/start -> container.healthy events found in `orch up --json`: "
                     "floor_from_events needs updating for the final rolling events")
    else:
        same = len(set(counted)) == 1
        notes.append(("floor of each run: " + counted[0]) if same else ("floor per run: " + "; ".join(counted)))
    if parts:
        notes.append("where the time went (medians of per-run sums): " + ", ".join(
            f"{k} {med(v):.1f}s" for k, v in parts.items()))
    if any(c.split()[0] != str(REPLICAS) for c in counted):
        notes.append(f"expected {REPLICAS} new containers per run: check the events")
    notes.append(f"before each run, outside the timing, until the previous run's old containers had stopped and "
                 f"were removed by the nodes (`orch up` does not wait for those stops): up to {max(settled):.1f}s")
    row.note = "; ".join(notes) + "; orch's phases (medians): " + phases_note(phases)
    apply.samples = [s for s in apply.samples if s == s]  # drop NaN (no apply timing)
    success.note = (f"{totals[0]:,} of {totals[1]:,} requests answered with the old or the new version; "
                    f"load {min(rates):.0f}-{max(rates):.0f} req/s over both nodes, from 1 s before to 1 s after "
                    "each deploy" + (f"; failures: {'; '.join(sorted(set(errors))[:3])}" if errors else ""))
    return [row, apply, success]


if __name__ == "__main__":  # pragma: no cover
    fn = rolling_deaf if "deaf" in sys.argv[1:] else rolling
    print(json.dumps([r.to_json() for r in fn(int(sys.argv[1]) if len(sys.argv) > 1 else 1)], indent=1))

"""Release pipeline benchmarks against the local lab, on a copy of examples/hello
(project bench-hello, host ports 39090/39091, away from the e2e tests' ranges):

- `promote`: promotion test -> prod (2 nodes) of a release whose images are in the
  registry but not on the prod nodes, against the sum of its raw parts timed by Docker
  alone on the same nodes: pull both images, then start api and wait until healthy,
  then web (the same dependency order and healthchecks), both nodes in parallel.
  Before each run the prod containers and the project's images are removed from the
  prod nodes.
- `push`: rebuild + push after a one-line change of the api's code: the bytes pushed
  (only the changed layer should travel) and the wall time of `orch build` + `orch push`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.common import ORCH, ROOT, Goal, Row, add_phases, final, lab_env, phases_note, run

PROJECT = "bench-hello"
PORTS = {"HELLO_WEB_PORT": "39090", "HELLO_API_PORT": "39091"}
PROD = ("prod-1", "prod-2")


def _run(argv: list[str], cwd: Path, env: dict, check: bool = True) -> tuple[float, dict]:
    """Wall time and the final JSON object of an orch command."""
    took, cp = run(argv, cwd, env, check=check)
    return took, final(cp.stdout)


def _engines(lab) -> dict:
    import docker

    return {n: docker.APIClient(base_url=lab.node(n).docker_host, timeout=300) for n in PROD}


def _clear_prod(engines: dict, refs: list[str]) -> None:
    """No container or image of the project left on the prod nodes (layers shared with
    other images stay, as they would on a real node)."""

    def one(api) -> None:
        for c in api.containers(all=True, filters={"name": "bench-raw-"}):
            api.remove_container(c["Id"], force=True)
        for ref in refs:
            try:
                api.remove_image(ref, force=True)
            except Exception:
                pass

    list(ThreadPoolExecutor(len(engines)).map(one, engines.values()))


def _raw_promotion(engines: dict, images: dict[str, str], auth: dict) -> dict[str, float]:
    """Docker alone, per node in parallel: pull both, then api (healthy), then web (healthy)."""

    def wait_healthy(api, cid: str) -> None:
        while True:
            state = api.inspect_container(cid)["State"]
            if (state.get("Health") or {}).get("Status") == "healthy":
                return
            if state["Status"] not in ("created", "running"):
                raise RuntimeError(f"{cid[:12]} is {state['Status']}")
            time.sleep(0.05)

    def start(api, name: str, ref: str, port: int, target: int, test: list[str]) -> None:
        hc = {"Test": test, "Interval": 1_000_000_000, "Timeout": 2_000_000_000, "Retries": 10}
        host = api.create_host_config(port_bindings={target: port}, init=True)
        cid = api.create_container(ref, name=name, healthcheck=hc, host_config=host, ports=[target],
                                   environment={"HELLO_ENV": "prod"})["Id"]
        api.start(cid)
        wait_healthy(api, cid)

    def one(item) -> dict[str, float]:
        node, api = item
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda ref: [*api.pull(ref.split("@")[0], tag=ref.split("@")[1], auth_config=auth,
                                                 stream=True, decode=True)], images.values()))
        t1 = time.perf_counter()
        start(api, f"bench-raw-api-{node}", images["api"], int(PORTS["HELLO_API_PORT"]), 8081,
              ["CMD", "busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/health.json"])
        start(api, f"bench-raw-web-{node}", images["web"], int(PORTS["HELLO_WEB_PORT"]), 8080,
              ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"])
        t2 = time.perf_counter()
        return {"pull": t1 - t0, "start": t2 - t1, "total": t2 - t0}

    t0 = time.perf_counter()
    per_node = list(ThreadPoolExecutor(len(engines)).map(one, engines.items()))
    wall = time.perf_counter() - t0
    return {"pull": max(p["pull"] for p in per_node), "start": max(p["start"] for p in per_node), "total": wall}




@contextmanager
def _hello_app(deployed: bool = True) -> Iterator[tuple[Path, dict]]:
    """A copy of examples/hello (with a BENCH_RUN value, so each run can make a new release);
    afterwards the project is taken down everywhere (when it was deployed) and its images
    removed from this host."""
    env = lab_env(**PORTS)
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "hello"
        shutil.copytree(ROOT / "examples" / "hello", app)
        compose = app / "compose.yaml"
        compose.write_text(compose.read_text().replace("      HELLO_ENV: ${HELLO_ENV:-local}\n",
                                                       "      HELLO_ENV: ${HELLO_ENV:-local}\n"
                                                       "      BENCH_RUN: ${BENCH_RUN:-0}\n", 1))
        try:
            yield app, env
        finally:
            for e in ("prod", "test", "dev") if deployed else ():
                _run([ORCH, "down", "--env", e, "-p", PROJECT, "--json"], app, env, check=False)
            try:
                from orchestrator.io.images import docker_client

                api = docker_client().api
                for image in api.images():
                    for tag in image.get("RepoTags") or []:
                        if f"/{PROJECT}/" in tag:
                            api.remove_image(tag)
            except Exception:
                pass


def promote(runs: int) -> list[Row]:
    from orchestrator.core.environments import load_environment
    from orchestrator.lab import lab_info

    lab = lab_info()
    orch = [ORCH]
    row = Row("`orch promote` test -> prod (2 nodes) vs raw pull + start: hello (2 services), images not on the nodes",
              "s", baseline_name="Docker alone: pull + start api, then web, until healthy, both nodes in parallel",
              goal=Goal("<= 2x", 2.0, on="ratio"))
    raw_pull = Row("of which (raw) pull of both images, nodes in parallel", "s", level=1)
    raw_start = Row("of which (raw) start api, then web, until healthy", "s", level=1)
    phases: dict[str, list[float]] = {}
    with _hello_app() as (app, env):
        creds = load_environment("prod", app / "environments").registry.credentials()
        auth = {"username": creds.username, "password": creds.password, "serveraddress": lab.registry}
        engines = _engines(lab)
        for i in range(runs):
            _run(orch + ["up", "--env", "dev", "-p", PROJECT, "--json"], app, {**env, "BENCH_RUN": str(i)})
            _run(orch + ["promote", PROJECT, "--to", "test", "--json"], app, env)
            _run(orch + ["down", "--env", "prod", "-p", PROJECT, "--json"], app, env)
            _, hist = _run(orch + ["history", "--env", "test", "-p", PROJECT, "--json"], app, env)
            images = next(r for r in hist["releases"] if r["status"] == "live")["services"]
            _clear_prod(engines, list(images.values()))
            took, fin = _run(orch + ["promote", PROJECT, "--to", "prod", "--approve", "--json"], app, env)
            if fin.get("status") != "ok" or not fin.get("new_release"):
                raise RuntimeError(f"the promotion did not deploy a new release: {json.dumps(fin)[:800]}")
            row.samples.append(took)
            add_phases(phases, fin)
            _run(orch + ["down", "--env", "prod", "-p", PROJECT, "--json"], app, env)
            _clear_prod(engines, list(images.values()))
            parts = _raw_promotion(engines, images, auth)
            _clear_prod(engines, list(images.values()))
            row.baseline.append(parts["total"])
            raw_pull.samples.append(parts["pull"])
            raw_start.samples.append(parts["start"])
    row.note = ("wall time of the process: read test's release and health, connect, lock, plan, pull, start api then "
                "web until healthy, record, verify (2 HTTP checks per node); raw: docker SDK straight at each prod "
                "engine's socket (no SSH, ledger, lock or verify). orch's phases (medians): "
                + phases_note(phases, 0.05))
    return [row, raw_pull, raw_start]


def push(runs: int) -> list[Row]:
    orch = [ORCH]
    pushed = Row("bytes pushed after a one-line change (api's message.txt): hello api + web", "B",
                 goal=Goal("< 10 kB", 10_000))
    build_push = Row("of which wall time: `orch build` + `orch push`", "s", level=1)
    with _hello_app(deployed=False) as (app, env):
        msg = app / "api" / "app" / "message.txt"
        for i in range(runs + 1):  # run 0: a warm-up, so every layer but the changed one is in the build cache
            msg.write_text(f"hello from the api, bench change {uuid.uuid4().hex[:8]}\n")
            version = f"bench-{uuid.uuid4().hex[:8]}"
            t0 = time.perf_counter()
            _run(orch + ["build", "--env", "dev", "-p", PROJECT, "--version", version, "--json"], app, env)
            _, out = _run(orch + ["push", "--env", "dev", "-p", PROJECT, "--version", version, "--json"], app, env)
            took = time.perf_counter() - t0
            if i:
                build_push.samples.append(took)
                pushed.samples.append(out["bytes_pushed"])
                by = {p["service"]: p for p in out["pushed"]}
    pushed.note = (f"api: {by['api']['layers_pushed']} layer(s) sent, {by['api']['bytes_pushed']:,} B of a "
                   f"{by['api']['image_bytes'] / 1e6:.1f} MB image; web (unchanged): {by['web']['layers_pushed']} "
                   f"layers, {by['web']['bytes_pushed']:,} B (its manifest); the figure is orch push's own count")
    build_push.note = "the Docker build cache keeps every layer but the changed COPY"
    return [pushed, build_push]

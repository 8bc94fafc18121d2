"""Release pipeline benchmarks against the local lab, on a copy of examples/hello
(project bench-hello, host ports 39090/39091, away from the e2e tests' ranges):

- promotion test -> prod (2 nodes) of a release whose images are in the registry but
  not on the prod nodes, against the sum of its raw parts timed by Docker alone on the
  same nodes: pull both images, then start api and wait until healthy, then web (the
  same dependency order and healthchecks), both nodes in parallel. Before each run the
  prod containers and the project's images are removed from the prod nodes.
- rebuild + push after a one-line change of the api's code: wall time of `orch build`
  + `orch push`, and the bytes pushed (only the changed layer should travel).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.run import ORCH, ROOT, Row

PROJECT = "bench-hello"
PORTS = {"HELLO_WEB_PORT": "39090", "HELLO_API_PORT": "39091"}
PROD = ("prod-1", "prod-2")


def _run(argv: list[str], cwd: Path, env: dict, check: bool = True) -> tuple[float, dict]:
    import subprocess

    t0 = time.perf_counter()
    cp = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {cp.returncode}:\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
    lines = [ln for ln in cp.stdout.strip().splitlines() if ln.startswith("{")]
    return took, (json.loads(lines[-1]) if lines else {})


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


def bench_pipeline(runs: int) -> list[Row]:
    from orchestrator.environments import load_environment
    from orchestrator.lab import lab_info

    lab = lab_info()
    env = {**os.environ, **PORTS, "NO_COLOR": "1", "ORCH_LOCK_WAIT": "600"}
    runs = max(1, min(runs, 5))
    promo = Row("orch promote test -> prod (2 nodes), images in the registry, not on the nodes", "s")
    raw = Row("  raw parts by Docker alone: pull + start (healthy), same nodes", "s")
    raw_pull = Row("    of which pull (both images, nodes in parallel)", "s")
    raw_start = Row("    of which start api, then web, until healthy", "s")
    ratio = Row("  ratio orch promote / raw parts", "x")
    build_push = Row("rebuild + push after a one-line change (orch build + orch push)", "s")
    pushed = Row("  bytes pushed for that change (api + web)", "B")
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "hello"
        shutil.copytree(ROOT / "examples" / "hello", app)
        compose = app / "compose.yaml"  # a value to change per run, so each run promotes a new release
        compose.write_text(compose.read_text().replace("      HELLO_ENV: ${HELLO_ENV:-local}\n",
                                                       "      HELLO_ENV: ${HELLO_ENV:-local}\n"
                                                       "      BENCH_RUN: ${BENCH_RUN:-0}\n", 1))
        orch = [ORCH]
        creds = load_environment("prod", app / "environments").registry.credentials()
        auth = {"username": creds.username, "password": creds.password, "serveraddress": "10.250.0.1:5000"}
        engines = _engines(lab)
        phases: dict[str, list[float]] = {}
        try:
            for i in range(runs):
                _run(orch + ["up", "--env", "dev", "-p", PROJECT, "--json"], app, {**env, "BENCH_RUN": str(i)})
                _run(orch + ["promote", PROJECT, "--to", "test", "--json"], app, env)
                _run(orch + ["down", "--env", "prod", "-p", PROJECT, "--json"], app, env)
                _, hist = _run(orch + ["history", "--env", "test", "-p", PROJECT, "--json"], app, env)
                images = next(r for r in hist["releases"] if r["status"] == "live")["services"]
                _clear_prod(engines, list(images.values()))
                took, final = _run(orch + ["promote", PROJECT, "--to", "prod", "--approve", "--json"], app, env)
                assert final["status"] == "ok" and final["new_release"], final
                promo.samples.append(took)
                for k, v in final["timings"].items():
                    phases.setdefault(k, []).append(v)
                _run(orch + ["down", "--env", "prod", "-p", PROJECT, "--json"], app, env)
                _clear_prod(engines, list(images.values()))
                parts = _raw_promotion(engines, images, auth)
                _clear_prod(engines, list(images.values()))
                raw.samples.append(parts["total"])
                raw_pull.samples.append(parts["pull"])
                raw_start.samples.append(parts["start"])
                ratio.samples.append(took / parts["total"])
            promo.note = ("wall time of the process: read test's release and health, connect, lock, plan, pull, "
                          "start api then web until healthy, record, verify (HTTP checks); phases (median): "
                          + ", ".join(f"{k} {statistics.median(v):.2f}s" for k, v in sorted(phases.items())
                                      if statistics.median(v) >= 0.05))
            raw.note = "docker SDK straight at each prod node's engine socket, both nodes in parallel"

            for i in range(runs):
                msg = app / "api" / "app" / "message.txt"
                msg.write_text(f"hello from the api, bench change {uuid.uuid4().hex[:8]}\n")
                version = f"bench-{uuid.uuid4().hex[:8]}"
                t0 = time.perf_counter()
                _run(orch + ["build", "--env", "dev", "-p", PROJECT, "--version", version, "--json"], app, env)
                _, push = _run(orch + ["push", "--env", "dev", "-p", PROJECT, "--version", version, "--json"],
                               app, env)
                build_push.samples.append(time.perf_counter() - t0)
                pushed.samples.append(push["bytes_pushed"])
                by = {p["service"]: p for p in push["pushed"]}
                pushed.note = (f"api: {by['api']['layers_pushed']} layer(s) sent, {by['api']['bytes_pushed']} B "
                               f"of a {by['api']['image_bytes'] / 1e6:.1f} MB image; web (unchanged): "
                               f"{by['web']['layers_pushed']} layers, {by['web']['bytes_pushed']} B (manifest)")
            build_push.note = "the Docker build cache keeps every layer but the changed COPY"
        finally:
            for e in ("prod", "test", "dev"):
                _run(orch + ["down", "--env", e, "-p", PROJECT, "--json"], app, env, check=False)
            try:
                from orchestrator.images import docker_client

                api = docker_client().api
                for image in api.images():
                    for tag in image.get("RepoTags") or []:
                        if f"/{PROJECT}/" in tag:
                            api.remove_image(tag)
            except Exception:
                pass
    return [promo, raw, raw_pull, raw_start, ratio, build_push, pushed]


if __name__ == "__main__":  # pragma: no cover
    import sys

    for r in bench_pipeline(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(r.cells())

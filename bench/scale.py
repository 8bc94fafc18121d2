"""5,000 services: load + plan time and peak memory (bench/scale_probe.py in a child
process, against the repository's prod environment: 2 nodes), beside docker-compose
1.29's `config -q` on the same file (load + validate only; it has no plan). No lab
needed: nothing is contacted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import COMPOSE, ROOT, Goal, Row, lab_env

SERVICES, EDGES = 5000, 20000
BASELINE_RUNS = 2  # docker-compose takes 40-50 s on this file on an idle machine (2 min when busy)


def _rss_of(argv: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a child, from wait4's rusage."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        took = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {err.read()[-2000:]}")
    return took, usage.ru_maxrss / 1024


def scale(runs: int) -> list[Row]:
    from bench.gen import write_project

    env = lab_env()
    label = f"{SERVICES:,} services / {EDGES:,} depends_on edges, prod (2 nodes)"
    t_row = Row(f"load + plan, {label}", "s", baseline_name="`docker-compose config -q`, same file",
                goal=Goal("< 10 s", 10.0))
    m_row = Row(f"peak RSS of load + plan, {label}", "MB", baseline_name="`docker-compose config -q`",
                goal=Goal("< 500 MB", 500.0))
    parts: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        compose = write_project(Path(tmp), services=SERVICES, edges=EDGES, project_name=None)
        data: dict = {}
        for i in range(runs):
            out = subprocess.run([sys.executable, "-m", "bench.scale_probe", str(compose), str(ROOT / "environments"),
                                  "prod"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
            data = json.loads(out.stdout)
            t_row.samples.append(data["total_s"])
            m_row.samples.append(data["peak_rss_mb"])
            for k in ("import_s", "load_s", "compile_s", "plan_s"):
                parts.setdefault(k, []).append(data[k])
            if i < BASELINE_RUNS:
                took, rss = _rss_of([COMPOSE, "-p", "synthetic", "-f", str(compose), "config", "-q"], Path(tmp), env)
                t_row.baseline.append(took)
                m_row.baseline.append(rss)
    t_row.note = (f"{data.get('waves')} waves, {data.get('steps')} plan steps; in the child (medians): "
                  + ", ".join(f"{k[:-2]} {statistics.median(v):.2f}s" for k, v in parts.items())
                  + "; docker-compose has no plan step")
    m_row.note = "ru_maxrss of the child process, imports included"
    return [t_row, m_row]

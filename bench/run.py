"""`make bench`: every measurement side by side in one run, written to bench/RESULTS.md.

Each measurement is repeated; the table shows the median with min and max. Nothing
here runs in `make test`; no test asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ORCH = str(BIN / "orch")


@dataclass
class Row:
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    note: str = ""

    def cells(self) -> list[str]:
        if not self.samples:
            return [self.name, "n/a", "", "", self.note]
        med = statistics.median(self.samples)
        return [self.name, f"{med:.3f} {self.unit}", f"{min(self.samples):.3f}",
                f"{max(self.samples):.3f}", self.note + f" (n={len(self.samples)})"]


def timed(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bench_cli_startup(runs: int) -> list[Row]:
    from bench.gen import write_project

    with tempfile.TemporaryDirectory() as tmp:
        compose = write_project(Path(tmp), services=10, edges=12)
        help_row = Row("orch --help wall time", "s")
        config_row = Row("orch config (10 services) wall time", "s")
        for _ in range(runs):
            help_row.samples.append(timed([ORCH, "--help"]))
            config_row.samples.append(timed([ORCH, "config", "-f", str(compose)]))
    return [help_row, config_row]


def bench_scale(runs: int, services: int = 5000, edges: int = 20000) -> list[Row]:
    from bench.gen import write_project

    with tempfile.TemporaryDirectory() as tmp:
        compose = write_project(Path(tmp), services=services, edges=edges)
        time_row = Row(f"load + waves, {services} services / {edges} edges", "s")
        mem_row = Row(f"peak RSS, {services} services / {edges} edges", "MB")
        for _ in range(runs):
            out = subprocess.run([sys.executable, "-m", "bench.scale_probe", str(compose)], cwd=ROOT,
                                 check=True, capture_output=True, text=True)
            data = json.loads(out.stdout)
            time_row.samples.append(data["total_s"])
            mem_row.samples.append(data["peak_rss_mb"])
        time_row.note = f"{data['waves']} waves; load {data['load_s']:.2f}s, graph {data['graph_s']:.2f}s"
    return [time_row, mem_row]


def bench_deploy(runs: int) -> list[Row]:
    from bench.deploy import bench_deploy as run

    return run(runs)


def bench_pipeline(runs: int) -> list[Row]:
    from bench.pipeline import bench_pipeline as run

    return run(runs)


BENCHES = {"cli": bench_cli_startup, "scale": bench_scale, "deploy": bench_deploy, "pipeline": bench_pipeline}


def write_results(rows: list[Row], path: Path, merge: bool = False) -> None:
    """The table of rows; with merge (--only), the other rows already in path are kept
    (a row of the same measurement is replaced in place, new ones are appended)."""
    table = ["| " + " | ".join(r.cells()) + " |" for r in rows]
    if merge and path.exists():
        new = {r.name: line for r, line in zip(rows, table)}
        old = [ln for ln in path.read_text().splitlines() if ln.startswith("| ") and not ln.startswith("| measurement")]
        kept = []
        for ln in old:
            name = ln[2:].split(" | ", 1)[0]
            kept.append(new.pop(name) if name in new else ln)
        table = kept + [line for r, line in zip(rows, table) if r.name in new]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}",
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "Medians of several runs in one `make bench` run; min and max beside them.",
        "",
        "| measurement | median | min | max | notes |",
        "|---|---|---|---|---|",
    ]
    lines += table
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    rows: list[Row] = []
    for name, fn in BENCHES.items():
        if args.only and name not in args.only:
            continue
        print(f"bench: {name} ...", flush=True)
        rows += fn(args.runs)
    write_results(rows, args.out, merge=bool(args.only))
    print(args.out.read_text())


if __name__ == "__main__":
    main()

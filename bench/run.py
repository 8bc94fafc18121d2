"""`make bench`: every measurement side by side in one run, written to bench/RESULTS.md.

    python -m bench.run                        # all of them, default runs each (~11 min on 2 idle cores)
    python -m bench.run --runs 3               # 3 runs of every measurement
    python -m bench.run --runs up=3,cli=20     # per measurement
    python -m bench.run --only noop rolling    # these only, merged into the existing results
    python -m bench.run --list                 # the measurements and their default runs

Each measurement is repeated; the table shows the median with min and max, beside the
baseline's (when there is one) and the ratio of the medians. The raw samples go to
bench/results.json, from which RESULTS.md is written; `--only` replaces the rows of
the measurements it ran and keeps the others. A measurement that fails or cannot run
yet becomes a row saying so; the others still run. Nothing here runs in `make test`;
no test asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import COMPOSE, ROOT, Row  # noqa: E402


@dataclass
class Measurement:
    name: str
    module: str  # bench.<module>:<function>
    runs: int  # default number of runs (sized so a full `make bench` stays under ~15 minutes)
    lab: bool  # needs the lab
    what: str

    def function(self) -> Callable[[int], list[Row]]:
        mod, fn = self.module.split(":")
        return getattr(__import__(mod, fromlist=[fn]), fn)


MEASUREMENTS = [
    Measurement("cli", "bench.startup:cli", 10, False, "CLI start-up: --help, --version, config vs docker-compose"),
    Measurement("scale", "bench.scale:scale", 5, False, "5,000-service load + plan: time and peak RSS"),
    Measurement("up", "bench.deploy:up", 5, True, "orch up vs docker-compose up -d, one node, from nothing"),
    Measurement("noop", "bench.deploy:noop", 8, True, "no-op re-deploy on prod (2 nodes), and the lab's floor"),
    Measurement("recreate", "bench.recreate:recreate", 3, True, "recreate after an env change, one node, vs "
                "docker-compose up -d (and + waiting until running)"),
    Measurement("batches", "bench.recreate:batches", 3, True, "per-batch overhead of a rolling update, a global "
                "service on prod (2 nodes)"),
    Measurement("promote", "bench.pipeline:promote", 3, True, "promotion test -> prod vs raw pull + start"),
    Measurement("push", "bench.pipeline:push", 5, True, "bytes pushed after a one-line change"),
    Measurement("rolling", "bench.rolling:rolling", 3, True, "rolling deploy under load vs the floor"),
    Measurement("rolling-deaf", "bench.rolling:rolling_deaf", 3, True, "rolling deploy under load vs the floor, "
                "an app deaf to SIGTERM (stop_grace_period 10s)"),
    Measurement("mesh", "bench.mesh:mesh", 3, True, "service mesh: latency and throughput across nodes vs one node"
                " and the raw bridge"),
    Measurement("https", "bench.https:https", 3, True, "HTTPS through the ingress vs plain HTTP: requests/s,"
                " added latency"),
    Measurement("transfer", "bench.transfer:transfer", 1, True, "registry-less transfer of a 200 MB image to 1, 2, 4 "
                "nodes vs docker save | ssh docker load and vs a registry push + pull"),
    Measurement("rtt", "bench.netem:rtt", 3, True, "no-op and one-service change on prod at 0 and 50 ms RTT "
                "(a delaying proxy): wall time and agent round trips, shop and 5 vs 30 services"),
    Measurement("sim", "bench.simscale:simscale", 3, False, "the controller alone at 10, 50, 100 light lab nodes "
                "(real sshd + agent over a fake engine): no-op wall, CPU per node, peak RSS; first deploy"),
]
BY_NAME = {m.name: m for m in MEASUREMENTS}
ALIASES = {"deploy": ["up", "noop"], "pipeline": ["promote", "push"]}  # the names before the split


# ----------------------------------------------------------------------------- machine facts


def _first(path: str, pattern: str) -> str:
    try:
        m = re.search(pattern, Path(path).read_text(), re.M)
        return m.group(1).strip() if m else ""
    except OSError:
        return ""


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    mem_kb = _first("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    facts = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _first("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor(),
        "ram_gb": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb else None,
        "os": _first("/etc/os-release", r'^PRETTY_NAME="?([^"\n]+)'),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_host_engine": _cmd(["docker", "version", "--format", "{{.Server.Version}}"]),
        "docker_compose": _cmd([COMPOSE, "version", "--short"]),
        "loadavg": _first("/proc/loadavg", r"^(\S+ \S+ \S+)"),
    }
    head = _cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    changed = {ln[3:].split(" -> ")[-1] for ln in status.splitlines() if len(ln) > 3}
    dirty = sorted({c.split("/", 1)[0] + ("/" if "/" in c else "") for c in changed if not c.startswith("bench/")})
    facts["code"] = (f"commit {head}" + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
                     if head else "unknown")
    try:  # the engines the measurements deploy to
        import docker

        from orchestrator.lab import lab_info

        versions = set()
        for n in lab_info().nodes:
            versions.add(docker.APIClient(base_url=n.docker_host, timeout=10).version()["Version"])
        facts["docker_node_engines"] = ", ".join(sorted(versions))
    except Exception as exc:
        facts["docker_node_engines"] = f"unknown ({type(exc).__name__})"
    return facts


# ----------------------------------------------------------------------------- the table


def fmt(value: float | None, unit: str) -> str:
    if value is None or value != value:
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s" if value < 1 else f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    if unit == "B":
        return f"{value / 1000:.1f} kB" if value >= 10_000 else f"{value:,.0f} B"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    return f"{value:.3g} {unit}"


def _span(samples: list[float], unit: str, median: float | None) -> str:
    if not samples:
        return ""
    lo, hi = min(samples), max(samples)
    return f"{fmt(median, unit)} ({fmt(lo, unit).split()[0]}–{fmt(hi, unit)})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_line(row: Row) -> str:
    name = ("↳ " if row.level else "") + row.name
    if row.unavailable and not row.samples:
        goal = row.goal.text if row.goal else ""
        return "| " + " | ".join(_cell(c) for c in (name, "—", "—", "—", goal, row.unavailable + (
            "; " + row.note if row.note else ""))) + " |"
    mine = _span(row.samples, row.unit, row.median())
    theirs = _span(row.baseline, row.unit, row.baseline_median())
    ratio = row.ratio()
    goal = ""
    if row.goal:
        met = row.goal.met(row)
        goal = row.goal.text + ("" if met is None else " ✓" if met else " ✗")
    notes = [f"n={len(row.samples)}" + (f"/{len(row.baseline)}" if row.baseline else "")]
    if row.baseline_name:
        notes.append("baseline: " + row.baseline_name)
    if row.note:
        notes.append(row.note)
    if row.unavailable:
        notes.append(row.unavailable)
    return "| " + " | ".join(_cell(c) for c in (name, mine, theirs or "", fmt(ratio, "x") if ratio else "",
                                                goal, "; ".join(notes))) + " |"


HEADER = """\
# Benchmark results

Written by `make bench` (`python -m bench.run`; see bench/run.py for the options). Do
not edit by hand: the figures come from bench/results.json.

Each figure is the median of n runs, with min–max in brackets (n in the notes: orch's
runs / the baseline's). Where a measurement has a baseline (the same work done by
docker-compose 1.29 or by Docker alone, on the same lab nodes and engines, or the floor
of the work itself), the ratio is orch's median / the baseline's median: below 1, orch
is faster (for a rate, MB/s, above 1). The mesh rows compare the same containers across
two nodes (through the mesh) with one node and with the raw lab bridge. A ↳ row is a part
or a companion of the row above. Goals are targets, not results (✓ met, ✗ missed): the
no-op re-deploy's "< 1 s" predates this table, the mesh's come from its issue, the others
are this harness's proposals (bench/*.py, `Goal(...)`), to be agreed on.
"""


def render(data: dict) -> str:
    m = data["machine"]
    lines = [HEADER, "## Machine", ""]
    lines += [
        f"- CPU: {m.get('cpus')} × {m.get('cpu_model')}; RAM {m.get('ram_gb')} GB",
        f"- OS: {m.get('os')}, kernel {m.get('kernel')}; Python {m.get('python')}",
        f"- Docker Engine {m.get('docker_host_engine')} (host), {m.get('docker_node_engines')} (lab nodes); "
        f"docker-compose {m.get('docker_compose')}",
        f"- Code: {m.get('code')}",
        f"- Date: {data['date']}; load average at the start: {m.get('loadavg')}",
    ]
    if data.get("context"):
        lines.append(f"- {data['context']}")
    rerun = [f"{name} ({g['date']})" for name, g in data["groups"].items() if g["date"] != data["date"]]
    if rerun:
        lines.append("- Re-run later with `--only`: " + ", ".join(rerun))
    lines.append("- Per measurement: runs, wall time, 1-minute load average at its start: " + ", ".join(
        f"{name} {g['runs']} runs {g['seconds']:.0f} s load {g.get('loadavg', '?')}"
        for name, g in data["groups"].items()))
    lines += ["", "## Results", "",
              "| measurement | orch median (min–max) | baseline median (min–max) | ratio | goal | notes |",
              "|---|---|---|---|---|---|"]
    for m_ in MEASUREMENTS:
        g = data["groups"].get(m_.name)
        if not g:
            continue
        for r in g["rows"]:
            lines.append(table_line(Row.from_json(r)))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- running


def parse_runs(values: list[str]) -> tuple[int | None, dict[str, int]]:
    every, each = None, {}
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                k, v = part.split("=", 1)
                for name in ALIASES.get(k.strip(), [k.strip()]):
                    if name not in BY_NAME:
                        raise SystemExit(f"--runs: no measurement named {name!r} ({', '.join(BY_NAME)})")
                    each[name] = max(1, int(v))
            else:
                every = max(1, int(part))
    return every, each


def run_one(m: Measurement, runs: int) -> list[Row]:
    try:
        return m.function()(runs)
    except Exception as exc:
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Row(f"{m.what}", "s", unavailable=f"failed: {type(exc).__name__}: {first[:300]}")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", action="append", default=[], metavar="N|NAME=N[,NAME=N]",
                    help="runs of every measurement, or of the named ones (default: per measurement, see --list)")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=sorted([*BY_NAME, *ALIASES]),
                    help="run only these and merge them into the existing results")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--data", type=Path, default=None, help="raw results (default: results.json next to --out)")
    ap.add_argument("--context", default=None,
                    help="a line about the conditions of this run, shown under Machine (default: kept)")
    ap.add_argument("--list", action="store_true", help="list the measurements and exit")
    args = ap.parse_args(argv)
    if args.list:
        for m in MEASUREMENTS:
            print(f"{m.name:8} {m.runs:3} runs  {'lab ' if m.lab else '    '} {m.what}")
        return 0
    every, each = parse_runs(args.runs)
    chosen = [n for o in (args.only or []) for n in ALIASES.get(o, [o])]
    todo = [m for m in MEASUREMENTS if not chosen or m.name in chosen]
    data_path = args.data or args.out.with_name("results.json")
    old = json.loads(data_path.read_text()) if args.only and data_path.exists() else None

    if any(m.lab for m in todo):
        from orchestrator.lab import lab_info

        try:
            lab_info()
        except Exception as exc:
            print(f"bench: the lab is not up ({exc}); run `make lab` (or `make bench`, which brings it up)",
                  file=sys.stderr)
            return 1
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = machine()
    groups: dict[str, dict] = {}
    started = time.monotonic()
    for m in todo:
        runs = each.get(m.name, every or m.runs)
        print(f"bench: {m.name} ({runs} runs) ...", flush=True)
        t0 = time.monotonic()
        load = _first("/proc/loadavg", r"^(\S+)")
        rows = run_one(m, runs)
        took = time.monotonic() - t0
        groups[m.name] = {"date": now, "runs": runs, "seconds": round(took, 1), "loadavg": load,
                          "rows": [r.to_json() for r in rows]}
        for r in rows:
            print("  " + table_line(r), flush=True)
        print(f"bench: {m.name} took {took:.0f} s", flush=True)
    if old:
        data = old
        data["groups"].update(groups)
        data["machine"] = {**facts, "loadavg": data["machine"].get("loadavg", facts["loadavg"])}
    else:
        data = {"date": now, "machine": facts, "groups": groups}
    if args.context is not None:
        data["context"] = args.context
    data["total_seconds"] = round(time.monotonic() - started, 1) if not old else data.get("total_seconds")
    data_path.write_text(json.dumps(data, indent=1) + "\n")
    args.out.write_text(render(data))
    print(f"bench: wrote {args.out} and {data_path} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

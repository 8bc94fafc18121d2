"""What every measurement shares: the result row, goals, and running commands.

A measurement is a function `fn(runs) -> list[Row]`. A Row holds the raw samples of
orch (and of its baseline, when there is one); the harness (bench/run.py) turns them
into "median (min–max)" cells and a ratio of the medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ORCH = str(BIN / "orch")
PYTHON = str(BIN / "python")
COMPOSE = "/usr/bin/docker-compose"  # Debian's docker-compose 1.29.2

# Every command run on the lab: no colours, and on a shared lab wait for another
# deployer's lock rather than fail (the wait is part of the time: see the notes).
BASE_ENV = {"NO_COLOR": "1", "ORCH_LOCK_WAIT": "600"}


@dataclass
class Goal:
    """A target for the orch median (on="orch"), for the ratio of medians (on="ratio") or
    for their difference (on="difference": orch's median - the baseline's, in the row's unit)."""

    text: str  # as shown: "< 1 s", "<= 1.5x", "<= +1 ms"
    limit: float
    on: str = "orch"  # orch | ratio | difference
    higher_is_better: bool = False

    def met(self, row: "Row") -> bool | None:
        value = {"ratio": row.ratio, "difference": row.difference}.get(self.on, row.median)()
        if value is None:
            return None
        return value >= self.limit if self.higher_is_better else value <= self.limit


@dataclass
class Row:
    name: str
    unit: str  # s | MB | B | % | x
    samples: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)  # the baseline's samples, same unit
    baseline_name: str = ""  # what the baseline is (shown in the notes)
    goal: Goal | None = None
    note: str = ""
    unavailable: str = ""  # why there is no figure ("not available: ..." / "failed: ...")
    level: int = 0  # 1: a part of the row above ("of which ...")

    def add(self, sample: float, baseline: float) -> None:
        """One run of orch and of its baseline."""
        self.samples.append(sample)
        self.baseline.append(baseline)

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    def ratio(self) -> float | None:
        a, b = self.median(), self.baseline_median()
        if a is None or not b:
            return None
        return a / b

    def difference(self) -> float | None:
        a, b = self.median(), self.baseline_median()
        if a is None or b is None:
            return None
        return a - b

    def to_json(self) -> dict:
        out = asdict(self)
        out["median"], out["baseline_median"], out["ratio"] = self.median(), self.baseline_median(), self.ratio()
        out["goal_met"] = self.goal.met(self) if self.goal else None
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Row":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("goal"):
            d["goal"] = Goal(**d["goal"])
        return cls(**d)


def unavailable(name: str, reason: str, unit: str = "s", goal: Goal | None = None) -> Row:
    return Row(name, unit, unavailable=reason, goal=goal)


def med(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- commands


class CommandFailed(RuntimeError):
    pass


def run(argv: list[str], cwd: Path | None = None, env: dict | None = None, check: bool = True,
        timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
    """Run argv to the end; (wall seconds, the completed process with text output)."""
    t0 = time.perf_counter()
    cp = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    took = time.perf_counter() - t0
    if check and cp.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} exited {cp.returncode}:\n{cp.stdout[-2000:]}\n{cp.stderr[-2000:]}")
    return took, cp


def timed(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    """Wall time of a command whose output is thrown away (CLI start-up)."""
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def json_lines(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def final(stdout: str) -> dict:
    """The last JSON object of an `orch ... --json` run (its final object)."""
    objs = json_lines(stdout)
    return objs[-1] if objs else {}


def orch(*args: str) -> list[str]:
    return [ORCH, *args]


def lab_env(**extra: str) -> dict:
    return {**os.environ, **BASE_ENV, **extra}


def phases_note(phases: dict[str, list[float]], at_least: float = 0.01) -> str:
    """The in-command phases of orch's final object (`timings`), medians, largest first."""
    meds = sorted(((med(v), k) for k, v in phases.items()), reverse=True)
    return ", ".join(f"{k} {m:.2f}s" for m, k in meds if m >= at_least)


def add_phases(phases: dict[str, list[float]], fin: dict) -> None:
    for k, v in (fin.get("timings") or {}).items():
        phases.setdefault(k, []).append(v)


class OwnKeeper:
    """A keeper of the bench's own (ssh.persist, its socket in a fresh directory), for the
    kept-connection rows; `env(base)` is the environment its commands run with, `cpu()`
    its CPU seconds so far (user + sys), `stop()` ends it (the nodes' spare agents with it)."""

    def __init__(self, persist: float = 300):
        import tempfile

        self.sock = Path(tempfile.mkdtemp(prefix="orch-bench-keeper-")) / "keeper.sock"
        self.persist = persist

    def env(self, base: dict) -> dict:
        return {**base, "ORCH_SSH_PERSIST": str(self.persist), "ORCH_KEEPER_SOCKET": str(self.sock)}

    def pid(self) -> int | None:
        out = subprocess.run(["pgrep", "-f", f"orchestrator.io.transport.keeper {self.sock}"], capture_output=True,
                             text=True)
        pids = [int(p) for p in out.stdout.split()]
        return pids[0] if pids else None

    def cpu(self) -> float:
        pid = self.pid()
        if pid is None:
            return 0.0
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, 15)

"""CLI start-up: wall time of `orch --help`, `orch --version` and `orch config` on a
10-service project, each beside the same command of docker-compose 1.29 (also a Python
program) on the same file. Runs alternate (orch, then docker-compose), so a noisy
moment hits both. No lab needed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import COMPOSE, ORCH, PYTHON, Goal, Row, lab_env, med, timed


def cli(runs: int) -> list[Row]:
    from bench.gen import write_project

    env = lab_env()
    with tempfile.TemporaryDirectory() as tmp:
        compose = write_project(Path(tmp), services=10, edges=12, project_name=None)
        rows = [
            (Row("CLI start-up: `orch --help`", "s", baseline_name="`docker-compose --help`",
                 goal=Goal("< 0.2 s", 0.2)),
             [ORCH, "--help"], [COMPOSE, "--help"]),
            (Row("CLI start-up: `orch --version`", "s", baseline_name="`docker-compose version`",
                 goal=Goal("< 0.2 s", 0.2)),
             [ORCH, "--version"], [COMPOSE, "version"]),
            (Row("CLI: `orch config`, 10 services", "s", baseline_name="`docker-compose config`, same file",
                 goal=Goal("< 0.5 s", 0.5)),
             [ORCH, "config", "-p", "tiny", "-f", str(compose)], [COMPOSE, "-p", "tiny", "-f", str(compose), "config"]),
        ]
        floor: list[float] = []
        for argv in [r[1] for r in rows] + [r[2] for r in rows]:  # warm the page cache, untimed
            timed(argv, cwd=tmp, env=env)
        for _ in range(runs):
            floor.append(timed([PYTHON, "-c", "pass"], cwd=tmp, env=env))
            for row, mine, theirs in rows:
                row.samples.append(timed(mine, cwd=tmp, env=env))
                row.baseline.append(timed(theirs, cwd=tmp, env=env))
    out = [r[0] for r in rows]
    out[0].note = f"the interpreter alone (`python -c pass`, same venv) takes {med(floor):.3f} s"
    return out

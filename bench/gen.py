"""Generate synthetic Compose projects for the benchmarks."""

from __future__ import annotations

import random
from pathlib import Path

import yaml


def synthetic_project(services: int, edges: int, seed: int = 7, project_name: str | None = "synthetic") -> dict:
    """A DAG of `services` services with about `edges` depends_on edges.

    Edges only point from a service to ones with a lower index, so the graph is
    acyclic; conditions vary so the loader's long-form path is exercised too. Without
    a name (project_name=None) the file has no top-level `name:`, which docker-compose 1.29
    refuses (the project name then comes from -p).
    """
    rng = random.Random(seed)
    names = [f"svc{i:05d}" for i in range(services)]
    deps: list[set[int]] = [set() for _ in range(services)]
    made = 0
    while made < edges:
        a = rng.randrange(1, services)
        b = rng.randrange(0, a)
        if b not in deps[a]:
            deps[a].add(b)
            made += 1
    conditions = ["service_started", "service_healthy", "service_started"]
    out: dict = {"name": project_name} if project_name else {}
    out["services"] = {}
    for i, name in enumerate(names):
        svc = {
            "image": f"registry.example/synthetic/{name}:1",
            "environment": {"INDEX": str(i), "MODE": "${MODE:-bench}"},
            "ports": [f"{10000 + i}:80"] if i % 10 == 0 else [],
            "healthcheck": {"test": ["CMD", "true"], "interval": "5s", "retries": 3},
        }
        if deps[i]:
            svc["depends_on"] = {names[d]: {"condition": conditions[d % 3]} for d in sorted(deps[i])}
        out["services"][name] = svc
    return out


def write_project(path: Path, services: int, edges: int, project_name: str | None = "synthetic") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    target = path / "compose.yaml"
    target.write_text(yaml.safe_dump(synthetic_project(services, edges, project_name=project_name), sort_keys=False))
    return target

"""Run in a child process: load a Compose file for an environment and plan its deploy;
print JSON.

What `orch plan`/`orch up` do before they touch the network, on a project too big to
deploy: load (with the environment's overlay), compile every service's spec
(validation, graph, waves), place the replicas on the environment's nodes and plan
against nodes that run nothing. Kept in its own process so peak RSS (ru_maxrss)
measures this work alone, imports included.

    python -m bench.scale_probe COMPOSE_FILE [ENVIRONMENTS_DIR [ENV]]
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    compose = Path(sys.argv[1])
    env_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[1] / "environments"
    env_name = sys.argv[3] if len(sys.argv) > 3 else "prod"
    t0 = time.perf_counter()
    from orchestrator.core.plan import make_plan
    from orchestrator.core.specs import compile_blueprint, node_infos
    from orchestrator.io.files import local_sources
    from orchestrator.app.workspace import ProjectOptions, load_workspace

    t_import = time.perf_counter()
    ws = load_workspace(ProjectOptions(files=[compose], env_name=env_name, environments_dir=env_dir,
                                       working_dir=compose.parent), environ={})
    t_load = time.perf_counter()
    blueprint = compile_blueprint(ws.project, ws.environment, sources=local_sources())
    t_compile = time.perf_counter()
    env = ws.environment
    order = [n.name for n in env.nodes]
    slots = blueprint.place(node_infos(env), [])
    units, _ = blueprint.units(slots, order)
    plan = make_plan(ws.project.name, env.name, blueprint.waves, units, {n: [] for n in order},
                     blueprint.project_services, False, order)
    t_plan = time.perf_counter()
    print(json.dumps({
        "services": len(ws.project.services),
        "waves": len(blueprint.waves),
        "nodes": len(order),
        "steps": len(plan.steps),
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "compile_s": t_compile - t_load,
        "plan_s": t_plan - t_compile,
        "total_s": t_plan - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()

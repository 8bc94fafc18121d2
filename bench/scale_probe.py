"""Run in a child process: load a Compose file and compute its waves; print JSON.

Kept separate so peak RSS (ru_maxrss) measures this work alone.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    compose = Path(sys.argv[1])
    t0 = time.perf_counter()
    from orchestrator import graph
    from orchestrator.compose import LoadOptions, load_project

    t_import = time.perf_counter()
    project = load_project(LoadOptions(files=[compose], working_dir=compose.parent, environ={}))
    t_load = time.perf_counter()
    g = graph.build_graph(project)
    waves = graph.waves(g)
    t_graph = time.perf_counter()
    print(json.dumps({
        "services": len(project.services),
        "edges": g.number_of_edges(),
        "waves": len(waves),
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "graph_s": t_graph - t_load,
        "total_s": t_graph - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()

"""The service dependency graph: edges run from a dependency to its dependents.

Waves are networkx topological generations: every service of a wave can start in
parallel once the waves before it are up; `down` walks them in reverse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import networkx as nx

from orchestrator.errors import InputError, Problem

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.core.compose import Project


def build_graph(project: "Project") -> nx.DiGraph:
    """Explicit depends_on plus implicit edges (links, volumes_from, service:X modes).

    A dependency that is not enabled was already rejected by the loader unless it is
    `required: false`, in which case it simply has no edge.
    """
    graph = nx.DiGraph()
    graph.add_nodes_from(project.services)
    for name, service in project.services.items():
        for dep in service.dependencies():
            if dep in project.services:
                graph.add_edge(dep, name)
    _refuse_cycles(graph, project)
    return graph


def _refuse_cycles(graph: nx.DiGraph, project: "Project") -> None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    # find_cycle yields edges dependency -> dependent; print the depends-on direction
    # ("a -> b" reads "a depends on b"), starting at the smallest name for stable output.
    ring = [cycle[0][0]] + [edge[0] for edge in reversed(cycle[1:])]
    start = ring.index(min(ring))
    ring = ring[start:] + ring[:start]
    names = ring + [ring[0]]
    first = project.services[names[0]]
    loc = getattr(first, "loc", None)
    raise InputError(
        Problem(
            "dependency cycle detected: " + " -> ".join(names),
            file=getattr(loc, "file", None),
            line=getattr(loc, "line", None),
            key=f"services.{names[0]}.depends_on",
            fix="remove one of these depends_on (or links / volumes_from / service: modes) "
            "so the services can start in some order.",
        )
    )


def waves(graph: nx.DiGraph) -> list[list[str]]:
    """Topological generations, each sorted so output is stable run to run."""
    return [sorted(generation) for generation in nx.topological_generations(graph)]


def with_dependencies(graph: nx.DiGraph, selected: Iterable[str]) -> set[str]:
    """The selected services and everything they depend on, transitively."""
    wanted: set[str] = set()
    for name in selected:
        if name not in graph:
            known = ", ".join(sorted(graph)) or "none"
            raise InputError(
                Problem(
                    f"no such service: {name}",
                    fix=f"name one of the project's enabled services ({known}).",
                )
            )
        wanted.add(name)
        wanted |= nx.ancestors(graph, name)
    return wanted


def subgraph(graph: nx.DiGraph, services: Iterable[str]) -> nx.DiGraph:
    return graph.subgraph(services).copy()

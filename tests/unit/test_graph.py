from dataclasses import dataclass, field

import pytest

from orchestrator.core import graph
from orchestrator.errors import InputError


@dataclass
class FakeService:
    deps: dict = field(default_factory=dict)

    def dependencies(self):
        return self.deps


@dataclass
class FakeProject:
    services: dict


def project(**deps):
    return FakeProject({name: FakeService({d: None for d in ds}) for name, ds in deps.items()})


def test_waves_are_topological_generations():
    p = project(web=["api"], api=["db", "cache"], db=[], cache=[], worker=["db"])
    g = graph.build_graph(p)
    assert graph.waves(g) == [["cache", "db"], ["api", "worker"], ["web"]]


def test_selection_pulls_in_dependencies():
    p = project(web=["api"], api=["db"], db=[], other=[])
    g = graph.build_graph(p)
    assert graph.with_dependencies(g, ["web"]) == {"web", "api", "db"}
    assert graph.waves(graph.subgraph(g, graph.with_dependencies(g, ["api"]))) == [["db"], ["api"]]


def test_unknown_selected_service():
    g = graph.build_graph(project(a=[]))
    with pytest.raises(InputError, match="no such service: b"):
        graph.with_dependencies(g, ["b"])


def test_cycle_is_printed_in_depends_on_order():
    p = project(a=["b"], b=["c"], c=["a"])
    with pytest.raises(InputError) as err:
        graph.build_graph(p)
    assert "dependency cycle detected: a -> b -> c -> a" in err.value.render()


def test_self_loop():
    with pytest.raises(InputError, match=r"dependency cycle detected: a -> a"):
        graph.build_graph(project(a=["a"]))


def test_optional_dependency_on_a_missing_service_has_no_edge():
    g = graph.build_graph(project(a=["gone"]))
    assert list(g.edges) == []

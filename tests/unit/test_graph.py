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


def test_a_cycle_through_a_two_way_pair_is_printed_in_depends_on_order():
    # s3 and s4 depend on each other, and the ring found may run through s1 as well
    p = project(s0=[], s1=["s3"], s2=["s0"], s3=["s4"], s4=["s0", "s1", "s2", "s3"], s5=["s0", "s1"])
    with pytest.raises(InputError) as err:
        graph.build_graph(p)
    text = err.value.render()
    ring = text.split("dependency cycle detected: ")[1].split(" Fix:")[0].split(" -> ")[:-1]
    assert ring[0] == min(ring)
    assert all(b in p.services[a].deps for a, b in zip(ring, ring[1:] + [ring[0]])), text


def test_building_the_graph_does_not_import_networkx():
    """Every `orch up` builds it: networkx's import cost 0.1-0.2 s of a no-op."""
    import subprocess
    import sys

    code = ("import sys, orchestrator.core.graph, orchestrator.core.specs.compile, orchestrator.app.deploy; "
            "print('networkx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

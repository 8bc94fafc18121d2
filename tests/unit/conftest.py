"""Shared unit-test fixtures: no real waits in the deploy engine, and a fake two-node lab
(the fakes themselves are in tests/unit/fakes.py)."""

import pytest

from tests.unit.fakes import FakeNode


@pytest.fixture(autouse=True)
def no_host_mesh(monkeypatch):
    """The mesh's real host driver changes the machine's network (WireGuard links, iptables,
    dnsmasq): a unit test that reaches it fails instead. Use agent.fake.FakeMeshHost."""

    def refuse(self):
        raise AssertionError("a unit test reached agent.mesh.host.NodeHost (the real host): "
                             "give the Context mesh_host=agent.fake.FakeMeshHost()")

    monkeypatch.setattr("agent.mesh.host.NodeHost.__init__", refuse)


@pytest.fixture(autouse=True)
def no_deploy_waits(monkeypatch):
    slept = []
    monkeypatch.setattr("orchestrator.app.deploy._sleep", slept.append)
    return slept


@pytest.fixture
def lab(tmp_path):
    """Two fake nodes (n1, n2: the real agent operations on FakeEngines) and a connector
    for Deployment; lab.dir is the project folder."""
    nodes = {n: FakeNode(n, tmp_path / "state" / n) for n in ("n1", "n2")}
    connects = []

    def connector(environment, progress, project=None):
        connects.append(environment.name)
        return {n.name: nodes[n.name] for n in environment.nodes}

    class Lab:
        pass

    lab = Lab()
    lab.nodes, lab.connector, lab.connects, lab.dir = nodes, connector, connects, tmp_path
    return lab

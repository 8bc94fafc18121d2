"""Shared unit-test fixtures: no real waits in the deploy engine, a fake two-node lab, and
the pipeline's World, alone or behind the CLI (the fakes themselves are in
tests/unit/fakes.py; test modules import from there, never from each other)."""

from contextlib import contextmanager

import pytest

from tests.unit.fakes import FakeNode, World


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


@pytest.fixture
def world(tmp_path):
    """The hello project in dev -> test -> prod over fake nodes (fakes.World)."""
    return World(tmp_path)


@pytest.fixture
def cli_world(world, monkeypatch):
    """The World behind the CLI, in its project folder: fake nodes for every command (deploys
    and the read-only commands' sessions), fake images, registry preflight and HTTP checks;
    no approval, lock wait or CI variables from the caller's environment."""

    def connector(environment, progress, project=None, spare_sessions=0):
        return world.connector(environment, progress, project)

    @contextmanager
    def env_sessions(environment, *, require_engine=True):
        yield {}, {n.name: world.nodes[n.name] for n in environment.nodes}

    monkeypatch.setattr("orchestrator.io.nodes.ssh_connect", connector)
    monkeypatch.setattr("orchestrator.io.nodes.env_sessions", env_sessions)
    monkeypatch.setattr("orchestrator.io.images.prepare_images", world.prepare_images)
    monkeypatch.setattr("orchestrator.app.release.registry_preflight", lambda env, services: None)
    monkeypatch.setattr("orchestrator.io.checks.run_http", lambda target, **kw: world.http(target))
    monkeypatch.chdir(world.dir)
    for key in ("ORCH_APPROVE", "ORCH_LOCK_WAIT", "CI", "GITHUB_ACTIONS", "GITLAB_CI"):
        monkeypatch.delenv(key, raising=False)
    return world

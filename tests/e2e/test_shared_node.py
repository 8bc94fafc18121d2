"""Two environments of one project on one node (dev-1): `dev` deploys examples/shop, a
temporary `qa` (dev.yaml renamed) lists the same node. qa's `up` is bad input (exit 2)
naming both environments, before anything on the node changes; qa's `ps` sees nothing
of dev's; qa's `down --volumes` leaves dev's containers, network and volume; the agent,
asked directly on the node's real engine, refuses or skips dev's objects for qa.
"""

from __future__ import annotations

import pytest

from .helpers import Shop, http_get, last_json

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shared(orch, lab, tmp_path_factory):
    s = Shop(orch, tmp_path_factory.mktemp("enviso"), "dev", "enviso")
    envs = s.dir / "environments"
    (envs / "qa.yaml").write_text((envs / "dev.yaml").read_text().replace("\nname: dev\n", "\nname: qa\n"))
    s.first = s.up()
    yield s
    s.env = "qa"
    s.down()
    s.env = "dev"
    s.down()


def node_objects(node, project: str) -> dict:
    """Every container (name -> id, env label), network and volume of the project on the node."""
    out = {}
    for kind, cmd in (("containers", "docker ps -a --format '{{.Names}} {{.ID}} {{.Label \"io.orch.env\"}}'"),
                      ("networks", "docker network ls --format '{{.Name}} {{.ID}}'"),
                      ("volumes", "docker volume ls --format '{{.Name}} {{.Driver}}'")):
        text = node.check(f"{cmd} --filter label=io.orch.project={project}")
        out[kind] = sorted(text.split("\n")[:-1])
    return out


def test_a_second_environment_on_the_node_is_refused_before_anything_changes(shared, lab, ssh):
    node = ssh("dev-1")
    before = node_objects(node, shared.project)
    assert len(before["containers"]) == 5 and all(ln.endswith(" dev") for ln in before["containers"])
    assert before["volumes"] == [f"{shared.project}_dbdata local"]
    shared.env = "qa"
    try:
        cp = shared.orch("up", "--json", check=False)
        assert cp.returncode == 2, cp.stdout + cp.stderr
        final = last_json(cp.stdout)
        (problem,) = final["error"]["problems"]
        assert problem["file"].endswith("environments/qa.yaml") and problem["key"] == "nodes[0]"
        assert problem["line"] == 6  # the node's item in qa.yaml
        text = problem["message"]
        assert f"node dev-1 already runs project {shared.project} for environment dev" in text
        assert "environment qa cannot deploy" in text and "Traceback" not in cp.stderr
        assert "orch down --env dev --volumes" in problem["fix"]
        assert shared.ps() == []  # qa sees none of dev's containers
        down = last_json(shared.orch("down", "--volumes", "--json").stdout)
        assert down["status"] == "ok" and down["removed"] == [] and down["volumes"] == {}
    finally:
        shared.env = "dev"
    assert node_objects(node, shared.project) == before
    host = lab.node("dev-1").address
    assert http_get(f"http://{host}:{shared.ports['WEB_PORT']}/") == "web 1"


def test_the_agent_itself_refuses_or_skips_another_environments_objects(shared, lab, ssh, tmp_path):
    """Whatever a controller asks: the agent's operations on dev-1's real engine, for qa."""
    import docker

    from agent.engine import Engine
    from agent.context import Context
    from agent.operations import OPERATIONS
    from agent.wire.protocol import AgentError

    node = ssh("dev-1")
    before = node_objects(node, shared.project)
    engine = Engine(docker.DockerClient(base_url=lab.node("dev-1").docker_host))
    ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path))
    for op, args in (("retire", {"project": shared.project, "service": "web", "env": "qa"}),
                     ("discard", {"project": shared.project, "env": "qa"}),
                     ("prune_images", {"project": shared.project, "env": "qa", "keep": []})):
        with pytest.raises(AgentError) as err:
            OPERATIONS[op](ctx, args)
        assert err.value.kind == "conflict" and "belongs to environment dev, not qa" in err.value.message
    for env in ("qa", None):  # no env: only objects without one
        args = {"project": shared.project, "remove_volumes": True, **({"env": env} if env else {})}
        res = OPERATIONS["remove"](ctx, args)
        assert res["removed"] == [] and res["networks"] == [] and res["volumes"] == []
    assert OPERATIONS["state"](ctx, {"project": shared.project})["owners"].keys() == {"dev"}
    assert node_objects(node, shared.project) == before


def test_under_its_own_project_name_qa_is_refused_a_host_port_dev_holds(shared, lab, ssh):
    """The documented way out (`-p PROJECT-qa`) on the same node: a host port dev's
    containers publish there is bad input (exit 2) before anything changes."""
    node = ssh("dev-1")
    before = node_objects(node, shared.project)
    qa_project = shared.project + "-qa"
    qa = ("--env", "qa", "--file", str(shared.compose), "-p", qa_project)
    try:
        cp = shared.run_orch("up", *qa, "--json", check=False,
                             env={**shared.vars, "API_PORT": str(shared.ports["API_PORT"] + 50)})
    finally:  # whatever it did (nothing, when the test passes)
        shared.run_orch("down", *qa, "--volumes", "--json", check=False, env=shared.vars)
    assert cp.returncode == 2, cp.stdout + cp.stderr
    problems = last_json(cp.stdout)["error"]["problems"]
    texts = sorted(p["message"] for p in problems)
    assert len(texts) == 2 and "Traceback" not in cp.stderr  # db and web; api got a port of its own
    assert texts[0].startswith(f"service db publishes host port {shared.ports['DB_PORT']}/tcp on node dev-1, but "
                               f"container {shared.project}-db-1 (project {shared.project}, environment dev)")
    assert texts[1].startswith(f"service web publishes host port {shared.ports['WEB_PORT']}/tcp on node dev-1")
    assert all(p["file"].endswith("compose.yaml") and p["line"] and p["key"].endswith(".ports") for p in problems)
    assert node_objects(node, qa_project) == {"containers": [], "networks": [], "volumes": []}
    assert node_objects(node, shared.project) == before

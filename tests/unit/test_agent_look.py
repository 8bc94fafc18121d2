"""The agent's look operations (stats, top, inspect) on a FakeEngine, agent.wire.look's typed
requests and results, and the figures computed from Engine API stats documents."""

import pytest

from agent.context import Context
from agent.fake import FakeEngine
from agent.operations import OPERATIONS
from agent.wire.look import ContainerRef, Inspected, LookRequest, Processes, Sample, mask_inspect, \
    parse_results, sample_from_engine
from agent.wire.protocol import AgentError, BadRequest


# --------------------------------------------------------------------------- the wire


def test_look_request_round_trip_and_validation():
    req = LookRequest("shop", "prod", "web", 2)
    assert LookRequest.from_dict(req.to_dict()) == req
    assert LookRequest("shop").to_dict() == {"project": "shop"}
    for bad in ({}, {"project": "Bad Name"}, {"project": "p", "replica": 1}, {"project": "p", "service": "w",
                                                                              "replica": 0},
                {"project": "p", "colour": "red"}):
        with pytest.raises(BadRequest):
            LookRequest.from_dict(bad)


def test_results_round_trip_and_refuse_bad_fields():
    ref = ContainerRef("shop-web-1", "web", 1, "abc", "running")
    s = Sample(ref, 12.5, 10, 100, 10.0, 1, 2, 3, 4, 5)
    p = Processes(ref, ["PID", "CMD"], [["1", "httpd"]])
    i = Inspected(ref, {"Id": "abc"})
    for item, kind in ((s, Sample), (p, Processes), (i, Inspected)):
        assert parse_results({"containers": [item.to_dict()]}, kind) == [item]
    with pytest.raises(BadRequest):
        Sample.from_dict(dict(s.to_dict(), cpu_percent="lots"))
    with pytest.raises(BadRequest):
        Processes.from_dict(dict(p.to_dict(), processes=[[1, 2]]))
    with pytest.raises(BadRequest):
        parse_results({"containers": "all"}, Sample)


def test_sample_from_engine_cgroup_v1_and_v2():
    ref = ContainerRef("c", "web", 1)
    v1 = {"cpu_stats": {"cpu_usage": {"total_usage": 400, "percpu_usage": [1, 2, 3, 4]}, "system_cpu_usage": 2000},
          "precpu_stats": {"cpu_usage": {"total_usage": 200}, "system_cpu_usage": 1000},
          "memory_stats": {"usage": 5000, "limit": 10000, "stats": {"total_inactive_file": 1000}},
          "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
          "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 7}, {"op": "Write", "value": 9},
                                                         {"op": "Read", "value": 3}, {"op": "Total", "value": 19}]},
          "pids_stats": {"current": 4}}
    assert sample_from_engine(ref, v1) == Sample(ref, 80.0, 4000, 10000, 40.0, 11, 22, 10, 9, 4)
    v2 = {"cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 1000, "online_cpus": 2},
          "precpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 900},
          "memory_stats": {"usage": 3000, "limit": 6000, "stats": {"inactive_file": 0}},
          "blkio_stats": {"io_service_bytes_recursive": None}}
    assert sample_from_engine(ref, v2) == Sample(ref, 0.0, 3000, 6000, 50.0, None, None, 0, 0, None)
    # the first reading (no previous one yet), or an engine without figures: unknown, not zero
    assert sample_from_engine(ref, {"precpu_stats": {}, "memory_stats": {}}) == Sample(ref)


def test_mask_inspect_masks_environment_command_and_known_values():
    doc = {"Config": {"Env": ["DB_PASSWORD=hunter22", "MODE=fast", "DB_URL=postgres://u:pw1@db/x", "NOTE=plain-hunter"],
                      "Cmd": ["run", "--api-key", "k3y"], "Labels": {"io.orch.release": "7", "API_TOKEN": "t0k"}},
           "Name": "/hello-api-1"}
    out = mask_inspect(doc, known=["plain-hunter"])
    assert out["Config"]["Env"] == ["DB_PASSWORD=***", "MODE=fast", "DB_URL=postgres://u:***@db/x", "NOTE=***"]
    assert out["Config"]["Cmd"] == ["run", "--api-key", "***"]
    assert out["Config"]["Labels"] == {"io.orch.release": "7", "API_TOKEN": "***"}
    assert doc["Config"]["Env"][0] == "DB_PASSWORD=hunter22"  # a copy


# --------------------------------------------------------------------------- the agent


def _ctx(engine, tmp_path):
    return Context(engine_factory=lambda: engine, state_dir=str(tmp_path))


def _container(engine, name, service, replica, env="prod", project="shop", image="busybox", environment=()):
    labels = {"io.orch.project": project, "io.orch.service": service, "io.orch.replica": str(replica)}
    if env:
        labels["io.orch.env"] = env
    engine.images.add(image)
    cid = engine.create(name, {"Image": image, "Labels": labels, "Cmd": ["httpd", "-f"],
                               "Env": list(environment)}, [])
    engine.start(cid)
    return cid


def test_agent_looks_only_at_the_environments_containers(tmp_path):
    engine = FakeEngine()
    _container(engine, "shop-web-1", "web", 1, environment=["SESSION_SECRET=abc", "MODE=x"])
    _container(engine, "shop-web-2", "web", 2)
    _container(engine, "shop-api-1", "api", 1)
    _container(engine, "shop-web-1-prev", "web", 1)  # kept for a rollback: not shown
    _container(engine, "shop-web-1-test", "web", 1, env="test")  # another environment's copy
    _container(engine, "other-web-1", "web", 1, project="other")
    engine.add_foreign("stranger", {"com.example.app": "shop"})  # not orch's
    engine.stop(_container(engine, "shop-db-1", "db", 1))
    ctx = _ctx(engine, tmp_path)

    stats = parse_results(OPERATIONS["stats"](ctx, {"project": "shop", "env": "prod"}), Sample)
    assert [(s.container.name, s.container.state) for s in stats] == [
        ("shop-api-1", "running"), ("shop-db-1", "exited"), ("shop-web-1", "running"), ("shop-web-2", "running")]
    running = stats[0]
    assert (running.cpu_percent, running.memory_used, running.memory_limit, running.memory_percent) == (
        25.0, 10 * 2 ** 20, 100 * 2 ** 20, 10.0)
    assert (running.net_rx, running.net_tx, running.block_read, running.block_write, running.pids) == (
        1000, 2000, 4096, 8192, 3)
    assert stats[1] == Sample(stats[1].container)  # not running: no figures, and the engine was not asked
    assert len([c for c in engine.calls if c[0] == "stats"]) == 3

    top = parse_results(OPERATIONS["top"](ctx, {"project": "shop", "env": "prod", "service": "web", "replica": 2}),
                        Processes)
    assert [(t.container.name, t.titles, t.processes) for t in top] == [
        ("shop-web-2", ["UID", "PID", "PPID", "CMD"], [["root", "101", "100", "httpd -f"]])]
    stopped = parse_results(OPERATIONS["top"](ctx, {"project": "shop", "env": "prod", "service": "db"}), Processes)
    assert stopped == [Processes(stopped[0].container)] and stopped[0].container.state == "exited"

    inspected = parse_results(OPERATIONS["inspect"](ctx, {"project": "shop", "env": "prod", "service": "web"}),
                              Inspected)
    assert [i.container.name for i in inspected] == ["shop-web-1", "shop-web-2"]
    assert inspected[0].engine["Config"]["Env"] == ["SESSION_SECRET=***", "MODE=x"]
    with pytest.raises(BadRequest):
        OPERATIONS["inspect"](ctx, {"project": "shop", "replica": 1})


def test_agent_top_of_a_container_that_stopped_meanwhile(tmp_path):
    engine = FakeEngine()
    cid = _container(engine, "shop-web-1", "web", 1)

    def stop_first(ref):  # the container stops between the list and the top
        engine.records[cid]["info"]["state"] = "exited"
        raise AgentError("engine", "top of container: container is not running")

    engine.top = stop_first
    out = parse_results(OPERATIONS["top"](_ctx(engine, tmp_path), {"project": "shop", "env": "prod"}), Processes)
    assert out[0].processes == []


def test_the_sdk_engine_reads_the_same_documents():
    import docker.errors

    from agent.engine import Engine

    class Api:
        def __init__(self):
            self.calls = []

        def ping(self):
            return True

        def stats(self, ref, stream=True):
            self.calls.append(("stats", ref, stream))
            if ref == "gone":
                raise docker.errors.NotFound("no such container")
            return {"pids_stats": {"current": 1}}

        def top(self, ref):
            self.calls.append(("top", ref))
            raise docker.errors.APIError("container is not running")

        def inspect_container(self, ref):
            self.calls.append(("inspect", ref))
            return {"Id": ref}

    class Client:
        api = Api()

    engine = Engine(client=Client())
    assert engine.stats("c1") == {"pids_stats": {"current": 1}} and engine.stats("gone") is None
    assert engine.inspect("c1") == {"Id": "c1"}
    with pytest.raises(AgentError, match="top of container c1: .*not running"):
        engine.top("c1")
    assert Client.api.calls[0] == ("stats", "c1", False)  # one sample, not a stream

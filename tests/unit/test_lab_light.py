"""Light lab nodes: the spec (`--nodes prod=100:light`), the fake engine's config, and the
fake Docker Engine itself, driven through its HTTP core and over a real unix socket with
the agent's own stdlib reader (agent.engine_reads) and engine_id_from_socket (no root)."""

from __future__ import annotations

import json
import threading

import pytest

from agent.engine import engine_id_from_socket
from agent.engine_reads import SocketReads
from agent.wire import labels as L
from orchestrator.errors import InputError
from orchestrator.lab import light
from orchestrator.lab.fake_engine import Engine, Server, engine_id, handle, label_match, split_ref
from orchestrator.lab.model import LabSpec, build_spec, parse_node_kinds, parse_nodes
from orchestrator.lab.sshd import render_config

DIGEST = "sha256:" + "ab" * 32
REF = "10.250.9.1:5000/library/busybox@" + DIGEST


def test_nodes_option_marks_light_environments():
    assert parse_node_kinds("dev=1,prod=100:light") == [("dev", 1, False), ("prod", 100, True)]
    assert parse_nodes("dev=1,prod=3:light") == [("dev", 1), ("prod", 3)]
    spec = build_spec("sim", "10.250.9.0/24", "dev=1,prod=100:light")
    assert not spec.node("dev-1").light and spec.node("prod-100").light
    assert len(spec.light_nodes) == 100 and spec.node("prod-100").address == "10.250.9.190"
    assert LabSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    old = spec.to_json()
    for n in old["nodes"]:
        del n["light"]  # a lab.json written before light nodes existed
    assert not any(n.light for n in LabSpec.from_json(old).nodes)


@pytest.mark.parametrize("text", ["prod=3:heavy", "prod=:light", "prod=3:"])
def test_nodes_option_rejects_other_kinds(text):
    with pytest.raises(InputError) as err:
        parse_node_kinds(text)
    assert err.value.problems[0].key == "--nodes"


def test_light_node_sessions_talk_to_its_fake_engine_socket():
    spec = build_spec("sim", "10.250.9.0/24", "prod=2:light")
    node = spec.node("prod-2")
    sock = spec.paths.docker_socket("prod-2")
    assert f"SetEnv DOCKER_HOST=unix://{sock} " in render_config(spec, node)
    config = json.loads(light.render_config(spec, "s1"))
    assert config["lab"] == "orch-lab-sim" and config["salt"] == "s1"
    assert [n["socket"] for n in config["nodes"]] == [str(spec.paths.docker_socket(n)) for n in ("prod-1", "prod-2")]
    argv = light.argv(spec)
    assert argv[1].endswith("orchestrator/lab/fake_engine.py") and argv[2] == str(spec.paths.fake_engine_config)


def test_each_node_has_its_own_engine_id_new_for_a_lab_made_again():
    assert engine_id("salt1", "prod-1") == engine_id("salt1", "prod-1")  # a restart of the fake engine
    assert engine_id("salt1", "prod-1") != engine_id("salt1", "prod-2")
    assert engine_id("salt1", "prod-1") != engine_id("salt2", "prod-1")  # `lab down`, then `lab up`
    assert len(engine_id("a", "b").split(":")) == 12


def test_lab_down_finds_the_agent_data_of_light_nodes(tmp_path, monkeypatch):
    spec = build_spec("sim", "10.250.9.0/24", "prod=2:light")
    monkeypatch.setattr(type(spec.paths), "fake_engine_config", property(lambda self: tmp_path / "fe.json"))
    assert light.agent_data_dirs(spec, ["prod-1"]) == []  # no config: no salt, nothing to guess
    (tmp_path / "fe.json").write_text(light.render_config(spec, "s1"))
    [d] = light.agent_data_dirs(spec, ["prod-1"])
    assert d.parent == light.AGENT_ENGINES and d.name == engine_id("s1", "prod-1").replace(":", "-")


def test_label_filter_and_reference_parsing():
    labels = {"orch.project": "shop", "orch.service": "web"}
    assert label_match(labels, ["orch.project=shop", "orch.service"]) and label_match(labels, [])
    assert not label_match(labels, ["orch.project=other"]) and not label_match(labels, ["orch.env"])
    assert split_ref("reg:5000/app:1.0@" + DIGEST) == ("reg:5000/app", "1.0", DIGEST)
    assert split_ref("reg:5000/app") == ("reg:5000/app", "", "")


def _call(e: Engine, method: str, path: str, body: dict | None = None):
    return handle(e, method, path, json.dumps(body).encode() if body is not None else b"")


def _deployed(e: Engine) -> str:
    assert _call(e, "POST", "/v1.43/images/create?fromImage=10.250.9.1:5000/library/busybox&tag=" + DIGEST)[0] == 200
    status, net = _call(e, "POST", "/v1.43/networks/create", {"Name": "shop_default", "Labels": {L.PROJECT: "shop"}})
    assert status == 201
    status, created = _call(e, "POST", "/v1.43/containers/create?name=shop-web-1", {
        "Image": REF, "Labels": {L.PROJECT: "shop", L.SERVICE: "web"},
        "Healthcheck": {"Test": ["CMD", "true"]},
        "HostConfig": {"NetworkMode": "shop_default", "Binds": ["/etc/orch/x:/x:ro", "data:/data"]}})
    assert status == 201
    return created["Id"]


def test_a_container_runs_and_is_healthy_at_once_and_goes_away():
    e = Engine("prod-1", "ID-1")
    cid = _deployed(e)
    assert _call(e, "POST", f"/v1.43/containers/{cid}/start") == (204, None)
    status, doc = _call(e, "GET", f"/v1.43/containers/{cid}/json")
    assert status == 200 and doc["State"]["Running"] and doc["State"]["Health"]["Status"] == "healthy"
    assert doc["Name"] == "/shop-web-1" and doc["Image"].startswith("sha256:") and doc["Config"]["Image"] == REF
    assert sorted(doc["NetworkSettings"]["Networks"]) == ["shop_default"]
    assert {m["Type"] for m in doc["Mounts"]} == {"bind", "volume"} and "data" in e.volumes
    assert _call(e, "POST", f"/containers/{cid}/rename?name=shop-web-1-old")[0] == 204
    assert _call(e, "POST", f"/containers/{cid}/stop?t=5")[0] == 204
    assert _call(e, "POST", f"/containers/{cid}/stop")[0] == 304  # already stopped
    assert _call(e, "GET", "/containers/shop-web-1-old/json")[1]["State"]["Status"] == "exited"
    assert _call(e, "DELETE", "/networks/shop_default")[0] == 403  # still has an endpoint
    assert _call(e, "DELETE", f"/containers/{cid}?force=true&v=false")[0] == 204
    assert _call(e, "GET", f"/containers/{cid}/json")[0] == 404
    assert _call(e, "DELETE", "/networks/shop_default")[0] == 204


def test_lists_filter_by_label_and_state():
    e = Engine("prod-1", "ID-1")
    cid = _deployed(e)
    q = "filters=" + json.dumps({"label": [L.PROJECT + "=shop"]})
    assert [c["Id"] for c in _call(e, "GET", "/containers/json?all=1&" + q)[1]] == [cid]
    assert _call(e, "GET", "/containers/json?" + q)[1] == []  # created, not running: only with all=1
    other = "filters=" + json.dumps({"label": {L.PROJECT + "=other": True}})
    assert _call(e, "GET", "/containers/json?all=1&" + other)[1] == []
    assert [n["Name"] for n in _call(e, "GET", "/networks?" + q)[1]] == ["shop_default"]
    assert _call(e, "GET", "/volumes?" + q)[1]["Volumes"] == []  # "data" has no labels
    assert [i["RepoDigests"] for i in _call(e, "GET", "/images/json")[1]] == [[REF]]
    assert _call(e, "GET", f"/images/{REF}/json")[0] == 200


def test_bad_requests_get_the_engines_answers():
    e = Engine("prod-1", "ID-1")
    assert _call(e, "POST", "/containers/create?name=x", {"Image": "nowhere/app:1"})[0] == 404
    cid = _deployed(e)
    assert _call(e, "POST", "/containers/create?name=shop-web-1", {"Image": REF})[0] == 409
    assert _call(e, "POST", "/networks/create", {"Name": "shop_default"})[0] == 409
    assert _call(e, "GET", "/plugins")[0] == 404
    assert _call(e, "GET", "/containers/json?filters=nope")[0] == 400
    assert cid


def test_the_agent_reads_each_socket_as_its_own_engine(tmp_path):
    servers = []
    try:
        for name in ("prod-1", "prod-2"):
            srv = Server(str(tmp_path / f"{name}.sock"), Engine(name, engine_id("sim", name)))
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            servers.append(srv)
        cid = _deployed(servers[0].engine)
        env = {"DOCKER_HOST": f"unix://{tmp_path / 'prod-1.sock'}"}
        assert engine_id_from_socket(env) == engine_id("sim", "prod-1")  # HTTP/1.0, read to the end
        assert engine_id_from_socket({"DOCKER_HOST": f"unix://{tmp_path / 'prod-2.sock'}"}) == engine_id("sim", "prod-2")
        reads = SocketReads.from_env(env)
        try:  # keep-alive: several requests on one connection
            found = reads.containers([L.PROJECT + "=shop"])
            assert [(c.id, c.service, c.state) for c in found] == [(cid, "web", "created")]
            assert [n["name"] for n in reads.networks([L.PROJECT])] == ["shop_default"]
            assert reads.container("nope") is None
        finally:
            reads.close()
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()

"""agent.engine_reads: container queries over the engine's unix socket without the SDK,
against a small HTTP server on a unix socket that answers like the Engine API."""

from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import pytest

from agent.wire import labels as L
from agent.engine_reads import SocketReads
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError


def inspect(cid, name, service, replica, state="running"):
    return {"Id": cid, "Name": "/" + name, "Created": "2026-11-22T10:00:00Z",
            "Config": {"Image": "web:v1", "Labels": {L.PROJECT: "shop", L.SERVICE: service,
                                                     L.REPLICA: str(replica)}},
            "Image": "sha256:" + "a" * 64,
            "State": {"Status": state, "ExitCode": 0, "StartedAt": "2026-11-22T10:00:01Z"},
            "RestartCount": 0, "NetworkSettings": {"Ports": {}, "Networks": {"shop_default": {}}},
            "HostConfig": {}}


class Engine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the reader expects
    containers = {}
    requests = []

    def do_GET(self):
        url = urlparse(self.path)
        self.requests.append(url)
        if url.path == "/containers/json":
            labels = json.loads(parse_qs(url.query)["filters"][0])["label"]
            found = [{"Id": c["Id"], "Names": ["/" + c["Name"].lstrip("/")], "Labels": c["Config"]["Labels"]}
                     for c in self.containers.values()
                     if all(f"{k}={v}" in labels or k not in {x.split('=')[0] for x in labels}
                            for k, v in c["Config"]["Labels"].items())]
            found.append({"Id": "gone-meanwhile", "Names": ["/gone-meanwhile"], "Labels": {}})
            self.answer(200, found)
        elif url.path == "/networks":
            self.answer(200, [{"Name": "shop_default", "Id": "n1", "Driver": "bridge",
                               "Labels": {L.PROJECT: "shop", L.ENV: "dev"}}])
        elif url.path == "/volumes":
            self.answer(200, {"Volumes": [{"Name": "shop_data", "Driver": "local",
                                           "Labels": {L.PROJECT: "shop", L.ENV: "test"}}]})
        elif url.path.startswith("/containers/") and url.path.endswith("/stats"):
            assert parse_qs(url.query) == {"stream": ["false"]}
            self.answer(200, {"memory_stats": {"usage": 2048, "limit": 4096}, "pids_stats": {"current": 2}})
        elif url.path.startswith("/containers/") and url.path.endswith("/top"):
            self.answer(200, {"Titles": ["PID", "CMD"], "Processes": [["7", "httpd -f"]]})
        elif url.path.startswith("/containers/") and url.path.endswith("/json"):
            cid = url.path.split("/")[2]
            if cid == "broken":
                self.answer(500, {"message": "something broke"})
            elif cid in self.containers:
                self.answer(200, self.containers[cid])
            else:
                self.answer(404, {"message": "No such container: " + cid})
        else:
            self.answer(404, {"message": "page not found"})

    def answer(self, status, data):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine_socket(tmp_path):
    path = str(tmp_path / "docker.sock")
    Engine.containers = {c["Id"]: c for c in [inspect("c2", "shop-web-2", "web", 2),
                                              inspect("c1", "shop-web-1", "web", 1, "exited"),
                                              inspect("c3", "shop-api-1", "api", 1)]}
    Engine.requests = []
    server = Server(path, Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path
    server.shutdown()
    server.server_close()


def test_lists_and_inspects_like_the_engine_class(engine_socket):
    reads = SocketReads.from_env({"DOCKER_HOST": "unix://" + engine_socket})
    found = reads.containers(L.filters("shop", "web"))
    # sorted like Engine.containers; one removed between list and inspect is skipped
    assert [(c.name, c.state, c.replica) for c in found] == [("shop-web-1", "exited", 1), ("shop-web-2", "running", 2)]
    assert found[0].image_id == "sha256:" + "a" * 64 and found[1].networks == ["shop_default"]
    listing = Engine.requests[0]
    assert parse_qs(listing.query)["all"] == ["1"]
    assert json.loads(parse_qs(listing.query)["filters"][0]) == {"label": L.filters("shop", "web")}
    assert reads.container("nope") is None
    with pytest.raises(AgentError, match="something broke"):
        reads.container("broken")
    assert reads.container("c3").service == "api"  # the connection is still usable


def test_listed_names_and_labels_come_from_the_list_alone(engine_socket):
    # An inspect waits while the engine starts or stops that container: who owns the
    # project (owner.owned) is read from the list, so one rollout never waits for another's start.
    reads = SocketReads.from_env({"DOCKER_HOST": "unix://" + engine_socket})
    found = reads.listed(L.filters("shop", "web"))
    assert [name for name, _ in found] == ["gone-meanwhile", "shop-web-1", "shop-web-2"]
    assert dict(found)["shop-web-2"][L.SERVICE] == "web"
    assert [u.path for u in Engine.requests] == ["/containers/json"]


def test_unreachable_engine_is_an_engine_error_with_a_fix(tmp_path):
    reads = SocketReads(str(tmp_path / "nobody.sock"))
    with pytest.raises(AgentError) as info:
        reads.containers([])
    assert info.value.kind == "engine" and "cannot reach Docker Engine" in info.value.message
    assert "fix" in info.value.details


def test_only_for_unix_sockets():
    assert SocketReads.from_env({"DOCKER_HOST": "tcp://10.0.0.1:2376"}) is None
    assert SocketReads.from_env({}).path == "/var/run/docker.sock"


def test_state_reads_through_the_reader_until_the_engine_is_connected(engine_socket, tmp_path):
    def no_sdk():
        raise AssertionError("state must not connect the docker SDK")

    reads = SocketReads(engine_socket)
    ctx = Context(engine_factory=no_sdk, state_dir=str(tmp_path), reader=lambda: reads, engine_id=lambda: "e1")
    state = OPERATIONS["state"](ctx, {"project": "shop"})
    assert sorted(c["name"] for c in state["containers"]) == ["shop-api-1", "shop-web-1", "shop-web-2"]
    # which environments own the project here, from networks and volumes too
    assert state["owners"] == {"dev": ["network shop_default"], "test": ["volume shop_data"]}
    # no reader (or the SDK already connected): the engine answers
    class Fake:
        def containers(self, filters):
            return []

        def listed(self, filters):
            return []

        def networks(self, filters):
            return []

        def volumes(self, filters):
            return []

    ctx = Context(engine_factory=Fake, state_dir=str(tmp_path), reader=lambda: None, engine_id=lambda: "e1")
    assert OPERATIONS["state"](ctx, {"project": "shop"})["containers"] == []


def test_looks_read_through_the_socket_without_the_sdk(engine_socket, tmp_path):
    def no_sdk():
        raise AssertionError("stats, top and inspect must not connect the docker SDK")

    reads = SocketReads(engine_socket)
    ctx = Context(engine_factory=no_sdk, state_dir=str(tmp_path), reader=lambda: reads, engine_id=lambda: "e1")
    stats = OPERATIONS["stats"](ctx, {"project": "shop", "service": "web"})["containers"]
    assert [(s["name"], s["memory_used"], s["memory_percent"], s["pids"]) for s in stats] == [
        ("shop-web-1", None, None, None), ("shop-web-2", 2048, 50.0, 2)]  # web-1 exited: not sampled
    assert [u.path for u in Engine.requests if u.path.endswith("/stats")] == ["/containers/c2/stats"]
    top = OPERATIONS["top"](ctx, {"project": "shop", "service": "api"})["containers"]
    assert [(t["name"], t["titles"], t["processes"]) for t in top] == [("shop-api-1", ["PID", "CMD"], [["7", "httpd -f"]])]
    (doc,) = OPERATIONS["inspect"](ctx, {"project": "shop", "service": "web", "replica": 2})["containers"]
    assert doc["engine"]["Id"] == "c2" and doc["engine"]["Name"] == "/shop-web-2"

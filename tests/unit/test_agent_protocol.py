import json

import pytest

from agent import labels as L
from agent.protocol import (
    PROTOCOL_VERSION,
    AgentError,
    BadRequest,
    check_abs_path,
    check_container_name,
    check_image,
    check_project,
    encode,
    parse_request,
    request,
    split_image,
)

DIGEST = "sha256:" + "a" * 64


def test_request_round_trip():
    line = encode(request(3, "state", {"project": "shop"}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_request(line) == {"v": PROTOCOL_VERSION, "id": 3, "op": "state", "args": {"project": "shop"}}


def test_version_mismatch_is_an_error_not_undefined_behaviour():
    with pytest.raises(AgentError) as err:
        parse_request(json.dumps({"v": 99, "id": 1, "op": "info"}).encode())
    assert err.value.kind == "protocol"
    assert err.value.details == {"agent_protocol": PROTOCOL_VERSION, "request_protocol": 99}


@pytest.mark.parametrize("line", [b"not json", b"[1]", b'{"v": 1, "id": 1}', b'{"v":1,"id":1,"op":"x","args":[]}'])
def test_malformed_requests(line):
    with pytest.raises(BadRequest):
        parse_request(line)


@pytest.mark.parametrize("ref", [
    "busybox", "busybox:1.36", "10.250.0.1:5000/shop/web:1.0", "reg.example.com/a/b@" + DIGEST,
    "localhost:5000/x:tag@" + DIGEST, "library/busybox:latest",
])
def test_valid_images(ref):
    assert check_image(ref) == ref


@pytest.mark.parametrize("ref", [
    "", "Busybox", "busybox:", "a b", "busybox;rm -rf /", "x@sha256:abc", "$(id)", "-rf", "busybox:-x",
])
def test_invalid_images(ref):
    with pytest.raises(BadRequest):
        check_image(ref)


def test_split_image():
    assert split_image("10.250.0.1:5000/shop/web:1@" + DIGEST) == ("10.250.0.1:5000/shop/web", "1", DIGEST)
    assert split_image("busybox") == ("busybox", None, None)


@pytest.mark.parametrize("name", ["shop", "my-app_2", "a"])
def test_project_names(name):
    assert check_project(name) == name


@pytest.mark.parametrize("name", ["Shop", "-x", "a/b", "a b", "", "x" * 64, "a;b"])
def test_bad_project_names(name):
    with pytest.raises(BadRequest):
        check_project(name)


def test_container_names():
    assert check_container_name("/shop-web-1") == "shop-web-1"
    with pytest.raises(BadRequest):
        check_container_name("shop web")


def test_paths():
    assert check_abs_path("/run/secrets/x", "target") == "/run/secrets/x"
    assert check_abs_path("/var/lib/orch-agent/x", "p", roots=["/var/lib/orch-agent"]) == "/var/lib/orch-agent/x"
    for bad in ("relative", "/a/../b", "/a//b", "/a/./b"):
        with pytest.raises(BadRequest):
            check_abs_path(bad, "p")
    with pytest.raises(BadRequest):
        check_abs_path("/etc/passwd", "p", roots=["/var/lib/orch-agent"])
    with pytest.raises(BadRequest):
        check_abs_path("/var/lib/orch-agentx", "p", roots=["/var/lib/orch-agent"])


def test_labels_and_names():
    labels = L.container_labels("shop", "web", 2, "dev", "f" * 64, "r7", {"team": "a"})
    assert labels == {
        "team": "a", "io.orch.managed-by": "orch-agent", "io.orch.project": "shop", "io.orch.service": "web",
        "io.orch.replica": "2", "io.orch.env": "dev", "io.orch.config-hash": "f" * 64, "io.orch.release": "r7",
    }
    assert L.container_name("shop", "web", 2) == "shop-web-2"
    assert L.network_name("shop", "default") == "shop_default"
    assert L.filters("shop", "web") == ["io.orch.project=shop", "io.orch.service=web"]
    assert L.filters() == ["io.orch.project"]
    assert not L.is_ours({"com.docker.compose.project": "shop"})

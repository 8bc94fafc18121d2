import json

import pytest

from agent.wire import labels as L
from agent.wire.protocol import (
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


# --------------------------------------------------------------------------- the wire contract


@pytest.mark.parametrize("check, value", [
    (check_project, "web\n"), (check_container_name, "p-web-1\n"), (check_image, "busybox\n"),
    (check_image, "busybox:1\n"), (check_image, "busybox@" + DIGEST + "\n"),
])
def test_a_trailing_newline_is_not_part_of_a_valid_value(check, value):
    with pytest.raises(BadRequest):
        check(value)


def test_names_and_hashes_are_matched_whole():
    from agent.wire.protocol import check_hash, check_name

    for check, value in ((check_name, "web\n"), (check_hash, "a" * 12 + "\n")):
        with pytest.raises(BadRequest):
            check(value, "x")
    with pytest.raises(BadRequest):
        split_image("busybox\n")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), True, 10 ** 400, 1e300, "1"])
def test_numbers_must_be_finite_and_bounded(value):
    from agent.wire.protocol import check_number

    with pytest.raises(BadRequest):
        check_number(value, "timeout")


@pytest.mark.parametrize("value", [True, False, 2 ** 53, -(2 ** 53), 10 ** 30, 1.0])
def test_integers_are_not_bools_and_bounded(value):
    from agent.wire.protocol import check_int

    with pytest.raises(BadRequest):
        check_int(value, "n")
    assert check_int(2 ** 53 - 1, "n") == 2 ** 53 - 1


@pytest.mark.parametrize("line", [
    b'{"v": 1, "id": 1, "op": "info", "args": {"x": NaN}}',
    b'{"v": 1, "id": 1, "op": "info", "args": {"x": -Infinity}}',
    b'{"v": 1, "id": 1, "op": "info", "args": {"x": 1' + b"0" * 30 + b"}}",
    b'{"v": 1, "id": true, "op": "info"}',
    b'{"v": 1, "id": "1", "op": "info"}',
    b'{"v": 1, "id": 1, "op": "info", "args": {"x": ' + b"[" * 65 + b"]" * 65 + b"}}",
    b'{"v": 1, "id": 1, "op": "info", "args": {"x": ' + b"[" * 50000 + b"]" * 50000 + b"}}",
])
def test_requests_the_parser_refuses(line):
    with pytest.raises(BadRequest):
        parse_request(line)


def test_nesting_up_to_the_limit_is_fine():
    from agent.wire.protocol import MAX_DEPTH

    inner = b"[" * (MAX_DEPTH - 2) + b"]" * (MAX_DEPTH - 2)  # the request and args are two levels
    assert parse_request(b'{"v": 1, "id": 1, "op": "info", "args": {"x": ' + inner + b"}}")["op"] == "info"


def test_a_huge_value_is_not_echoed_whole():
    from agent.wire import ingress as W

    with pytest.raises(BadRequest) as err:
        check_project("X" * 1_000_000)
    assert len(err.value.message) < 300
    with pytest.raises(BadRequest) as err:  # any module's message, whatever it quotes
        W.Health.from_dict({"path": "/" + "x" * 1_000_000 + " "})
    assert "must start with '/'" in err.value.message and len(err.value.message) < 5000


def test_line_splitter_is_linear_and_bounded():
    import threading

    from agent.engine import LineSplitter
    from agent.wire.protocol import MAX_LOG_LINE

    data = b"y" * (16 * 1024 * 1024)  # a 16 MiB line without a newline, in 4 KiB chunks as a stream gives it
    out = []

    def run():
        split = LineSplitter()
        for i in range(0, len(data), 4096):
            out.extend(split.feed(data[i:i + 4096]))
        out.extend(split.feed(b"\nshort\n"))
        out.extend(split.flush())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)  # a hang guard: linear takes well under a second
    assert not t.is_alive()
    assert len(out) == 16 * 1024 * 1024 // MAX_LOG_LINE + 1 and all(len(ln) == MAX_LOG_LINE for ln in out[:-1])
    assert out[-1] == "short"


def test_line_splitter_cuts_at_character_boundaries_and_keeps_empty_lines():
    from agent.engine import LineSplitter

    split = LineSplitter(max_line=8)
    text = "aaaaaaa€bbb\n\nc"  # '€' is 3 bytes at offset 7: the first piece stops before it
    out = split.feed(text.encode()[:9]) + split.feed(text.encode()[9:]) + split.flush()
    assert out == ["aaaaaaa", "€bbb", "", "c"]

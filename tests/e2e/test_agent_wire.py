"""The agent's wire contract over the real SSH channel on the lab (dev-1): requests the
agent refuses get a bad_request answer and the session goes on serving; a container's
log line without a newline reaches the controller in pieces of at most 64 KiB.

Own project (e2e-wire-XXXXXX) on dev-1, removed afterwards.
"""

from __future__ import annotations

import time
import uuid

import pytest

from agent.wire.protocol import MAX_LOG_LINE
from agent.wire.spec import config_hash
from orchestrator.core.environments import NodeSpec
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dev(lab):
    target = next(NodeSpec(n.name, n.address, n.ssh_port, lab.ssh_user, lab.ssh_key)
                  for n in lab.nodes if n.name == "dev-1")
    options = T.SSHOptions(known_hosts=lab.known_hosts, allow_agent=False, env_name="dev", connect_timeout=5,
                           command_timeout=120)
    conn = T.connect(target, options)
    session = T.AgentSession.open(conn, current_bundle())
    yield session
    session.close()
    conn.close()


@pytest.fixture
def project(dev):
    name = "e2e-wire-" + uuid.uuid4().hex[:6]
    yield name
    dev.call("remove", {"project": name, "remove_volumes": True})


def raw(session, line: bytes) -> dict:
    """Sends one line as it is; returns the agent's answer."""
    session.channel.sendall(line + b"\n")
    return session._read()


def test_refused_requests_leave_the_session_serving(dev):
    answers = [
        raw(dev, b'{"v": 1, "id": 9001, "op": "cancel", "args": {"target": [1]}}'),
        raw(dev, b'{"v": 1, "id": 9002, "op": "info", "args": {}, "x": NaN}'),
        raw(dev, b'{"v": 1, "id": 9003, "op": "info", "args": {}, "x": ' + b"[" * 70 + b"]" * 70 + b"}"),
        raw(dev, b'{"v": 1, "id": 9004, "op": "info", "args": {}, "x": 1' + b"0" * 40 + b"}"),
    ]
    assert [(a["id"], a["error"]["kind"]) for a in answers] == [(9001 + i, "bad_request") for i in range(4)]
    assert "target" in answers[0]["error"]["message"] and "NaN" in answers[1]["error"]["message"]
    with pytest.raises(T.AgentError) as err:
        dev.call("state", {"project": "web\n"})
    assert err.value.kind == "bad_request" and "not a valid project name" in err.value.message
    with pytest.raises(T.AgentError) as err:
        dev.call("lock_status", {"env": "dev\n"})
    assert err.value.kind == "bad_request"
    assert dev.call("hello", {"protocol": 1})["protocol"] == 1  # the same session goes on


def test_a_log_line_without_newline_comes_in_bounded_pieces(dev, project):
    size = 2 * 1024 * 1024
    c = {"image": "busybox:latest", "networks": [{"name": "default"}], "stop_grace_period": 1, "init": True,
         "command": ["sh", "-c", f"head -c {size} /dev/zero | tr '\\000' x; sleep 3600"]}
    spec = {"project": project, "service": "talk", "env": "dev", "release": "r1", "replicas": [1],
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}
    dev.call("apply", {"spec": spec})
    pieces: list[str] = []
    for _ in range(60):  # the container writes its line within a moment of starting
        stream = dev.stream("logs", {"project": project, "tail": "all"})
        pieces = [ev["line"] for ev in stream if ev["type"] == "log"]
        if sum(len(p) for p in pieces) >= size:
            break
        time.sleep(0.5)
    assert pieces and all(len(p.encode()) <= MAX_LOG_LINE for p in pieces), [len(p) for p in pieces][:5]
    assert "".join(pieces) == "x" * size
    assert dev.call("hello", {"protocol": 1})["protocol"] == 1

"""Round trips to the nodes (issue 17): each agent session counts its requests and the
round trips it waited for; reads sent behind `lock_acquire` run under the lock and cost
no round trip of their own; a no-op's lock, ledger and state take one round trip per
node after the connect; `orch up` connects while it pins images (not while it builds).

The agent here is the real one (agent.rpc.Server over a FakeEngine) on pipes, behind a
stand-in for the SSH channel."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from agent import lock as AL
from orchestrator.app import pipeline as P
from orchestrator.app import up as PU
from orchestrator.app.connection import EnvConnection
from orchestrator.core.progress import Progress
from orchestrator.io import nodes as N
from orchestrator.io import transport as T
from orchestrator.io.lock import LockHolder
from orchestrator.io.transport.agent_session import AgentCounts
from orchestrator.io.transport.options import SSHOptions
from tests.unit.fakes import _AGENT_PROCESS

HOLDER = LockHolder("ada", "laptop", "orch up --env prod", "2024-01-01T10:00:00Z")
LIST = ("release_list", {"env": "prod", "project": "shop", "limit": 50})
STATE = ("state", N.state_args("shop"))


class PipeChannel:
    """What AgentSession needs of a paramiko Channel, over the pipes of a real agent process
    (fakes._AGENT_PROCESS: agent.rpc over a FakeEngine), which ends, its locks with it, at
    end of input, as under sshd."""

    def __init__(self, state_dir):
        self.p = subprocess.Popen([sys.executable, "-c", _AGENT_PROCESS, str(state_dir)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, bufsize=0)
        self.sent: list[bytes] = []  # each write: requests pipelined together arrive in one
        self.closed = False

    @property
    def exit_status(self):
        return self.p.returncode

    def sendall(self, data):
        if b'"op":"ping"' not in data:
            self.sent.append(data)
        self.p.stdin.write(data)

    def recv(self, n):
        return os.read(self.p.stdout.fileno(), n)

    def settimeout(self, timeout):
        pass

    def shutdown_write(self):
        if not self.p.stdin.closed:
            self.p.stdin.close()

    def close(self):
        self.shutdown_write()
        self.closed = True

    def exit_status_ready(self):
        return self.p.poll() is not None

    def recv_stderr_ready(self):
        return False

    def ended(self, timeout=10.0):
        try:
            self.p.wait(timeout)
        finally:
            self.p.stdout.close()
        return True


class Conn:
    options = SSHOptions()

    def __init__(self, name):
        self.name = name
        self.closed = False

    def close(self):
        self.closed = True


def session(tmp_path, name="prod-1"):
    ch = PipeChannel(tmp_path)
    return T.AgentSession(Conn(name), ch, "/x.pyz", False), ch


def node(tmp_path, name="prod-1"):
    s, _ = session(tmp_path, name)
    s.hello = s.call("hello", {"protocol": 1})
    return N.SSHNode(s.conn, None, s)


def lock_file(tmp_path):
    return str(tmp_path / "engines" / "FAKE-ENGINE-1" / "locks" / "prod.lock")


# --------------------------------------------------------------------------- counting


def test_a_session_counts_requests_and_round_trips(tmp_path):
    s, ch = session(tmp_path)
    try:
        assert s.counts() == AgentCounts(0, 0)
        s.call("hello", {"protocol": 1})
        assert s.counts() == AgentCounts(1, 1)
        a, b = s.stream(*STATE), s.stream(*LIST)  # sent before either answer is waited for
        assert b.wait()["releases"] == [] and "containers" in a.wait()  # read out of order
        assert s.counts() == AgentCounts(3, 2)
        s.call("lock_status", {"env": "prod"})
        assert s.counts() == AgentCounts(4, 3)
        time.sleep(0.01)
        assert s.counts().requests == 4  # the lease's pings are not requests
    finally:
        s.close()


def test_requests_behind_the_next_go_in_its_write_and_run_under_the_lock(tmp_path):
    s, ch = session(tmp_path)
    try:
        status = s.send_behind_next("lock_status", {"env": "prod"})
        listed = s.send_behind_next(*LIST)
        assert ch.sent == [] and s.counts() == AgentCounts(0, 0)  # nothing sent yet
        got = s.call("lock_acquire", {"env": "prod", "holder": HOLDER.to_args()})
        assert got["acquired"] and len(ch.sent) == 1 and ch.sent[0].count(b"\n") == 3
        assert listed.wait()["releases"] == []
        assert status.wait()["mine"] is True  # served after lock_acquire: under the lock
        assert s.counts() == AgentCounts(3, 1)
    finally:
        s.close()
    assert ch.ended() and not AL.is_locked(lock_file(tmp_path))


def test_reads_behind_a_refused_lock_are_answered_and_the_refusal_stands(tmp_path):
    holder, _ = session(tmp_path)
    other, _ = session(tmp_path)
    try:
        holder.call("lock_acquire", {"env": "prod", "holder": HOLDER.to_args()})
        behind = other.send_behind_next("lock_status", {"env": "prod"})
        with pytest.raises(T.AgentError) as err:
            other.call("lock_acquire", {"env": "prod", "holder": HOLDER.to_args(), "wait_s": 0})
        assert err.value.kind == "locked"
        assert behind.wait() == {"env": "prod", "held": True, "mine": False, "holder": behind.result["holder"]}
    finally:
        holder.close()
        other.close()
        holder.channel.ended()
        other.channel.ended()


# --------------------------------------------------------------------------- the node


def test_a_node_answers_reads_sent_behind_the_lock_without_asking_again(tmp_path):
    n = node(tmp_path)
    try:
        n.read_behind_next([LIST, STATE])
        with n.session() as s:
            pass  # any other use of the node drops them (nothing was sent yet: nothing to drop)
        n.read_behind_next([LIST, STATE])
        n.lock_session().call("lock_acquire", {"env": "prod", "holder": HOLDER.to_args()})
        before = n.lock_session().counts()
        assert n.call(*STATE)["containers"] == [] and n.call(*LIST)["releases"] == []  # out of order
        assert n.lock_session().counts() == before  # answered from what came back with the lock
        assert n.round_trips().to_json() == {"connect": {"requests": 1, "round_trips": 1},
                                             "after_connect": {"requests": 3, "round_trips": 1, "sessions": 0}}
        n.call(*STATE)  # read ahead once: asked again, the agent answers
        assert n.round_trips().after_connect == AgentCounts(4, 2)
    finally:
        n.close()


def test_any_other_request_drops_what_was_read_ahead(tmp_path):
    n = node(tmp_path)
    try:
        n.read_behind_next([STATE])
        n.lock_session().call("lock_acquire", {"env": "prod", "holder": HOLDER.to_args()})
        n.call("lock_status", {"env": "prod"})  # e.g. a write: the state read before it is stale
        n.call(*STATE)
        assert n.round_trips().after_connect == AgentCounts(4, 3)
        with n.session() as s:
            assert s is n.lock_session()  # back in the pool once nothing is read ahead
    finally:
        n.close()


def test_requests_sent_together_cost_one_round_trip_and_a_failure_stops_none(tmp_path):
    n = node(tmp_path)
    try:
        before = n.round_trips().after_connect
        out = n.call_many([("discard", {"project": "shop", "env": "prod"}),
                           ("discard", {"project": "BAD NAME"}),  # refused by the agent
                           ("prune_images", {"project": "shop", "keep": [], "env": "prod"})])
        assert [kind for kind, _ in out] == ["ok", "error", "ok"], out
        assert out[1][1].kind == "bad_request" and out[2][1]["removed"] == []
        assert n.round_trips().after_connect - before == AgentCounts(3, 1)
    finally:
        n.close()


def test_env_connection_takes_the_lock_with_the_reads_and_lets_go_on_close(tmp_path):
    from orchestrator.core.environments import load_environment

    envs = tmp_path / "environments"
    envs.mkdir()
    (envs / "prod.yaml").write_text("name: prod\nnodes:\n  - {name: prod-1, host: 10.250.0.201}\n")
    env = load_environment("prod", envs)
    nodes = {"prod-1": node(tmp_path / "n1")}
    conn = EnvConnection(env, "shop", Progress(), P.Seams(connector=lambda e, p, project: nodes))
    conn.connect(read_state=False)
    ledger = conn.ledger()
    conn.lock("orch up --env prod", 0, _performer(),
              reads=[ledger.list_request(50), conn.state_read()])
    assert AL.is_locked(str(tmp_path / "n1" / "engines" / "FAKE-ENGINE-1" / "locks" / "prod.lock"))
    assert ledger.history(50).releases == []
    N.observe_nodes(conn.nodes, "shop", env="prod")
    session_ = nodes["prod-1"].lock_session()
    conn.close()
    assert conn.round_trips == {"prod-1": {"connect": {"requests": 1, "round_trips": 1},
                                           "after_connect": {"requests": 4, "round_trips": 1, "sessions": 0}}}
    assert session_.channel.ended()  # lock_release sent, not waited for; then end of input
    assert not AL.is_locked(str(tmp_path / "n1" / "engines" / "FAKE-ENGINE-1" / "locks" / "prod.lock"))


def _performer():
    from orchestrator.core.releases import Performer

    return Performer(user="ada", host="laptop", login="ada")


# --------------------------------------------------------------------------- up connects while it pins


def test_up_connects_while_the_images_are_pinned(world):
    connected = threading.Event()
    pinned = []

    asked = []

    def connector(environment, progress, project=None):
        asked.append(project)
        connected.set()
        return world.connector(environment, progress, project)

    def images(project, env, **kw):
        pinned.append(connected.wait(10))  # the connect started before the images step ended
        return world.prepare_images(project, env, **kw)

    ws, base = world.workspaces("dev")
    res = PU.up(ws, base, P.PipelineOptions(), Progress(), world.seams(connector=connector, images=images))
    assert res.status == "ok" and pinned == [True]
    assert asked == [None]  # no state along with hello: it is read under the lock
    ws, base = world.workspaces("dev")
    PU.up(ws, base, P.PipelineOptions(dry_run=True), Progress(), world.seams(connector=connector, images=images))
    assert asked == [None, "hello"]  # a dry run takes no lock: the state comes with hello


def test_up_connects_after_a_build_and_not_at_all_when_it_fails(world):
    from orchestrator.io.registry_client import RegistryUnavailable

    (world.dir / "api").mkdir()
    (world.dir / "api" / "Dockerfile").write_text("FROM busybox\n")
    world.write_compose((world.dir / "compose.yaml").read_text().replace("image: api-src", "build: ./api"))
    order = []

    def connector(environment, progress, project=None):
        order.append("connect")
        return world.connector(environment, progress, project)

    def images(project, env, **kw):
        order.append("images")
        return world.prepare_images(project, env, **kw)

    ws, base = world.workspaces("dev")
    res = PU.up(ws, base, P.PipelineOptions(), Progress(), world.seams(connector=connector, images=images))
    assert res.status == "ok" and order == ["images", "connect"]
    world.images_error = RegistryUnavailable("registry reg.test:5000 is not reachable", registry="reg.test:5000")
    ws, base = world.workspaces("dev")
    with pytest.raises(RegistryUnavailable):
        PU.up(ws, base, P.PipelineOptions(), Progress(), world.seams(connector=connector, images=images))
    assert order == ["images", "connect", "images"]


def test_the_result_reports_round_trips(world):
    res = world.up()
    assert res.to_json()["round_trips"] == {}  # the fake nodes count nothing
    res.round_trips = {"d1": N.RoundTrips(AgentCounts(1, 1), AgentCounts(4, 1)).to_json()}
    assert res.to_json()["round_trips"]["d1"]["after_connect"] == {"requests": 4, "round_trips": 1, "sessions": 0}

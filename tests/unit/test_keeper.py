"""The keeper (ssh.persist): its wire (socket place, requests, errors, what a kept connection
is for) and the relay between a command's socket and an SSH channel. The keeper against
real sshd: tests/e2e/test_keeper.py."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.core.environments import NodeSpec
from orchestrator.io.transport import errors as E
from orchestrator.io.transport import keeper_wire as W
from orchestrator.io.transport.keeper import relay
from orchestrator.io.transport.kept import RelayChannel
from orchestrator.io.transport.options import SSHOptions


def node(tmp_path: Path, **kw) -> NodeSpec:
    key = tmp_path / "id_ed25519"
    if not key.exists():
        key.write_text("not a real key\n")
    return NodeSpec(**{"name": "prod-1", "host": "10.0.0.5", "user": "deploy", "identity_file": key,
                       "labels": {"zone": "a"}, **kw})


def options(tmp_path: Path, **kw) -> SSHOptions:
    known = tmp_path / "known_hosts"
    if not known.exists():
        known.write_text("10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    return SSHOptions(**{"known_hosts": known, "env_name": "prod", **kw})


def test_node_and_options_go_over_the_wire_unchanged(tmp_path):
    t, o = node(tmp_path, port=2222, jump="admin@bastion:22"), options(tmp_path, connect_timeout=3.0)
    assert W.target_from_json(W.target_to_json(t)) == t
    assert W.options_from_json(W.options_to_json(o)) == o


def test_a_kept_connection_is_for_one_node_options_and_trust(tmp_path):
    t, o = node(tmp_path), options(tmp_path)
    key = W.connection_key(t, o)
    assert W.connection_key(t, o) == key
    assert W.connection_key(node(tmp_path, user="root"), o) != key
    assert W.connection_key(t, options(tmp_path, strict_host_keys=False)) != key
    # a host key trusted, removed or changed: a new connection, whose key is checked anew
    o.known_hosts_path.write_text("10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbCb4Y51P9vSD6uDgYZBjt1bYLyM4rQYbfB5B2tTBG7\n")
    changed_trust = W.connection_key(t, o)
    assert changed_trust != key
    # a key file rotated (the key's content is never read into the key)
    time.sleep(0.01)
    t.identity_file.write_text("another key\n")
    assert W.connection_key(t, o) != changed_trust
    assert "another key" not in str(W.target_to_json(t))


def test_persist_comes_from_the_environment_variable_before_the_file(tmp_path):
    o = options(tmp_path, persist=120.0)
    assert W.persist_seconds(o, {}) == 120.0
    assert W.persist_seconds(o, {W.PERSIST_ENV: "0"}) == 0.0
    assert W.persist_seconds(options(tmp_path), {W.PERSIST_ENV: "30"}) == 30.0
    assert W.persist_seconds(o, {W.PERSIST_ENV: "soon"}) == 0.0  # unreadable: off, never a guess
    assert W.persist_seconds(o, {W.PERSIST_ENV: "1e9"}) == W.MAX_PERSIST


def test_the_socket_lives_in_a_private_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert W.socket_path({"XDG_RUNTIME_DIR": str(run)}) == run / "orch" / "keeper.sock"
    assert W.socket_path({W.SOCKET_ENV: "/x/k.sock", "XDG_RUNTIME_DIR": str(run)}) == Path("/x/k.sock")
    d = W.private_dir(run / "orch")
    assert (os.stat(d).st_mode & 0o777) == 0o700
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(PermissionError):
        W.private_dir(open_dir)
    link = tmp_path / "link"
    link.symlink_to(run / "orch")
    with pytest.raises(PermissionError):
        W.private_dir(link)


def test_a_node_error_met_by_the_keeper_is_raised_as_its_own_class():
    err = E.UnknownHostKey("prod-1: unknown host key", fingerprint="SHA256:abc", key_type="ssh-ed25519",
                           node="prod-1", fix="orch nodes trust --env prod")
    back = W.error_from_json(W.error_to_json(err))
    assert type(back) is E.UnknownHostKey and back.node == "prod-1" and back.fingerprint == "SHA256:abc"
    assert back.render() == err.render() and back.to_json() == err.to_json()
    changed = W.error_from_json(W.error_to_json(E.HostKeyChanged("x", fingerprint="a", expected="b", node="n")))
    assert type(changed) is E.HostKeyChanged and changed.expected == "b"
    other = W.error_from_json(W.error_to_json(RuntimeError("boom")))
    assert isinstance(other, W.KeeperError) and "boom" in str(other)


# --------------------------------------------------------------------------- the relay


class FakeChannel:
    """The part of paramiko.Channel the relay uses: output queued by the test."""

    def __init__(self):
        self.out: queue.Queue = queue.Queue()
        self.err = bytearray()
        self.stdin = bytearray()
        self.status: int | None = None
        self.status_event = threading.Event()
        self.write_shut = threading.Event()
        self.closed = False
        self.timeout = None

    def settimeout(self, t):
        self.timeout = t

    def recv(self, n):
        try:
            data = self.out.get(timeout=self.timeout)
        except queue.Empty:
            raise socket.timeout() from None
        return data

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        data, self.err[:] = bytes(self.err), b""
        return data

    def exit_status_ready(self):
        return self.status is not None

    @property
    def exit_status(self):
        return self.status

    def sendall(self, data):
        self.stdin += data

    def shutdown_write(self):
        self.write_shut.set()

    def close(self):
        self.closed = True

    def end(self, status: int, stderr: bytes = b""):
        self.err += stderr
        self.status = status
        self.status_event.set()
        self.out.put(b"")


def relayed(fake: FakeChannel) -> tuple[RelayChannel, threading.Thread]:
    a, b = socket.socketpair()
    t = threading.Thread(target=relay, args=(b, fake), daemon=True)
    t.start()
    return RelayChannel(a), t


def test_the_relay_carries_input_output_stderr_and_the_exit_status():
    fake = FakeChannel()
    chan, t = relayed(fake)
    chan.settimeout(5)
    chan.sendall(b'{"id":1,"op":"hello"}\n')
    fake.out.put(b'{"id":1,"result":{}}\n')
    assert chan.recv(65536) == b'{"id":1,"result":{}}\n'
    chan.shutdown_write()
    assert fake.write_shut.wait(5)  # the agent reads its end of input
    assert bytes(fake.stdin) == b'{"id":1,"op":"hello"}\n'
    fake.end(3, b"Traceback: gone\n")
    t.join(5)
    assert chan.recv(10) == b""  # end of output
    assert chan.exit_status_ready() and chan.exit_status == 3 and chan.recv_exit_status() == 3
    assert chan.recv_stderr_ready() and chan.recv_stderr(100) == b"Traceback: gone\n"
    assert fake.closed and chan.closed


def test_a_command_that_goes_away_closes_its_channel():
    """A killed command's socket closes: the channel's input ends and the channel closes, so
    the agent frees a deploy lock at once, not when its lease runs out."""
    fake = FakeChannel()
    chan, t = relayed(fake)
    chan.close()
    assert fake.write_shut.wait(5)
    fake.end(0)
    t.join(5)
    assert not t.is_alive() and fake.closed


def test_a_silent_channel_times_out_like_paramikos():
    chan, _ = relayed(FakeChannel())
    chan.settimeout(0.05)
    with pytest.raises(socket.timeout):
        chan.recv(10)
    chan.close()


# --------------------------------------------------------------------------- ssh.persist in the file


def _env(tmp_path, ssh: str):
    path = tmp_path / "prod.yaml"
    path.write_text("name: prod\nnodes:\n  - {name: prod-1, host: 10.0.0.1}\n" + ssh)
    return path


def test_the_environment_file_sets_persist_off_by_default(tmp_path):
    from orchestrator.core.environments import parse_environment

    assert parse_environment(_env(tmp_path, "")).ssh.persist == 0.0
    assert parse_environment(_env(tmp_path, "ssh: {persist: 300}\n")).ssh.persist == 300.0


@pytest.mark.parametrize("value", ["-1", "100000", "soon"])
def test_a_persist_out_of_range_is_refused_naming_line_and_key(tmp_path, value):
    from orchestrator.core.environments import parse_environment
    from orchestrator.errors import InputError

    with pytest.raises(InputError) as err:
        parse_environment(_env(tmp_path, f"ssh:\n  persist: {value}\n"))
    problem = err.value.problems[0]
    assert problem.key == "ssh.persist" and problem.line == 5 and "prod.yaml" in str(problem.file)


# --------------------------------------------------------------------------- the keeper's spares


class SpareChannel:
    def __init__(self, argv):
        self.argv = argv
        self.closed = False
        self.eof_received = False
        self.status = None
        self.sent = []

    def exit_status_ready(self):
        return self.status is not None

    def sendall(self, data):
        self.sent.append(data)

    def close(self):
        self.closed = True


class KeptConn:
    name = "prod-1"
    options = SimpleNamespace(connect_timeout=0.2)

    def __init__(self):
        self.opened: list[SpareChannel] = []
        self.active = True
        self.answers = True
        self.transport = SimpleNamespace(global_request=self._probe)

    def _probe(self, kind, wait=True):
        while not self.answers and self.active:  # a node gone silent: no reply, ever
            time.sleep(0.01)
        return None  # sshd refuses the request: an answer

    def is_active(self):
        return self.active

    def open_exec(self, argv, timeout=None):
        ch = SpareChannel(list(argv))
        self.opened.append(ch)
        return ch

    def close(self):
        self.active = False


@pytest.fixture
def keeper(monkeypatch, tmp_path):
    from orchestrator.io.transport import keeper as K

    conns: list[KeptConn] = []

    def connect(target, options):
        conns.append(KeptConn())
        return conns[-1]

    monkeypatch.setattr(K, "connect", connect)
    monkeypatch.setattr(K, "SPARE_WAIT", 2.0)
    k = K.Keeper(str(tmp_path / "k.sock"))
    k.conns = conns
    t, o = node(tmp_path), options(tmp_path)
    k.req = lambda argv, persist=60: {"target": W.target_to_json(t), "options": W.options_to_json(o),
                                      "argv": argv, "persist": persist}
    k.key = W.connection_key(t, o)
    return k


def _spare_after(keeper, kept, argv):
    keeper._start_spare(kept, tuple(argv))
    deadline = time.monotonic() + 5
    while kept.spare_for(tuple(argv)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return kept.spare_for(tuple(argv))


def test_a_spare_is_handed_out_once_and_a_dead_one_never(keeper):
    agent = ["python3", "/b/orch-agent-aa.pyz", "rpc"]
    kept, first, warm = keeper._connection(keeper.key, keeper.req(agent))
    assert not warm and len(keeper.conns) == 1
    keeper._kept[keeper.key][0].channels -= 1  # the first command ended
    spare = _spare_after(keeper, kept, agent)
    _, got, warm = keeper._connection(keeper.key, keeper.req(agent))
    assert warm and got is spare.channel and spare.taken and not kept.spares
    # the next command finds no spare: a channel of its own, never the one handed out
    _, other, warm = keeper._connection(keeper.key, keeper.req(agent))
    assert not warm and other is not got
    dead = _spare_after(keeper, kept, agent)
    dead.channel.status = 1  # the agent exited (e.g. its bundle was removed)
    _, fresh, warm = keeper._connection(keeper.key, keeper.req(agent))
    assert not warm and fresh is not dead.channel and dead.channel.closed
    assert len(keeper.conns) == 1  # all on the one kept connection


def test_a_spare_of_another_bundle_is_closed_when_the_next_one_starts(keeper):
    old, new = ["python3", "/b/orch-agent-aa.pyz", "rpc"], ["python3", "/b/orch-agent-bb.pyz", "rpc"]
    kept, _, _ = keeper._connection(keeper.key, keeper.req(old))
    stale = _spare_after(keeper, kept, old)
    assert _spare_after(keeper, kept, new) is not None
    assert stale.channel.closed and [sp.argv for sp in kept.spares] == [tuple(new)]


def test_as_many_spares_as_the_last_command_had_agents_at_once_within_a_bound(keeper):
    from orchestrator.io.transport.keeper import MAX_SPARES

    agent = ["python3", "/b/orch-agent-aa.pyz", "rpc"]
    kept, _, _ = keeper._connection(keeper.key, keeper.req(agent))
    keeper._opened(kept)
    assert keeper._closed(kept)  # the first command's one agent

    def command(agents):  # a command with this many agents at once on the node, then its end
        for _ in range(agents):
            assert keeper._connection(keeper.key, keeper.req(agent))[0] is kept
            keeper._opened(kept)
        ends = [keeper._closed(kept) for _ in range(agents)]
        assert ends == [False] * (agents - 1) + [True]  # spares only once the command is over
        keeper._start_spare(kept, tuple(agent))
        deadline = time.monotonic() + 5
        while kept.starting and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(kept.spares)

    assert command(1) == 1  # a no-op: one agent, one spare
    assert command(2) == 2  # two services applied at once on the node: two ready for the next deploy
    assert command(MAX_SPARES + 2) == MAX_SPARES  # never more idle agents on a node than this
    opened = len(keeper.conns[0].opened)
    # a no-op takes one; the others are enough for its one agent next time: none started
    assert command(1) == MAX_SPARES - 1 and len(keeper.conns[0].opened) == opened
    got = {keeper._connection(keeper.key, keeper.req(agent))[1] for _ in range(MAX_SPARES - 1)}
    assert len(got) == MAX_SPARES - 1 and not kept.spares  # each handed out once


def test_a_busy_connection_gets_a_second_one_beside_it(keeper):
    from orchestrator.io.transport.keeper import CHANNELS_PER_CONNECTION

    agent = ["python3", "/b/orch-agent-aa.pyz", "rpc"]
    for _ in range(CHANNELS_PER_CONNECTION + 1):
        keeper._connection(keeper.key, keeper.req(agent))
    assert len(keeper.conns) == 2  # sshd's MaxSessions is never reached on one connection


def test_idle_connections_close_and_then_the_keeper_may_exit(keeper):
    agent = ["python3", "/b/orch-agent-aa.pyz", "rpc"]
    kept, _, _ = keeper._connection(keeper.key, keeper.req(agent, persist=0.05))
    assert not keeper._expire()  # a command is using it
    kept.channels -= 1
    spare = _spare_after(keeper, kept, agent)
    keeper._persist = 0.05
    keeper._last_request = time.monotonic() - 5
    time.sleep(0.1)
    kept.last_used = time.monotonic() - 5
    assert keeper._expire() and spare.channel.closed and not keeper.conns[0].active


# --------------------------------------------------------------------------- a command's side


@pytest.mark.parametrize("failure", [W.KeeperError("the keeper failed"),
                                     E.AuthenticationFailed("prod-1: authentication failed", node="prod-1")])
def test_a_failed_keeper_or_its_refused_login_means_a_direct_connection(monkeypatch, tmp_path, failure):
    from orchestrator.io.transport import kept as K

    direct = SimpleNamespace(open_exec=lambda argv, timeout=None: ("direct", argv), close=lambda: None,
                             is_active=lambda: True)

    def keeper(*a, **kw):
        raise failure

    monkeypatch.setattr(K, "open_through_keeper", keeper)
    monkeypatch.setattr(K, "connect", lambda t, o: direct)
    conn = K.KeptConnection(node(tmp_path), options(tmp_path), 60.0, tmp_path / "k.sock")
    assert conn.open_agent_exec(["python3", "a.pyz", "rpc"]) == ("direct", ["python3", "a.pyz", "rpc"])


@pytest.mark.parametrize("failure", [E.HostUnreachable("prod-1: timed out", node="prod-1"),
                                     E.HostKeyChanged("prod-1: changed", fingerprint="a", expected="b", node="prod-1")])
def test_the_nodes_own_failure_is_not_tried_again(monkeypatch, tmp_path, failure):
    from orchestrator.io.transport import kept as K

    def keeper(*a, **kw):
        raise failure

    monkeypatch.setattr(K, "open_through_keeper", keeper)
    monkeypatch.setattr(K, "connect", lambda t, o: pytest.fail("connected directly"))
    conn = K.KeptConnection(node(tmp_path), options(tmp_path), 60.0, tmp_path / "k.sock")
    with pytest.raises(type(failure)):
        conn.open_agent_exec(["python3", "a.pyz", "rpc"])


def test_a_kept_connection_idle_for_a_while_is_asked_first_and_dropped_when_silent(keeper):
    from orchestrator.io.transport.keeper import PROBE_AFTER

    agent = ["python3", "/b/orch-agent-aa.pyz", "rpc"]
    kept, _, _ = keeper._connection(keeper.key, keeper.req(agent))
    kept.channels -= 1
    kept.last_used -= PROBE_AFTER + 1
    again, _, _ = keeper._connection(keeper.key, keeper.req(agent))  # answers: used again
    assert again is kept and len(keeper.conns) == 1
    again.channels -= 1
    kept.last_used -= PROBE_AFTER + 1
    keeper.conns[0].answers = False  # rebooted, or the link lost, since the last command
    fresh, _, _ = keeper._connection(keeper.key, keeper.req(agent))
    assert fresh is not kept and len(keeper.conns) == 2 and not keeper.conns[0].active
    assert keeper._kept[keeper.key] == [fresh]


def test_a_kept_connection_that_refuses_a_channel_is_replaced_once(keeper):
    agent = ["python3", "/b/orch-agent-aa.pyz", "rpc"]
    kept, _, _ = keeper._connection(keeper.key, keeper.req(agent))
    kept.channels -= 1

    def refuse(argv, timeout=None):
        raise E.HostUnreachable("prod-1: cannot open a channel", node="prod-1")

    keeper.conns[0].open_exec = refuse
    fresh, chan, _ = keeper._connection(keeper.key, keeper.req(agent))
    assert fresh is not kept and chan.argv == agent and not keeper.conns[0].active


# --------------------------------------------------------------------------- a real keeper process


def test_a_keeper_is_started_on_demand_answers_with_the_nodes_error_and_exits_when_idle(tmp_path):
    """No sshd here: a node whose port refuses. The keeper (a process of its own, started by
    the first request) says HostUnreachable as a direct connect would, and, holding no
    connection, exits within its persist."""
    from orchestrator.io.transport.kept import open_through_keeper

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    d = tmp_path / "k"
    sock = d / "keeper.sock"
    t = node(tmp_path, host="127.0.0.1", port=port)
    o = options(tmp_path, connect_timeout=2.0, retries=0)
    with pytest.raises(E.HostUnreachable) as err:
        open_through_keeper(sock, t, o, ["python3", "a.pyz", "rpc"], persist=1.0, spare=True)
    assert err.value.node == "prod-1" and "refused" in err.value.render()
    assert (os.stat(d).st_mode & 0o777) == 0o700 and not os.stat(sock).st_mode & 0o077  # this user only
    deadline = time.monotonic() + 15
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sock.exists()  # gone when idle, its socket removed
    assert "exits (idle)" in (d / "keeper.log").read_text()

"""Transport pieces that need no SSH server: targets, options, errors, parallelism."""

import socket
from pathlib import Path

import paramiko
import pytest

from orchestrator.core.environments import NodeSpec
from orchestrator.errors import InputError
from orchestrator.io import transport as T
from orchestrator.io.transport import agent_session, ssh
from orchestrator.io.transport import (
    AgentError,
    HostUnreachable,
    NodesUnreachable,
    SSHOptions,
    UnknownHostKey,
)


def test_node_names_and_jump():
    t = NodeSpec("web-1", "10.250.0.11", 2222, jump="admin@bastion:2200")
    assert t.address == "10.250.0.11:2222" and t.known_hosts_name == "[10.250.0.11]:2222"
    assert NodeSpec("a", "h").known_hosts_name == "h"
    j = t.jump_target()
    assert (j.name, j.host, j.port, j.user) == ("web-1 (jump host)", "bastion", 2200, "admin")
    j = NodeSpec("a", "h", user="deploy", identity_file=Path("/k"), jump="bastion").jump_target()
    assert (j.host, j.port, j.user, j.identity_file, j.jump_target()) == ("bastion", 22, "deploy", Path("/k"), None)
    assert NodeSpec("a", "[fd00::1]", jump="ops@[fd00::2]:2222").jump_target().host == "fd00::2"
    with pytest.raises(InputError):  # a node built by hand: the environment file refuses it when loaded
        NodeSpec("a", "h", jump="a@b:c:d").jump_target()


def test_a_node_is_hashable_and_equal_by_its_fields():
    a = NodeSpec("a", "h", labels={"role": "web"}, line=3)
    assert a == NodeSpec("a", "h", labels={"role": "web"}, line=9) and len({a, NodeSpec("a", "h", 2222)}) == 2


def test_options_from_environment_objects():
    from orchestrator.core.environments import Environment, SSHSettings

    node = NodeSpec(name="dev-1", host="10.250.0.11", identity_file=Path("/k"), labels={"role": "web"}, jump="j:22")
    env = Environment(name="dev", file=Path("/e/dev.yaml"), nodes=[node],
                      ssh=SSHSettings(known_hosts=Path("/kh"), connect_timeout=3, command_timeout=9, strict_host_keys=True),
                      registry=None, promote_from=None, gates=None, verify=None, vars={})
    o = T.options_from_env(env, retries=0)
    assert (o.known_hosts_path, o.strict_host_keys, o.connect_timeout, o.command_timeout, o.retries) == (Path("/kh"), True, 3, 9, 0)
    assert o.trust_command() == "orch nodes trust --env dev"
    assert SSHOptions().known_hosts_path == Path.home() / ".ssh" / "known_hosts"


def test_fingerprint_matches_openssh_format():
    key = paramiko.ECDSAKey.generate()
    fp = T.fingerprint(key)
    assert fp.startswith("SHA256:") and not fp.endswith("=") and len(fp) == 7 + 43


def test_known_hosts_append_and_lookup(tmp_path):
    path = tmp_path / "ssh" / "known_hosts"
    path.parent.mkdir()
    path.write_text("# keep this comment\n")
    key = paramiko.ECDSAKey.generate()
    T.append_known_host(path, "[10.250.0.11]:2222", key)
    assert path.read_text().startswith("# keep this comment\n")
    assert T.load_known_hosts(path).lookup("[10.250.0.11]:2222")[key.get_name()] == key


def test_retries_with_backoff_only_for_network_failures():
    sleeps, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise HostUnreachable("x: refused", node="x")
        return "ok"

    opts = SSHOptions(retries=2, backoff=0.5)
    assert ssh._with_retries(flaky, opts, sleeps.append) == "ok" and sleeps == [0.5, 1.0]

    def untrusted():
        calls.append(1)
        raise UnknownHostKey("nope", node="x", fingerprint="SHA256:x", key_type="ssh-ed25519")

    calls.clear()
    with pytest.raises(UnknownHostKey):
        ssh._with_retries(untrusted, opts, sleeps.append)
    assert len(calls) == 1


def test_connect_all_names_every_failed_node_and_closes_the_rest(monkeypatch):
    closed = []

    class Conn:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    def fake_connect(target, options):
        if target.name in ("b", "d"):
            raise HostUnreachable(f"{target.name} ({target.address}): connection refused", node=target.name)
        return Conn(target.name)

    monkeypatch.setattr(ssh, "connect", fake_connect)
    targets = [NodeSpec(n, f"10.250.0.{i}") for i, n in enumerate("abcd", 11)]
    with pytest.raises(NodesUnreachable) as err:
        T.connect_all(targets, SSHOptions())
    msg = err.value.render()
    assert "cannot connect to 2 of 4 node(s); nothing was changed on any node" in msg
    assert "b (10.250.0.12:22): connection refused" in msg and "d (10.250.0.14:22)" in msg
    assert sorted(closed) == ["a", "c"] and set(err.value.failures) == {"b", "d"}
    monkeypatch.setattr(ssh, "connect", lambda t, o: Conn(t.name))
    conns = T.connect_all(targets, SSHOptions(), max_parallel=2)
    assert list(conns) == ["a", "b", "c", "d"]


def test_unreachable_for_real_on_loopback():
    # Port 9 (discard) on loopback: nothing listens, so the connection is refused.
    opts = SSHOptions(retries=1, backoff=0.01, connect_timeout=2)
    with pytest.raises(NodesUnreachable) as err:
        T.connect_all([NodeSpec("ghost", "127.0.0.1", 9)], opts)
    assert "ghost (127.0.0.1:9): connection refused" in err.value.render()


def test_unreachable_for_real_on_loopback_says_how_to_check(tmp_path):
    opts = SSHOptions(retries=0, connect_timeout=2, env_name="dev", known_hosts=tmp_path / "kh")
    with pytest.raises(NodesUnreachable) as err:
        T.connect_all([NodeSpec("ghost", "127.0.0.1", 9, "deploy")], opts)
    failure = err.value.failures["ghost"]
    assert failure.fix == ("check host and port of node ghost in the dev environment file, and that sshd runs and "
                           "listens there: ssh -p 9 deploy@127.0.0.1")
    assert err.value.fix == failure.fix
    text = err.value.render()
    assert text.count("Fix: ") == 1 and text.endswith("ssh -p 9 deploy@127.0.0.1")


@pytest.mark.parametrize("raised, says, fix", [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused",
     "check host and port of node web-1 in the prod environment file, and that sshd runs and listens there: "
     "ssh -i /keys/id -p 2222 ops@web1.example"),
    (socket.timeout("timed out"), "timed out after 3s",
     "check host and port of node web-1 in the prod environment file, that the node is up and that no firewall "
     "drops SSH: ssh -i /keys/id -p 2222 ops@web1.example"),
    (socket.gaierror(-2, "Name or service not known"), "cannot resolve the host name",
     "check host of node web-1 in the prod environment file: web1.example does not resolve from here "
     "(getent hosts web1.example); or use the node's IP address"),
])
def test_each_unreachable_cause_has_its_fix(monkeypatch, tmp_path, raised, says, fix):
    def refuse(target, options, jump_client):
        raise raised

    monkeypatch.setattr(ssh, "_open_socket", refuse)
    target = NodeSpec("web-1", "web1.example", 2222, "ops", Path("/keys/id"))
    opts = SSHOptions(retries=0, connect_timeout=3, env_name="prod", known_hosts=tmp_path / "kh")
    with pytest.raises(NodesUnreachable) as err:
        T.connect_all([target], opts)
    failure = err.value.failures["web-1"]
    assert isinstance(failure, HostUnreachable) and says in failure.message
    assert failure.fix == fix and f"Fix: {fix}" in err.value.render()


def test_failed_authentication_names_the_identity_file(monkeypatch, tmp_path):
    monkeypatch.setattr(ssh, "_open_socket", lambda target, options, jump_client: None)

    def deny(self, *a, **kw):
        raise paramiko.AuthenticationException("Authentication failed.")

    monkeypatch.setattr(paramiko.SSHClient, "connect", deny)
    target = NodeSpec("web-1", "10.250.0.11", 22, "ops", Path("/keys/id"))
    with pytest.raises(NodesUnreachable) as err:
        T.connect_all([target], SSHOptions(retries=0, env_name="prod", known_hosts=tmp_path / "kh"))
    fix = err.value.failures["web-1"].fix
    assert "identity_file of node web-1 in the prod environment file" in fix
    assert "ssh -i /keys/id -p 22 ops@10.250.0.11" in fix and err.value.fix == fix


def test_several_causes_each_keep_their_fix(monkeypatch):
    def fake_connect(target, options):
        raise HostUnreachable(f"{target.name}: down", node=target.name, fix=f"look at {target.name}")

    monkeypatch.setattr(ssh, "connect", fake_connect)
    with pytest.raises(NodesUnreachable) as err:
        T.connect_all([NodeSpec("a", "10.250.0.11"), NodeSpec("b", "10.250.0.12")], SSHOptions())
    text = err.value.render()
    assert "  - a: down Fix: look at a" in text and "  - b: down Fix: look at b" in text
    assert err.value.fix == "look at a; look at b" and text.count("Fix:") == 2


def test_agent_error_renders_logs_and_fix():
    err = AgentError("dev-1", "apply", "exited", "service web replica 1 (container shop-web-1) exited with code 3",
                     {"container": "shop-web-1", "logs": ["a", "b"], "fix": "look at the app"})
    text = err.render()
    assert text.startswith("dev-1: service web replica 1")
    assert "Fix: look at the app" in text and "Last 2 log lines of shop-web-1:\n  | a\n  | b" in text
    assert err.to_json()["details"]["kind"] == "exited" and err.exit_code == 1


def test_parse_python_version():
    assert agent_session._parse_python_version("Python 3.11.2\n") == (3, 11, 2)
    assert agent_session._parse_python_version("sh: 1: python3: not found") is None


def test_agent_command_is_plain_argv():
    from orchestrator.io.agent_bundle import AgentBundle

    b = AgentBundle(Path("/c/orch-agent-0123456789abcdef.pyz"), "0123456789abcdef" + "0" * 48, 10, (3, 9))
    remote = T.bundle_path(b)
    assert remote == "/var/lib/orch-agent/bundles/orch-agent-0123456789abcdef.pyz"
    assert T.agent_command(remote) == ["python3", remote, "rpc", "--state-dir", "/var/lib/orch-agent"]


# --------------------------------------------------------------------------- reading the agent's lines


class _Channel:
    """What AgentSession reads from: the agent's output in packets of `packet` bytes."""

    def __init__(self, data: bytes, packet: int = 32768):
        import io

        self._data = io.BytesIO(data)
        self.packet = packet

    def recv(self, n):
        return self._data.read(min(n, self.packet))

    def makefile(self, mode):  # as paramiko's Channel.makefile
        return paramiko.ChannelFile(self, mode)

    def settimeout(self, timeout):
        pass

    def recv_stderr_ready(self):
        return False

    def exit_status_ready(self):
        return False


class _Conn:
    name = "n1"
    options = SSHOptions()


def _session(data: bytes, packet: int = 32768) -> T.AgentSession:
    return T.AgentSession(_Conn(), _Channel(data, packet), "/x.pyz", False)


def test_agent_lines_are_read_whole_across_packets():
    import json

    msgs = [{"id": 1, "event": {"type": "log", "line": "a" * 100_000}}, {"id": 1, "result": {"ok": True}}]
    s = _session(b"".join(json.dumps(m).encode() + b"\n" for m in msgs), packet=1000)
    assert [s._read(), s._read()] == msgs


def test_an_agent_line_longer_than_the_limit_is_refused():
    s = _session(b'{"id": 1, "result": {"x": "' + b"y" * 5000 + b'"}}\n')
    s.max_line = 4096
    with pytest.raises(T.AgentProtocolError) as err:
        s._read()
    assert "n1: the agent wrote a line longer than 4096 bytes" in err.value.render()


def test_a_long_agent_line_is_read_in_linear_time():
    import threading

    line = b'{"id": 1, "result": {"x": "' + b"y" * (64 * 1024 * 1024) + b'"}}\n'
    s = _session(line, packet=32768)  # an SSH channel's packets; paramiko's readline rescanned the line for each
    got = []
    t = threading.Thread(target=lambda: got.append(s._read()), daemon=True)
    t.start()
    t.join(120)  # a hang guard: linear takes well under a second
    assert not t.is_alive() and len(got[0]["result"]["x"]) == 64 * 1024 * 1024


@pytest.mark.parametrize("line", [b"[1]\n", b"[" * 100_000 + b"\n", b"nope\n"])
def test_an_agent_line_that_is_not_a_json_object_is_a_protocol_error(line):
    with pytest.raises(T.AgentProtocolError):
        _session(line)._read()

"""The transport against a real OpenSSH sshd on loopback (no Docker, no lab).

The sshd is started by this module on 127.0.0.1 with its own host key and an
authorised client key; it is skipped where sshd or ssh-keygen are missing.
"""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import build_bundle
from orchestrator.core.environments import NodeSpec
from orchestrator.io.transport import SSHOptions

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(SSHD) and shutil.which("ssh-keygen") and os.geteuid() == 0),
    reason="needs root, OpenSSH's sshd and ssh-keygen",
)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, root: Path, client_pub: Path):
        self.root = root
        self.port = _free_port()
        self.host_key = root / "host_ed25519"
        _keygen(self.host_key)
        shutil.copy(client_pub, root / "authorized_keys")
        self.config = root / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {root}/authorized_keys", f"PidFile {root}/sshd.pid",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "Subsystem sftp internal-sftp", "LogLevel ERROR",
            # The agent must not reach the host's Docker Engine from these tests.
            "SetEnv DOCKER_HOST=unix:///nonexistent/docker.sock",
        ]) + "\n")
        self.proc = None
        self.start()

    def start(self):
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120  # a wait for sshd to listen, not a speed check
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port} (it exited, or 120 s went by): "
                           + self.proc.stderr.read().decode())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(5)

    def rekey(self):
        """Same address, new host key: what a reinstalled (or impersonated) node looks like."""
        self.stop()
        self.host_key.unlink()
        Path(str(self.host_key) + ".pub").unlink()
        _keygen(self.host_key)
        self.start()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("sshd")
    client_key = root / "id_ed25519"
    _keygen(client_key)
    server = Sshd(root, Path(str(client_key) + ".pub"))
    yield server, client_key
    server.stop()


@pytest.fixture
def target(lab):
    server, key = lab
    return NodeSpec("local-1", "127.0.0.1", server.port, "root", key)


@pytest.fixture
def known_hosts(tmp_path, lab, target):
    path = tmp_path / "known_hosts"
    assert _trust(target, SSHOptions(known_hosts=path, allow_agent=False)) == "unknown"
    return path


def _trust(target, options):
    """What `orch nodes trust --yes` does (app/nodes.py): scan, then record an unknown key."""
    [(status, key)] = T.scan_host_keys([target], options)
    if status.status == "unknown":
        T.record_host_key(target, key, options)
    return status.status


def opts(path, **kw):
    kw.setdefault("allow_agent", False)
    kw.setdefault("retries", 0)
    kw.setdefault("connect_timeout", 5)
    kw.setdefault("env_name", "dev")
    return SSHOptions(known_hosts=path, **kw)


def test_unknown_host_key_is_refused_with_the_trust_command(tmp_path, target, lab):
    with pytest.raises(T.NodesUnreachable) as err:
        T.connect_all([target], opts(tmp_path / "known_hosts"))
    failure = err.value.failures["local-1"]
    assert isinstance(failure, T.UnknownHostKey)
    server_fp = subprocess.run(["ssh-keygen", "-lf", str(lab[0].host_key) + ".pub"], capture_output=True,
                               text=True).stdout.split()[1]
    assert failure.fingerprint == server_fp
    text = err.value.render()
    assert server_fp in text and "run: orch nodes trust --env dev" in text
    assert not (tmp_path / "known_hosts").exists()  # nothing was recorded


def test_trust_then_connect_run_and_upload(known_hosts, target, tmp_path):
    again = T.scan_host_keys([target], opts(known_hosts))
    assert [s.status for s, _ in again] == ["trusted"]
    assert len(known_hosts.read_text().splitlines()) == 1
    conns = T.connect_all([target], opts(known_hosts))
    conn = conns["local-1"]
    try:
        res = conn.run(["echo", "it's", "$HOME; rm -rf /"])
        assert res.ok and res.stdout == "it's $HOME; rm -rf /\n"  # argv quoted: no shell expansion
        assert conn.run(["sh", "-c", "exit 7"]).exit_code == 7
        with pytest.raises(T.RemoteCommandFailed):
            conn.run(["false"], check=True)
        src = tmp_path / "payload"
        src.write_bytes(b"x" * 100_000)
        remote = str(tmp_path / "remote" / "deep" / "payload")
        conn.upload(src, remote, 0o640)
        assert Path(remote).read_bytes() == src.read_bytes() and oct(Path(remote).stat().st_mode & 0o777) == "0o640"
        assert not [p for p in Path(remote).parent.iterdir() if ".tmp-" in p.name]
    finally:
        T.close_all(conns)


def test_accept_new_when_not_strict_but_never_a_changed_key(tmp_path, target, lab):
    path = tmp_path / "known_hosts"
    conn = T.connect(target, opts(path, strict_host_keys=False))
    conn.close()
    assert T.load_known_hosts(path).lookup(target.known_hosts_name) is not None
    lab[0].rekey()
    for strict in (True, False):
        with pytest.raises(T.HostKeyChanged) as err:
            T.connect(target, opts(path, strict_host_keys=strict))
        text = err.value.render()
        assert "HOST KEY HAS CHANGED" in text and err.value.expected in text and err.value.fingerprint in text
        assert f"ssh-keygen -R '{target.known_hosts_name}'" in text
    status, _ = T.scan_host_keys([target], opts(path))[0]
    assert status.status == "changed" and status.expected != status.fingerprint
    assert _trust(target, opts(path)) == "changed"
    assert len(path.read_text().splitlines()) == 1  # trust never replaces a key


def test_wrong_key_is_an_authentication_error(tmp_path, target):
    other = tmp_path / "other"
    _keygen(other)
    path = tmp_path / "kh"
    _trust(target, opts(path))
    bad = NodeSpec(target.name, target.host, target.port, "root", other)
    with pytest.raises(T.AuthenticationFailed) as err:
        T.connect(bad, opts(path))
    assert "authentication as root failed" in err.value.render()


def test_agent_is_uploaded_once_and_answers_hello(tmp_path, known_hosts, target):
    bundle = build_bundle(tmp_path / "cache")
    state = str(tmp_path / "agent-state")
    stale = Path(state) / "bundles"
    stale.mkdir(parents=True)
    for i in range(4):  # older bundles: the two newest are kept
        p = stale / f"orch-agent-{i:016x}.pyz"
        p.write_text("old")
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
    conn = T.connect(target, opts(known_hosts))
    try:
        first = T.AgentSession.open(conn, bundle, state_dir=state)
        try:
            assert first.uploaded and first.hello["bundle"] == bundle.name and first.pid
            with pytest.raises(T.AgentError) as err:
                first.call("nonsense")
            assert err.value.kind == "bad_request" and err.value.node == "local-1"
            # No Docker Engine behind this sshd: info says so instead of failing.
            info = first.call("info")
            assert info["engine"] is None and info["engine_error"]
        finally:
            first.close()
        os.utime(stale / bundle.name, (1_700_000_000, 1_700_000_000))
        second = T.AgentSession.open(conn, bundle, state_dir=state)
        second.close()
        assert not second.uploaded
        # the agent's start marked its bundle as used (prune_bundles keeps it)
        assert time.time() - (stale / bundle.name).stat().st_mtime < 600
        left = sorted(p.name for p in stale.iterdir())
        unpacked = bundle.name[:-len(".pyz")] + ".d"  # where the agent runs from, its bytecode cached
        assert left == sorted([bundle.name, unpacked, "orch-agent-0000000000000002.pyz",
                               "orch-agent-0000000000000003.pyz"])
        assert second.hello["bundle"] == bundle.name and (stale / unpacked / "agent" / "rpc.py").is_file()
        with pytest.raises(T.NodesUnreachable) as err:
            T.open_sessions({"local-1": conn}, bundle, state_dir=state)
        assert "Docker Engine is not usable" in err.value.render() and "apt-get install docker.io" in err.value.render()
    finally:
        conn.close()


def test_missing_python_is_a_node_requirement_error(tmp_path, known_hosts, target):
    bundle = build_bundle(tmp_path / "cache")
    conn = T.connect(target, opts(known_hosts))
    try:
        with pytest.raises(T.NodeRequirementError) as err:
            T.AgentSession.open(conn, bundle, state_dir=str(tmp_path / "s"), python="python3-nonexistent")
        text = err.value.render()
        assert "python3-nonexistent is not available" in text and "apt-get install python3" in text
        assert "`python:` of node local-1 in the environment file" in text
    finally:
        conn.close()


def test_killed_agent_is_reported(tmp_path, known_hosts, target):
    bundle = build_bundle(tmp_path / "cache")
    conn = T.connect(target, opts(known_hosts))
    try:
        session = T.AgentSession.open(conn, bundle, state_dir=str(tmp_path / "s"))
        conn.run(["kill", "-9", str(session.pid)], check=True)
        with pytest.raises(T.AgentProtocolError) as err:
            session.call("hello", {"protocol": 1})
        assert "the agent stopped" in err.value.render()
        session.close()
    finally:
        conn.close()


# --------------------------------------------------------------------------- the CLI


def _env_dir(tmp_path, target, known_hosts):
    d = tmp_path / "environments"
    d.mkdir()
    (d / "loc.yaml").write_text(
        "name: loc\n"
        "nodes:\n"
        f"  - {{name: local-1, host: 127.0.0.1, port: {target.port}, identity_file: {target.identity_file}}}\n"
        f"  - {{name: closed-1, host: 127.0.0.1, port: 9, identity_file: {target.identity_file}}}\n"
        f"ssh: {{known_hosts: {known_hosts}, connect_timeout: 3}}\n"
    )
    return d


def _cli(args):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    return CliRunner().invoke(app, args)


def test_cli_trust_then_check(tmp_path, target, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kh = tmp_path / "kh"
    envs = _env_dir(tmp_path, target, kh)
    res = _cli(["nodes", "check", "--env", "loc", "--environments", str(envs), "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    local = {n["node"]: n for n in out["nodes"]}
    assert local["local-1"]["host_key"] == "unknown" and "orch nodes trust --env loc" in local["local-1"]["problems"][0]["fix"]
    assert local["closed-1"]["reachable"] is False and "connection refused" in local["closed-1"]["problems"][0]["message"]

    res = _cli(["nodes", "trust", "--env", "loc", "--environments", str(envs), "--yes"])
    assert res.exit_code == 1  # closed-1 cannot be reached
    assert "local-1" in res.stdout and "added" in res.stdout and "SHA256:" in res.stdout
    assert len(kh.read_text().splitlines()) == 1

    res = _cli(["nodes", "check", "--env", "loc", "--environments", str(envs), "--json"])
    local = {n["node"]: n for n in json.loads(res.stdout)["nodes"]}["local-1"]
    assert (local["reachable"], local["auth"], local["host_key"]) == (True, True, "trusted")
    assert local["python"] and local["agent"] and local["docker"] is None
    assert "Docker Engine is not usable" in local["problems"][0]["message"]


# --------------------------------------------------------------------------- trust with a pinned fingerprint


def _orch(*args, env=None):
    orch = str(Path(os.sys.executable).parent / "orch")
    return subprocess.run([orch, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def _keygen_fingerprint(pub: Path) -> str:
    """The fingerprint as OpenSSH's own tool prints it: '256 SHA256:... comment (ED25519)'."""
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def _one_node_env(tmp_path, target, known_hosts):
    d = tmp_path / "environments"
    d.mkdir()
    (d / "one.yaml").write_text(
        "name: one\nnodes:\n"
        f"  - {{name: local-1, host: 127.0.0.1, port: {target.port}, identity_file: {target.identity_file}}}\n"
        f"ssh: {{known_hosts: {known_hosts}, connect_timeout: 3}}\n")
    return d


def test_trust_with_the_right_fingerprint_records_it(tmp_path, lab, target):
    server, _ = lab
    fp = _keygen_fingerprint(Path(str(server.host_key) + ".pub"))
    kh = tmp_path / "kh"
    envs = _one_node_env(tmp_path, target, kh)
    res = _orch("nodes", "trust", "--env", "one", "--environments", str(envs), "--fingerprint", f"local-1={fp}",
                "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    node = json.loads(res.stdout.splitlines()[-1])["nodes"][0]
    assert node["status"] == "added" and node["fingerprint"] == fp
    assert len(kh.read_text().splitlines()) == 1
    # the bare form, for an environment of one node; already trusted: still checked
    res = _orch("nodes", "trust", "--env", "one", "--environments", str(envs), "--fingerprint", fp, "--text")
    assert res.returncode == 0 and "trusted" in res.stdout, res.stdout + res.stderr


def test_trust_refuses_a_wrong_fingerprint_and_records_nothing(tmp_path, lab, target):
    server, _ = lab
    seen = _keygen_fingerprint(Path(str(server.host_key) + ".pub"))
    wrong = "SHA256:" + "A" * 43
    kh = tmp_path / "kh"
    envs = _one_node_env(tmp_path, target, kh)
    res = _orch("nodes", "trust", "--env", "one", "--environments", str(envs), "--fingerprint", f"local-1={wrong}",
                "--yes", "--text")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"local-1 (127.0.0.1:{target.port}) presents ssh-ed25519 {seen}, not the expected {wrong}" in res.stderr
    assert "Fix:" in res.stderr and "Traceback" not in res.stderr
    assert not kh.exists() or kh.read_text() == ""


def test_trust_without_a_terminal_needs_a_fingerprint_or_yes(tmp_path, lab, target):
    kh = tmp_path / "kh"
    envs = _one_node_env(tmp_path, target, kh)
    res = _orch("nodes", "trust", "--env", "one", "--environments", str(envs), "--text")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no terminal to confirm" in res.stderr and "--fingerprint NODE=SHA256:" in res.stderr
    assert "SHA256:" in res.stderr.split("Fix:")[0]  # the key it saw is shown, for checking
    assert not kh.exists() or kh.read_text() == ""
    res = _orch("nodes", "trust", "--env", "one", "--environments", str(envs), "--yes", "--text")
    assert res.returncode == 0 and len(kh.read_text().splitlines()) == 1, res.stdout + res.stderr


@pytest.mark.parametrize("value, says", [
    ("local-1=SHA256:short", "is not a SHA256 host key fingerprint"),
    ("local-1=MD5:aa:bb", "is not a SHA256 host key fingerprint"),
    ("nope=SHA256:" + "A" * 43, "no node or jump host is called 'nope'"),
])
def test_trust_bad_fingerprint_options_touch_no_node(tmp_path, value, says):
    envs = _one_node_env(tmp_path, NodeSpec("local-1", "127.0.0.1", 9), tmp_path / "kh")
    res = _orch("nodes", "trust", "--env", "one", "--environments", str(envs), "--fingerprint", value, "--text")
    assert res.returncode == 2 and says in res.stderr and "--fingerprint" in res.stderr, res.stderr
    assert "connection refused" not in res.stderr  # refused before contacting the (closed) port


@pytest.mark.parametrize("answer", ["n", "y"])
def test_trust_on_a_terminal_shows_the_key_then_asks(tmp_path, lab, target, answer):
    import pty

    server, _ = lab
    fp = _keygen_fingerprint(Path(str(server.host_key) + ".pub"))
    kh = tmp_path / "kh"
    envs = _one_node_env(tmp_path, target, kh)
    master, slave = pty.openpty()
    orch = str(Path(os.sys.executable).parent / "orch")
    proc = subprocess.Popen([orch, "nodes", "trust", "--env", "one", "--environments", str(envs), "--text"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    try:
        os.write(master, f"{answer}\n".encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
    prompt = err.index("Record the unpinned key(s) above (local-1)")
    assert fp in err[:prompt]  # shown before it asks
    if answer == "n":
        assert proc.returncode == 2 and "nothing was recorded" in err
        assert not kh.exists() or kh.read_text() == ""
    else:
        assert proc.returncode == 0 and "added" in out and len(kh.read_text().splitlines()) == 1, out + err


@pytest.fixture(scope="module")
def strict_sshd(tmp_path_factory):
    """An sshd that drops every unauthenticated connection beyond 2 (MaxStartups 4:100:4)."""
    root = tmp_path_factory.mktemp("sshd-maxstartups")
    client_key = root / "id_ed25519"
    _keygen(client_key)
    server = Sshd(root, Path(str(client_key) + ".pub"))
    server.stop()
    server.config.write_text(server.config.read_text() + "MaxStartups 4:100:4\n")
    server.start()
    yield server, client_key
    server.stop()


def test_many_connections_to_one_sshd_stay_under_its_max_startups(tmp_path, strict_sshd):
    server, key = strict_sshd
    target = NodeSpec("local-1", "127.0.0.1", server.port, "root", key)
    known = tmp_path / "known_hosts"
    _trust(target, SSHOptions(known_hosts=known, allow_agent=False))
    many = [NodeSpec(f"n{i}", "127.0.0.1", server.port, "root", key) for i in range(16)]

    # Unbounded, sshd drops the handshakes beyond its 4 (paramiko: "Error reading SSH protocol banner").
    with pytest.raises(T.NodesUnreachable):
        T.close_all(T.connect_all(many, opts(known, handshakes_per_server=16)))
    # Bounded to 2 per server: every one gets through, without a retry. (Bounded to 4 some
    # would not: sshd notices an authentication a moment after the client, so the bound
    # keeps a margin under MaxStartups, as the default 8 does under sshd's 10.)
    options = opts(known, handshakes_per_server=2)
    conns = T.connect_all(many, options)
    try:
        assert len(conns) == 16 and all(c.run(["true"]).ok for c in conns.values())
    finally:
        T.close_all(conns)
    assert T.handshake_gate(options).peak_per_server == 2


def test_reader_threads_poll_seldom(known_hosts, target):
    from orchestrator.io.transport.ssh import TRANSPORT_POLL

    conns = T.connect_all([target], opts(known_hosts))
    conn = conns["local-1"]
    try:
        # paramiko's default (0.1 s) woke the controller ten times a second per node.
        assert conn.transport.sock.gettimeout() == TRANSPORT_POLL >= 1.0
        assert conn.run(["echo", "hi"]).stdout == "hi\n" and conn.is_active()
    finally:
        T.close_all(conns)
    assert not conn.is_active()

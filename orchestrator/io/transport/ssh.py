"""SSH connections to the nodes (paramiko): reach a node (directly or through a jump host),
check its host key, run a fixed command, copy a file. It knows nothing about what to deploy.

- One `Connection` per node for a whole command; everything (commands, SFTP, agent
  sessions, the deploy lock) runs on channels of that one connection.
- `connect_all` opens them in parallel and fails naming every unreachable node
  before anything is touched on any node.
- Host keys are checked strictly against a known_hosts file (known_hosts.py).
- Handshakes are bounded (`HandshakeGate`): at most `ssh.handshakes` in flight, and
  `ssh.handshakes_per_server` to one sshd, under its MaxStartups.
"""

from __future__ import annotations

import posixpath
import shlex
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchError
from orchestrator.io.transport.errors import (
    AuthenticationFailed, HostUnreachable, NodesUnreachable, RemoteCommandFailed, TransportError)
from orchestrator.io.transport.known_hosts import HostKeyPolicy, changed_key_error, known_hosts
from orchestrator.core.environments import NodeSpec
from orchestrator.io.transport.options import SSHOptions


@dataclass(frozen=True)
class RunResult:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _explain_socket_error(err: BaseException, timeout: float) -> str:
    import paramiko

    if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
        errnos = {e.errno for e in err.errors.values()}
        if 111 in errnos:
            return "connection refused (is sshd running and listening on that port?)"
        return "no route to host"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:g}s (host down, or a firewall drops SSH)"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is sshd running and listening on that port?)"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host name ({err.strerror})"
    if isinstance(err, OSError) and err.errno in (101, 113):
        return "no route to host"
    if isinstance(err, EOFError):
        return "the server closed the connection during set-up"
    return str(err) or type(err).__name__


def _ssh_command(target: NodeSpec) -> str:
    """The OpenSSH command that reaches the node the way orch does (to try by hand)."""
    argv = ["ssh"]
    if target.jump:
        argv += ["-J", target.jump]
    if target.identity_file:
        argv += ["-i", str(target.identity_file)]
    argv += ["-p", str(target.port), f"{target.user}@{target.host}"]
    return shlex.join(argv)


def _where(target: NodeSpec, options: SSHOptions, what: str) -> str:
    """`what` of node N in the ENV environment file (or of its jump host)."""
    file = f"the {options.env_name} environment file" if options.env_name else "the environment file"
    suffix = " (jump host)"
    if target.name.endswith(suffix):
        return f"{what} in `jump:` of node {target.name[:-len(suffix)]} in {file}"
    return f"{what} of node {target.name} in {file}"


def _unreachable_fix(err: BaseException, target: NodeSpec, options: SSHOptions) -> str:
    """How to fix a failed connection set-up, by cause (as _explain_socket_error tells them)."""
    import paramiko

    ssh = _ssh_command(target)
    if isinstance(err, socket.gaierror):
        return (f"check {_where(target, options, 'host')}: {target.host} does not resolve from here "
                f"(getent hosts {target.host}); or use the node's IP address")
    refused = isinstance(err, ConnectionRefusedError) or (
        isinstance(err, paramiko.ssh_exception.NoValidConnectionsError)
        and 111 in {e.errno for e in err.errors.values()})
    if refused:
        return f"check {_where(target, options, 'host and port')}, and that sshd runs and listens there: {ssh}"
    if isinstance(err, (socket.timeout, TimeoutError, paramiko.ssh_exception.NoValidConnectionsError)) or (
            isinstance(err, OSError) and err.errno in (101, 113)):
        return (f"check {_where(target, options, 'host and port')}, that the node is up and that no firewall "
                f"drops SSH: {ssh}")
    return f"check {_where(target, options, 'host and port')}, and that it is sshd that listens there: {ssh}"


class Connection:
    """One SSH connection to one node; commands, SFTP and agent sessions are channels on it."""

    def __init__(self, target: NodeSpec, options: SSHOptions, client: Any, jump_client: Any = None):
        self.target = target
        self.options = options
        self.client = client
        self._jump = jump_client
        self._sftp: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def transport(self) -> Any:
        return self.client.get_transport()

    def is_active(self) -> bool:
        t = self.transport
        return t is not None and t.is_active()

    def open_exec(self, argv: list[str], timeout: float | None = None) -> Any:
        """A channel running argv (quoted; never a shell string from the caller)."""
        try:
            chan = self.transport.open_session(timeout=self.options.connect_timeout)
            chan.settimeout(timeout if timeout is not None else self.options.command_timeout)
            chan.exec_command(shlex.join(argv))
        except Exception as err:
            raise HostUnreachable(
                f"{self.name}: cannot open a channel: {_explain_socket_error(err, self.options.connect_timeout)}",
                node=self.name,
            ) from None
        return chan

    def open_agent_exec(self, argv: list[str], timeout: float | None = None) -> Any:
        """A channel running the agent (kept.KeptConnection takes it from the keeper)."""
        return self.open_exec(argv, timeout)

    def run(self, argv: list[str], *, timeout: float | None = None, check: bool = False,
            stdin: bytes | None = None) -> RunResult:
        """Run a fixed command (e.g. ["python3", "--version"]) and collect its output."""
        timeout = self.options.command_timeout if timeout is None else timeout
        chan = self.open_exec(argv, timeout)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                elif time.monotonic() > deadline:
                    raise RemoteCommandFailed(
                        f"{self.name}: `{shlex.join(argv)}` did not finish within {timeout:g}s.", node=self.name
                    )
                else:
                    time.sleep(0.005)
            code = chan.recv_exit_status()
        finally:
            chan.close()
        result = RunResult(list(argv), code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        if check and not result.ok:
            raise RemoteCommandFailed(
                f"{self.name}: `{shlex.join(argv)}` failed with exit code {code}: {result.stderr.strip()[-500:]}",
                node=self.name,
            )
        return result

    def sftp(self) -> Any:
        with self._lock:
            if self._sftp is None:
                self._sftp = self.client.open_sftp()
                self._sftp.get_channel().settimeout(self.options.command_timeout)
            return self._sftp

    def exists(self, remote: str) -> bool:
        try:
            self.sftp().stat(remote)
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            if getattr(err, "errno", None) == 2:
                return False
            raise

    def makedirs(self, remote: str, mode: int = 0o755) -> None:
        sftp = self.sftp()
        path = "/"
        for part in remote.strip("/").split("/"):
            path = posixpath.join(path, part)
            try:
                if not stat.S_ISDIR(sftp.stat(path).st_mode):
                    raise TransportError(f"{self.name}: {path} exists and is not a directory.", node=self.name)
            except FileNotFoundError:
                try:
                    sftp.mkdir(path, mode)
                except OSError:
                    if not self.exists(path):  # lost a race with another controller: fine
                        raise

    def upload(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy a file to the node atomically: to a temporary name, then rename."""
        sftp = self.sftp()
        self.makedirs(posixpath.dirname(remote))
        tmp = f"{remote}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            sftp.put(str(local), tmp)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, remote)
        except BaseException:
            try:
                sftp.remove(tmp)
            except Exception:
                pass
            raise

    def close(self) -> None:
        with self._lock:
            if self._sftp is not None:
                try:
                    self._sftp.close()
                except Exception:
                    pass
                self._sftp = None
        self.client.close()
        if self._jump is not None:
            self._jump.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class HandshakeGate:
    """Bounds the SSH handshakes (TCP connect, key exchange, authentication) in flight:
    `total` at once, and `per_server` to one sshd address (host:port). sshd drops new
    unauthenticated connections beyond its MaxStartups (default 10:30:100: from 10 on, 30 %
    of them, rising), so a hundred nodes, or many behind one bastion (each node's jump
    connection is a handshake with the bastion), never trip it. Sessions are not bounded:
    once authenticated a connection no longer counts against MaxStartups."""

    def __init__(self, total: int, per_server: int):
        self.total, self.per_server = total, per_server
        self._all = threading.BoundedSemaphore(total)
        self._servers: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self.in_flight: dict[str, int] = {}  # server -> handshakes now
        self.peak = 0  # most handshakes in flight at once, over all servers
        self.peak_per_server = 0

    @contextmanager
    def slot(self, server: str) -> Iterator[None]:
        with self._lock:
            sem = self._servers.setdefault(server, threading.BoundedSemaphore(self.per_server))
        # The server's slot first: a handshake waiting for a busy server holds no overall slot.
        with sem, self._all:
            with self._lock:
                self.in_flight[server] = self.in_flight.get(server, 0) + 1
                self.peak = max(self.peak, sum(self.in_flight.values()))
                self.peak_per_server = max(self.peak_per_server, self.in_flight[server])
            try:
                yield
            finally:
                with self._lock:
                    self.in_flight[server] -= 1


_GATES: dict[tuple[int, int], HandshakeGate] = {}
_GATES_LOCK = threading.Lock()


def handshake_gate(options: SSHOptions) -> HandshakeGate:
    """The process's gate for these limits: every connection of a command shares it."""
    key = (options.handshakes, options.handshakes_per_server)
    with _GATES_LOCK:
        if key not in _GATES:
            _GATES[key] = HandshakeGate(*key)
        return _GATES[key]


TRANSPORT_POLL = 1.0  # seconds; a closed connection's reader thread ends within this

def _server(target: NodeSpec) -> str:
    return f"{target.host}:{target.port}"


def _open_socket(target: NodeSpec, options: SSHOptions, jump_client: Any) -> Any:
    if jump_client is not None:
        # ProxyJump: a direct-tcpip channel through the jump host carries the session.
        return jump_client.get_transport().open_channel(
            "direct-tcpip", (target.host, target.port), ("127.0.0.1", 0), timeout=options.connect_timeout
        )
    return socket.create_connection((target.host, target.port), timeout=options.connect_timeout)


def _connect_once(target: NodeSpec, options: SSHOptions, jump_client: Any = None) -> Any:
    import paramiko

    client = paramiko.SSHClient()
    # Only this host's entries, from a parse shared by every connection of the command.
    # paramiko never writes them (no file name given); additions go through append_known_host.
    name = target.known_hosts_name
    for key_type, key in (known_hosts(options.known_hosts_path).lookup(name) or {}).items():
        client.get_host_keys().add(name, key_type, key)
    client.set_missing_host_key_policy(HostKeyPolicy(target, options))
    sock = None
    try:
        with handshake_gate(options).slot(_server(target)):
            sock = _open_socket(target, options, jump_client)
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                key_filename=str(target.identity_file) if target.identity_file else None,
                allow_agent=options.allow_agent,
                look_for_keys=target.identity_file is None,
                timeout=options.connect_timeout,
                banner_timeout=options.connect_timeout,
                auth_timeout=options.connect_timeout,
                channel_timeout=options.connect_timeout,
                sock=sock,
            )
    except TransportError:
        client.close()
        raise
    except paramiko.BadHostKeyException as err:
        client.close()
        raise changed_key_error(target, err.key, err.expected_key, options) from None
    except paramiko.AuthenticationException as err:
        client.close()
        how = f"key {target.identity_file}" if target.identity_file else "the SSH agent or ~/.ssh keys"
        raise AuthenticationFailed(
            f"{target.name} ({target.address}): authentication as {target.user} failed with {how}: {err}.",
            node=target.name,
            fix=f"authorise the public key for {target.user} on the node (ssh-copy-id), or set "
            f"{_where(target, options, 'identity_file')} to a key the node accepts; try: {_ssh_command(target)}",
        ) from None
    except FileNotFoundError as err:
        client.close()
        raise AuthenticationFailed(
            f"{target.name}: identity file {err.filename} does not exist.",
            node=target.name,
            fix=f"fix {_where(target, options, 'identity_file')} (for the lab: run `orch lab up`).",
        ) from None
    except (OSError, EOFError, paramiko.SSHException) as err:
        client.close()
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass
        raise HostUnreachable(
            f"{target.name} ({target.address}): {_explain_socket_error(err, options.connect_timeout)}",
            node=target.name,
            fix=_unreachable_fix(err, target, options),
        ) from None
    transport = client.get_transport()
    if options.keepalive:
        transport.set_keepalive(options.keepalive)
    # paramiko's reader thread polls its socket every 0.1 s (to notice a close, send
    # keepalives): a hundred connections woke the controller 1,000 times a second, each
    # wake-up taking the GIL from the thread doing the work. Data still wakes it at once.
    transport.sock.settimeout(TRANSPORT_POLL)
    return client


def _with_retries(fn: Callable[[], Any], options: SSHOptions, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Retry connection set-up only, and only for network-level failures."""
    delay = options.backoff
    for attempt in range(options.retries + 1):
        try:
            return fn()
        except HostUnreachable:
            if attempt == options.retries:
                raise
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def connect(target: NodeSpec, options: SSHOptions) -> Connection:
    jump_client = None
    jump = target.jump_target()
    if jump is not None:
        jump_client = _with_retries(lambda: _connect_once(jump, options), options)
    try:
        client = _with_retries(lambda: _connect_once(target, options, jump_client), options)
    except BaseException:
        if jump_client is not None:
            jump_client.close()
        raise
    return Connection(target, options, client, jump_client)


def parallel(items: Iterable[Any], fn: Callable[[Any], Any], max_parallel: int = 128,
             key: Callable[[Any], str] = lambda item: item.name) -> tuple[dict[str, Any], dict[str, BaseException]]:
    """Run fn over items in threads; (results, errors) keyed by key(item)."""
    items = list(items)
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    if not items:
        return results, errors
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(items))), thread_name_prefix="orch-ssh") as pool:
        futures = {key(item): pool.submit(fn, item) for item in items}
        for name, fut in futures.items():
            try:
                results[name] = fut.result()
            except BaseException as err:  # noqa: BLE001 - collected and reported per node
                errors[name] = err
    return results, errors


def as_transport_error(name: str, err: BaseException) -> TransportError:
    if isinstance(err, TransportError):
        return err
    if isinstance(err, OrchError):
        return TransportError(err.render(), node=name)
    return TransportError(f"{name}: {type(err).__name__}: {err}", node=name)


def connect_all(targets: Iterable[NodeSpec], options: SSHOptions, max_parallel: int = 32) -> dict[str, Connection]:
    """Connect to every node in parallel; all or nothing.

    If any node fails, the connections that did open are closed and NodesUnreachable
    names every failed node with its cause; no node has been touched.
    """
    targets = list(targets)
    conns, errors = parallel(targets, lambda t: connect(t, options), max_parallel)
    if errors:
        for conn in conns.values():
            conn.close()
        failures = {name: as_transport_error(name, err) for name, err in errors.items()}
        raise NodesUnreachable(failures, len(targets))
    return {t.name: conns[t.name] for t in targets}


def close_all(conns: dict[str, Connection] | Iterable[Connection]) -> None:
    for conn in (conns.values() if isinstance(conns, dict) else conns):
        conn.close()


def fetch_host_key(target: NodeSpec, options: SSHOptions) -> Any:
    """The key the node presents (no authentication). A jump host must itself be trusted."""
    import paramiko

    jump_client = None
    jump = target.jump_target()
    if jump is not None:
        jump_client = _with_retries(lambda: _connect_once(jump, options), options)

    def once() -> Any:
        sock = None
        try:
            with handshake_gate(options).slot(_server(target)):  # sshd counts it from the accept
                sock = _open_socket(target, options, jump_client)
                t = paramiko.Transport(sock)
                try:
                    known = known_hosts(options.known_hosts_path).lookup(target.known_hosts_name)
                    if known:  # ask for the type we know, so a changed key is seen as changed
                        wanted = known.keys()[0]
                        opts = t.get_security_options()
                        opts.key_types = [wanted] + [k for k in opts.key_types if k != wanted]
                    t.start_client(timeout=options.connect_timeout)
                    return t.get_remote_server_key()
                finally:
                    t.close()
        except (OSError, EOFError, paramiko.SSHException) as err:
            if sock is not None:
                sock.close()
            raise HostUnreachable(
                f"{target.name} ({target.address}): {_explain_socket_error(err, options.connect_timeout)}",
                node=target.name,
                fix=_unreachable_fix(err, target, options),
            ) from None

    try:
        return _with_retries(once, options)
    finally:
        if jump_client is not None:
            jump_client.close()

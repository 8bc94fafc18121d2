"""SSH transport to the nodes (paramiko), and the agent session over it.

Connection code only: it knows how to reach a node, check its host key, run a fixed
command, copy a file and talk to the agent. It knows nothing about what to deploy.

- One `Connection` per node for a whole command; everything (commands, SFTP, agent
  sessions, later the deploy lock) runs on channels of that one connection.
- `connect_all` opens them in parallel and fails naming every unreachable node
  before anything is touched on any node.
- Host keys are checked strictly against a known_hosts file: an unknown key is
  refused with its fingerprint and the trust command; a changed key is refused loudly
  and never accepted, whatever the options say.
- `AgentSession` makes sure the node has this controller's agent bundle (uploaded
  over SFTP only when missing), runs `python3 <bundle> rpc` on one exec channel and
  speaks the JSON-lines protocol of agent.wire.protocol over it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shlex
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.wire.protocol import DEFAULT_STATE_DIR, MAX_MESSAGE_BYTES, PING, PING_SECONDS, PROTOCOL_VERSION
from agent.wire.protocol import request as agent_request
from orchestrator.errors import OrchError
from orchestrator.core.environments import DEFAULT_PYTHON

KEEP_OLD_BUNDLES = 2  # besides the current one, for a controller still on an older orch
TAIL_LOG_LINES = 20

# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class NodeTarget:
    name: str
    host: str
    port: int = 22
    user: str = "root"
    identity_file: Path | None = None
    jump: str | None = None  # "user@host:port" (ProxyJump-style; user and port optional)
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    python: str = DEFAULT_PYTHON  # the node's interpreter for the agent (environment file: nodes[].python)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH and paramiko name this host in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def jump_target(self) -> NodeTarget | None:
        if not self.jump:
            return None
        m = re.fullmatch(r"(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:]+)(?::(?P<port>\d+))?", self.jump)
        if m is None:
            raise TransportError(
                f"node {self.name}: jump host '{self.jump}' is not of the form user@host:port.",
                node=self.name,
                fix="write e.g. `jump: admin@bastion.example.com:22`.",
            )
        return NodeTarget(
            name=f"{self.name} (jump host)",
            host=m.group("host").strip("[]"),
            port=int(m.group("port") or 22),
            user=m.group("user") or self.user,
            identity_file=self.identity_file,
        )


@dataclass(frozen=True)
class SSHOptions:
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts
    strict: bool = True  # False: accept *unknown* keys and record them (never changed ones)
    connect_timeout: float = 10.0
    command_timeout: float = 600.0  # longest silence tolerated from a command or the agent
    retries: int = 2  # extra attempts at connection set-up (not at commands)
    backoff: float = 0.5  # seconds, doubled after each failed attempt
    allow_agent: bool = True  # keys from the SSH agent ($SSH_AUTH_SOCK)
    env_name: str | None = None  # only for messages: `orch nodes trust --env ENV`
    keepalive: int = 15

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts) if self.known_hosts else Path.home() / ".ssh" / "known_hosts"

    def trust_command(self) -> str:
        return f"orch nodes trust --env {self.env_name}" if self.env_name else "orch nodes trust --env ENV"


def target_from_node(node: Any) -> NodeTarget:
    """Adapter from orchestrator.core.environments.NodeSpec (duck-typed: no import cycle)."""
    identity = getattr(node, "identity_file", None)
    return NodeTarget(
        name=node.name,
        host=node.host,
        port=int(getattr(node, "port", 22) or 22),
        user=getattr(node, "user", None) or "root",
        identity_file=Path(identity) if identity else None,
        jump=getattr(node, "jump", None),
        labels=dict(getattr(node, "labels", None) or {}),
        python=getattr(node, "python", None) or DEFAULT_PYTHON,
    )


def options_from_env(env: Any, **overrides: Any) -> SSHOptions:
    """Adapter from orchestrator.core.environments.Environment (its .ssh settings and name)."""
    ssh = env.ssh
    kw: dict[str, Any] = dict(
        known_hosts=ssh.known_hosts,
        strict=ssh.strict_host_keys,
        connect_timeout=ssh.connect_timeout,
        command_timeout=ssh.command_timeout,
        env_name=env.name,
    )
    kw.update(overrides)
    return SSHOptions(**kw)


# --------------------------------------------------------------------------- errors


class TransportError(OrchError):
    """Something between the controller and a node went wrong."""

    def __init__(self, message: str, *, node: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.node = node
        if node:
            self.details.setdefault("node", node)


class HostUnreachable(TransportError):
    """No SSH session could be set up (network, sshd); retried with backoff."""


class AuthenticationFailed(TransportError):
    pass


class UnknownHostKey(TransportError):
    def __init__(self, message: str, *, fingerprint: str, key_type: str, **kw: Any):
        super().__init__(message, **kw)
        self.fingerprint = fingerprint
        self.key_type = key_type
        self.details.update({"fingerprint": fingerprint, "key_type": key_type})


class HostKeyChanged(TransportError):
    def __init__(self, message: str, *, fingerprint: str, expected: str, **kw: Any):
        super().__init__(message, **kw)
        self.fingerprint = fingerprint
        self.expected = expected
        self.details.update({"fingerprint": fingerprint, "expected": expected})


class NodesUnreachable(TransportError):
    """Several nodes failed at once: one message names every one of them."""

    def __init__(self, failures: dict[str, TransportError], total: int, *, action: str = "connect to"):
        self.failures = failures
        names = sorted(failures)
        lines = [f"cannot {action} {len(names)} of {total} node(s); nothing was changed on any node:"]
        lines += [f"  - {failures[n].render()}" for n in names]  # each with its own fix
        fixes = list(dict.fromkeys(failures[n].fix for n in names if failures[n].fix))
        super().__init__("\n".join(lines), fix="; ".join(fixes) or None,
                         details={"nodes": {n: failures[n].to_json() for n in names}})

    def render(self) -> str:
        return self.message  # every node's line carries its own fix already


class RemoteCommandFailed(TransportError):
    pass


class NodeRequirementError(TransportError):
    """The node lacks something orch needs (python3 >= 3.9, Docker Engine)."""


class AgentProtocolError(TransportError):
    """The agent died, or said something that is not the protocol."""


class AgentError(OrchError):
    """An operation the agent refused or that failed on the node ({"error": {...}})."""

    def __init__(self, node: str, op: str, kind: str, message: str, details: dict | None = None):
        details = dict(details or {})
        super().__init__(f"{node}: {message}", fix=details.get("fix"), details=details)
        self.node = node
        self.op = op
        self.kind = kind
        self.details.setdefault("node", node)
        self.details["kind"] = kind

    def render(self) -> str:
        text = super().render()
        logs = self.details.get("logs")
        if logs:
            who = self.details.get("container", "the container")
            text += f"\nLast {len(logs)} log lines of {who}:\n" + "\n".join(f"  | {ln}" for ln in logs)
        return text


# --------------------------------------------------------------------------- host keys


def fingerprint(key: Any) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key: 'SHA256:base64-without-padding'."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def load_known_hosts(path: Path) -> Any:
    import paramiko

    keys = paramiko.HostKeys()
    if path.is_file():
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException) as err:
            raise TransportError(
                f"cannot read known_hosts file {path}: {err}",
                fix="fix or remove the malformed line, or point ssh.known_hosts at another file.",
            ) from None
    return keys


def append_known_host(path: Path, name: str, key: Any) -> None:
    """Append one line; never rewrites the file (keeps comments and hashed entries)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # parallel trusts append whole lines
        os.write(fd, line.encode("ascii"))
    finally:
        os.close(fd)


def _unknown_key_error(target: NodeTarget, key: Any, options: SSHOptions) -> UnknownHostKey:
    fp = fingerprint(key)
    return UnknownHostKey(
        f"{target.name} ({target.address}): unknown host key {key.get_name()} {fp}; "
        f"refusing to connect (strict host key checking, {options.known_hosts_path}).",
        node=target.name,
        fingerprint=fp,
        key_type=key.get_name(),
        fix=f"check the fingerprint out of band, then run: {options.trust_command()}",
    )


def _changed_key_error(target: NodeTarget, got: Any, expected: Any, options: SSHOptions) -> HostKeyChanged:
    new, old = fingerprint(got), fingerprint(expected) if expected is not None else "?"
    return HostKeyChanged(
        f"{target.name} ({target.address}): WARNING: THE HOST KEY HAS CHANGED. The node now presents "
        f"{got.get_name()} {new}, but {options.known_hosts_path} records {old}. This is either a "
        "reinstalled node or someone intercepting the connection; orch refuses to connect.",
        node=target.name,
        fingerprint=new,
        expected=old,
        fix=f"verify the new fingerprint out of band; if the node was really reinstalled, remove the old "
        f"entry with `ssh-keygen -R '{target.known_hosts_name}' -f {options.known_hosts_path}` and run "
        f"{options.trust_command()}.",
    )


class _HostKeyPolicy:
    """paramiko policy for keys missing from known_hosts: refuse (strict) or accept-new."""

    def __init__(self, target: NodeTarget, options: SSHOptions):
        self.target = target
        self.options = options

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        if self.options.strict:
            raise _unknown_key_error(self.target, key, self.options)
        append_known_host(self.options.known_hosts_path, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


# --------------------------------------------------------------------------- connections


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


def _ssh_command(target: NodeTarget) -> str:
    """The OpenSSH command that reaches the node the way orch does (to try by hand)."""
    argv = ["ssh"]
    if target.jump:
        argv += ["-J", target.jump]
    if target.identity_file:
        argv += ["-i", str(target.identity_file)]
    argv += ["-p", str(target.port), f"{target.user}@{target.host}"]
    return shlex.join(argv)


def _where(target: NodeTarget, options: SSHOptions, what: str) -> str:
    """`what` of node N in the ENV environment file (or of its jump host)."""
    file = f"the {options.env_name} environment file" if options.env_name else "the environment file"
    suffix = " (jump host)"
    if target.name.endswith(suffix):
        return f"{what} in `jump:` of node {target.name[:-len(suffix)]} in {file}"
    return f"{what} of node {target.name} in {file}"


def _unreachable_fix(err: BaseException, target: NodeTarget, options: SSHOptions) -> str:
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

    def __init__(self, target: NodeTarget, options: SSHOptions, client: Any, jump_client: Any = None):
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


def _open_socket(target: NodeTarget, options: SSHOptions, jump_client: Any) -> Any:
    if jump_client is not None:
        # ProxyJump: a direct-tcpip channel through the jump host carries the session.
        return jump_client.get_transport().open_channel(
            "direct-tcpip", (target.host, target.port), ("127.0.0.1", 0), timeout=options.connect_timeout
        )
    return socket.create_connection((target.host, target.port), timeout=options.connect_timeout)


def _connect_once(target: NodeTarget, options: SSHOptions, jump_client: Any = None) -> Any:
    import paramiko

    client = paramiko.SSHClient()
    # As "system" host keys paramiko never writes them; additions go through append_known_host.
    path = options.known_hosts_path
    if path.is_file():
        load_known_hosts(path)  # a readable error for a malformed file
        client.load_system_host_keys(str(path))
    client.set_missing_host_key_policy(_HostKeyPolicy(target, options))
    sock = None
    try:
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
        raise _changed_key_error(target, err.key, err.expected_key, options) from None
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


def connect(target: NodeTarget, options: SSHOptions) -> Connection:
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


def parallel(items: Iterable[Any], fn: Callable[[Any], Any], max_parallel: int = 32,
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


def _as_transport_error(name: str, err: BaseException) -> TransportError:
    if isinstance(err, TransportError):
        return err
    if isinstance(err, OrchError):
        return TransportError(err.render(), node=name)
    return TransportError(f"{name}: {type(err).__name__}: {err}", node=name)


def connect_all(targets: Iterable[NodeTarget], options: SSHOptions, max_parallel: int = 32) -> dict[str, Connection]:
    """Connect to every node in parallel; all or nothing.

    If any node fails, the connections that did open are closed and NodesUnreachable
    names every failed node with its cause; no node has been touched.
    """
    targets = list(targets)
    conns, errors = parallel(targets, lambda t: connect(t, options), max_parallel)
    if errors:
        for conn in conns.values():
            conn.close()
        failures = {name: _as_transport_error(name, err) for name, err in errors.items()}
        raise NodesUnreachable(failures, len(targets))
    return {t.name: conns[t.name] for t in targets}


def close_all(conns: dict[str, Connection] | Iterable[Connection]) -> None:
    for conn in (conns.values() if isinstance(conns, dict) else conns):
        conn.close()


# --------------------------------------------------------------------------- trust


@dataclass(frozen=True)
class HostKeyStatus:
    node: str
    address: str
    key_type: str
    fingerprint: str
    status: str  # "trusted" (already known) | "added" | "unknown" | "changed" | "error"
    expected: str | None = None  # recorded fingerprint, when changed
    error: str | None = None


def fetch_host_key(target: NodeTarget, options: SSHOptions) -> Any:
    """The key the node presents (no authentication). A jump host must itself be trusted."""
    import paramiko

    jump_client = None
    jump = target.jump_target()
    if jump is not None:
        jump_client = _with_retries(lambda: _connect_once(jump, options), options)

    def once() -> Any:
        sock = None
        try:
            sock = _open_socket(target, options, jump_client)
            t = paramiko.Transport(sock)
            try:
                known = load_known_hosts(options.known_hosts_path).lookup(target.known_hosts_name)
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


def scan_host_key(target: NodeTarget, options: SSHOptions) -> tuple[HostKeyStatus, Any]:
    """The node's key and how it stands against known_hosts ("trusted", "unknown",
    "changed", "error"); records nothing. The key is None on "error"."""
    try:
        key = fetch_host_key(target, options)
    except TransportError as err:
        return HostKeyStatus(target.name, target.address, "", "", "error", error=err.render()), None
    fp = fingerprint(key)
    known = load_known_hosts(options.known_hosts_path).lookup(target.known_hosts_name)
    if known:
        ours = known.get(key.get_name())
        if ours is not None and ours == key:
            return HostKeyStatus(target.name, target.address, key.get_name(), fp, "trusted"), key
        expected = ours if ours is not None else list(known.values())[0]
        return HostKeyStatus(target.name, target.address, key.get_name(), fp, "changed",
                             expected=fingerprint(expected)), key
    return HostKeyStatus(target.name, target.address, key.get_name(), fp, "unknown"), key


def record_host_key(target: NodeTarget, key: Any, options: SSHOptions) -> None:
    append_known_host(options.known_hosts_path, target.known_hosts_name, key)


def host_key_status(target: NodeTarget, options: SSHOptions, record: bool) -> HostKeyStatus:
    status, key = scan_host_key(target, options)
    if record and status.status == "unknown":
        record_host_key(target, key, options)
        return replace(status, status="added")
    return status


def scan_host_keys(targets: Iterable[NodeTarget], options: SSHOptions,
                   max_parallel: int = 32) -> list[tuple[HostKeyStatus, Any]]:
    """scan_host_key for every target, in parallel, in the targets' order."""
    targets = list(targets)
    results, errors = parallel(targets, lambda t: scan_host_key(t, options), max_parallel)
    return [results[t.name] if t.name in results
            else (HostKeyStatus(t.name, t.address, "", "", "error", error=str(errors[t.name])), None)
            for t in targets]


def trust_hosts(targets: Iterable[NodeTarget], options: SSHOptions, record: bool = True,
                max_parallel: int = 32) -> list[HostKeyStatus]:
    """Fetch every node's host key; record the unknown ones. Changed keys are only reported."""
    targets = list(targets)
    results, errors = parallel(targets, lambda t: host_key_status(t, options, record), max_parallel)
    out = []
    for t in targets:
        if t.name in results:
            out.append(results[t.name])
        else:
            out.append(HostKeyStatus(t.name, t.address, "", "", "error", error=str(errors[t.name])))
    return out


# --------------------------------------------------------------------------- agent


def _parse_python_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def python_version(conn: Connection, python: str | None = None) -> tuple[int, ...]:
    """The node's python3 version (python: the node's own setting when None);
    NodeRequirementError when it has none."""
    python = python or conn.target.python
    res = conn.run([python, "--version"], timeout=conn.options.connect_timeout + 20)
    version = _parse_python_version(res.stdout + res.stderr) if res.ok else None
    if version is None:
        raise NodeRequirementError(
            f"{conn.name}: {python} is not available on the node "
            f"({(res.stderr or res.stdout).strip()[-200:] or f'exit code {res.exit_code}'}).",
            node=conn.name,
            fix=f"install Python 3.9 or newer on the node (Debian/Ubuntu: apt-get install python3), or set "
                f"`python:` of node {conn.name} in the environment file to the path of one.",
        )
    return version


def bundle_path(bundle: Any, state_dir: str = DEFAULT_STATE_DIR) -> str:
    return posixpath.join(state_dir, "bundles", bundle.name)


def ensure_agent(conn: Connection, bundle: Any, state_dir: str = DEFAULT_STATE_DIR,
                 python: str | None = None) -> tuple[str, bool]:
    """Make sure the node has this bundle: (remote path, uploaded?). Prunes old bundles."""
    python = python or conn.target.python  # named in the too-old message
    version = python_version(conn, python)
    need = tuple(bundle.min_python)
    if version[:2] < need:
        raise NodeRequirementError(
            f"{conn.name}: {python} is {'.'.join(map(str, version))}, but the orch agent needs "
            f"{need[0]}.{need[1]} or newer.",
            node=conn.name,
            fix=f"install Python {need[0]}.{need[1]}+ on the node as `{python}`.",
        )
    remote = bundle_path(bundle, state_dir)
    sftp = conn.sftp()
    uploaded = False
    try:
        present = sftp.stat(remote).st_size == bundle.size
    except OSError:
        present = False
    if not present:
        conn.upload(Path(bundle.path), remote, 0o644)
        uploaded = True
    prune_bundles(conn, posixpath.dirname(remote), keep={bundle.name})
    return remote, uploaded


def prune_bundles(conn: Connection, directory: str, keep: set[str], keep_old: int = KEEP_OLD_BUNDLES) -> list[str]:
    """Remove older agent bundles (the newest keep_old stay) and stale temporary files."""
    sftp = conn.sftp()
    try:
        entries = sftp.listdir_attr(directory)
    except OSError:
        return []
    now = time.time()
    bundles = sorted(
        (e for e in entries if e.filename.startswith("orch-agent-") and e.filename.endswith(".pyz")
         and e.filename not in keep),
        key=lambda e: e.st_mtime or 0,
        reverse=True,
    )
    doomed = [e.filename for e in bundles[keep_old:]]
    doomed += [e.filename for e in entries if ".tmp-" in e.filename and now - (e.st_mtime or now) > 3600]
    for name in doomed:
        try:
            sftp.remove(posixpath.join(directory, name))
        except OSError:
            pass  # another controller got there first
    return doomed


def agent_command(remote: str, state_dir: str = DEFAULT_STATE_DIR, python: str = DEFAULT_PYTHON) -> list[str]:
    """The argv the agent runs as on the node (one per session, on an exec channel)."""
    return [python, remote, "rpc", "--state-dir", state_dir]


class AgentStream:
    """Events of one streaming request (logs --follow, exec); .result once it has ended."""

    def __init__(self, session: AgentSession, req_id: int, op: str):
        self.session = session
        self.req_id = req_id
        self.op = op
        self.result: dict | None = None
        self._cancel_sent = False

    def __iter__(self) -> Iterator[dict]:
        try:
            while self.result is None:
                msg = self.session._read_for(self.req_id, self.op)
                if "event" in msg:
                    yield msg["event"]
                else:
                    self.result = msg["result"]
        finally:
            if self.result is None:  # the consumer stopped early: stop the agent side too
                self.cancel()
                self.wait()

    def cancel(self) -> None:
        if not self._cancel_sent and self.result is None:
            self._cancel_sent = True
            self.session._send("cancel", {"target": self.req_id}, self.session._next_id())

    def wait(self) -> dict:
        """Drain to the result (discarding events)."""
        while self.result is None:
            msg = self.session._read_for(self.req_id, self.op)
            if "result" in msg:
                self.result = msg["result"]
        return self.result

    def __enter__(self) -> AgentStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.result is None:
            self.cancel()
            try:
                self.wait()
            except OrchError:
                pass


class LineReader:
    """Lines off a channel, in linear time and bounded: paramiko's readline scans the
    whole line again for every packet, quadratic in a long line's length."""

    def __init__(self, recv: Callable[[int], bytes], chunk: int = 65536):
        self._recv = recv
        self._chunk = chunk
        self._buf = b""
        self._pos = 0  # where the next line starts in _buf

    def readline(self, limit: int) -> bytes:
        """The next line with its newline; b"" at the end; more than limit bytes (a line
        cut short, the rest left unread) when it is longer; a partial last line as is."""
        parts: list[bytes] = []
        size = 0
        while True:
            if self._pos >= len(self._buf):
                self._buf, self._pos = self._recv(self._chunk), 0
                if not self._buf:
                    return b"".join(parts)
            nl = self._buf.find(b"\n", self._pos)
            end = len(self._buf) if nl < 0 else nl + 1
            parts.append(self._buf[self._pos:end])
            size += end - self._pos
            self._pos = end
            if nl >= 0 or size > limit:
                return b"".join(parts)


class AgentSession:
    """The agent running on a node, on one exec channel of the node's connection.

    From the start it pings the agent from a thread of its own (agent.wire.protocol's lease).
    """

    ping_interval = PING_SECONDS

    max_line = MAX_MESSAGE_BYTES  # the longest line read from the agent

    def __init__(self, conn: Connection, channel: Any, remote_path: str, uploaded: bool):
        self.conn = conn
        self.channel = channel
        self.remote_path = remote_path
        self.uploaded = uploaded
        self.hello: dict = {}
        self._out = LineReader(channel.recv)
        self._ids = iter(range(1, 1 << 62))
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()  # whole lines: the ping thread sends beside call()
        self._closed = threading.Event()
        self._start_pings()

    @property
    def node(self) -> str:
        return self.conn.name

    @property
    def pid(self) -> int | None:
        return self.hello.get("pid")

    @classmethod
    def open(cls, conn: Connection, bundle: Any, *, state_dir: str = DEFAULT_STATE_DIR,
             python: str | None = None) -> AgentSession:
        python = python or conn.target.python
        remote, uploaded = ensure_agent(conn, bundle, state_dir, python)
        channel = conn.open_exec(agent_command(remote, state_dir, python))
        session = cls(conn, channel, remote, uploaded)
        try:
            session.hello = session.call("hello", {"protocol": PROTOCOL_VERSION},
                                         timeout=conn.options.connect_timeout + 30)
        except BaseException:
            session.close()
            raise
        if session.hello.get("protocol") != PROTOCOL_VERSION:
            session.close()
            raise AgentProtocolError(
                f"{conn.name}: the agent speaks protocol {session.hello.get('protocol')}, "
                f"this controller {PROTOCOL_VERSION}.", node=conn.name,
                fix="upgrade orch on the controller or let it upload its own agent.",
            )
        return session

    # ----------------------------------------------------------- wire

    def _next_id(self) -> int:
        return next(self._ids)

    def _send(self, op: str, args: dict | None, req_id: int) -> None:
        line = (json.dumps(agent_request(req_id, op, args), separators=(",", ":")) + "\n").encode()
        try:
            with self._send_lock:
                self.channel.sendall(line)
        except (OSError, EOFError) as err:
            raise self._died(f"cannot send to the agent ({err})") from None

    def _start_pings(self) -> None:
        """Renew the agent's lease (agent.wire.protocol.LEASE_SECONDS) from a thread of its own,
        so the agent keeps this controller's lock while its main thread is busy (a long
        pull, a rollout) and gives it up soon after this process dies or loses the node."""
        threading.Thread(target=self._ping_loop, name=f"ping-{self.node}", daemon=True).start()

    def _ping_loop(self) -> None:
        line = (json.dumps(agent_request(0, PING, None), separators=(",", ":")) + "\n").encode()
        while not self._closed.wait(self.ping_interval):
            try:
                with self._send_lock:
                    self.channel.sendall(line)  # never answered
            except Exception:
                return  # the channel is gone: the next read or send says so

    def _died(self, what: str) -> AgentProtocolError:
        stderr = b""
        try:
            while self.channel.recv_stderr_ready():
                stderr += self.channel.recv_stderr(65536)
        except Exception:
            pass
        code = self.channel.exit_status if self.channel.exit_status_ready() else None
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-TAIL_LOG_LINES:]
        msg = f"{self.node}: the agent stopped: {what}"
        if code is not None and code >= 0:
            msg += f" (exit status {code})"
        elif code == -1:
            msg += " (killed)"
        if tail:
            msg += ". Its last output:\n" + "\n".join(f"  | {ln}" for ln in tail)
        return AgentProtocolError(msg, node=self.node, fix="re-run the command; applying again converges.",
                                  details={"stderr": tail})

    def _read(self, timeout: float | None = None) -> dict:
        self.channel.settimeout(timeout or self.conn.options.command_timeout)
        try:
            line = self._out.readline(self.max_line)
        except socket.timeout:
            raise AgentProtocolError(
                f"{self.node}: the agent said nothing for {timeout or self.conn.options.command_timeout:g}s.",
                node=self.node, fix="raise ssh.command_timeout in the environment file, or check the node.",
            ) from None
        except (OSError, EOFError) as err:
            raise self._died(str(err)) from None
        if not line:
            time.sleep(0.05)  # let the exit status arrive
            raise self._died("end of output")
        if len(line) > self.max_line:
            raise AgentProtocolError(
                f"{self.node}: the agent wrote a line longer than {self.max_line} bytes: {line[:200]!r}...",
                node=self.node, fix="re-run the command; if it happens again, look at the node's agent "
                "(orch nodes check) and report it.")
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            raise AgentProtocolError(f"{self.node}: the agent wrote a line that is not JSON: {line[:200]!r}",
                                     node=self.node) from None
        if not isinstance(msg, dict):
            raise AgentProtocolError(f"{self.node}: the agent wrote a line that is not a JSON object: "
                                     f"{line[:200]!r}", node=self.node)
        if msg.get("id") is None and "error" in msg:  # said before any request (e.g. python too old)
            err = msg["error"]
            if err.get("kind") == "python":
                raise NodeRequirementError(f"{self.node}: {err.get('message')}", node=self.node,
                                           fix="install a newer python3 on the node.")
            raise self._agent_error("?", err)
        return msg

    def _read_for(self, req_id: int, op: str, timeout: float | None = None) -> dict:
        while True:
            msg = self._read(timeout)
            if msg.get("id") != req_id:
                continue  # answers to cancel requests, leftovers of an abandoned stream
            if msg.get("event", {}).get("type") == "heartbeat":
                continue  # only resets the idle timeout
            if "error" in msg:
                raise self._agent_error(op, msg["error"])
            if "event" in msg or "result" in msg:
                return msg

    def _agent_error(self, op: str, err: dict) -> AgentError:
        return AgentError(self.node, op, str(err.get("kind", "internal")), str(err.get("message", "")),
                          err.get("details") if isinstance(err.get("details"), dict) else {})

    # ----------------------------------------------------------- API

    def call(self, op: str, args: dict | None = None, on_event: Callable[[dict], None] | None = None,
             timeout: float | None = None) -> dict:
        """One request; events go to on_event; returns the result or raises AgentError."""
        with self._lock:
            req_id = self._next_id()
            self._send(op, args, req_id)
            while True:
                msg = self._read_for(req_id, op, timeout)
                if "result" in msg:
                    return msg["result"]
                if on_event is not None:
                    on_event(msg["event"])

    def stream(self, op: str, args: dict | None = None) -> AgentStream:
        """A streaming request: iterate its events; stopping early cancels it on the node."""
        req_id = self._next_id()
        self._send(op, args, req_id)
        return AgentStream(self, req_id, op)

    def close(self) -> None:
        self._closed.set()
        try:
            self.channel.shutdown_write()  # EOF: the agent finishes and exits
            deadline = time.monotonic() + 2
            while not self.channel.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.01)
        except Exception:
            pass
        self.channel.close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_sessions(conns: dict[str, Connection], bundle: Any, *, state_dir: str = DEFAULT_STATE_DIR,
                  require_engine: bool = True, max_parallel: int = 32) -> dict[str, AgentSession]:
    """An agent session per node, in parallel; all or nothing, like connect_all.

    With require_engine, also asks each agent for `info` and fails (naming every such
    node, with the fix) when a node's Docker Engine is not reachable.
    """

    def one(conn: Connection) -> AgentSession:
        session = AgentSession.open(conn, bundle, state_dir=state_dir)
        if require_engine:
            info = session.call("info")
            if info.get("engine_error"):
                session.close()
                raise NodeRequirementError(
                    f"{conn.name}: Docker Engine is not usable: {info['engine_error']}",
                    node=conn.name,
                    fix="install Docker Engine on the node (Debian: apt-get install docker.io) and start it.",
                )
        return session

    sessions, errors = parallel(list(conns.values()), one, max_parallel)
    if errors:
        for s in sessions.values():
            s.close()
        failures = {name: _as_transport_error(name, err) for name, err in errors.items()}
        raise NodesUnreachable(failures, len(conns), action="start the agent on")
    return {name: sessions[name] for name in conns}

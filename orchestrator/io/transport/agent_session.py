"""The agent on a node: its bundle uploaded when missing (and old ones pruned), `python3
<bundle> rpc` run on one exec channel of the node's connection, and the JSON-lines protocol of
agent.wire.protocol spoken over it (`AgentSession`: calls, streams, the lease's pings, and the
count of its requests and round trips: `AgentCounts`)."""

from __future__ import annotations

import json
import posixpath
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.wire.protocol import DEFAULT_STATE_DIR, MAX_MESSAGE_BYTES, PING, PING_SECONDS, PROTOCOL_VERSION
from agent.wire.protocol import request as agent_request
from orchestrator.core.environments import DEFAULT_PYTHON
from orchestrator.errors import OrchError
from orchestrator.io.transport.errors import (
    SETUP_ERRORS, AgentError, AgentProtocolError, NodeRequirementError, NodesUnreachable)
from orchestrator.io.transport.ssh import Connection, as_transport_error, parallel

KEEP_OLD_BUNDLES = 2  # besides the current one, for a controller still on an older orch
# A bundle an agent started from within this long is kept whatever its rank: its agent may
# still run, and reads files (templates, lazily imported modules) from its unpacked copy,
# which goes with the bundle (several controllers on different versions share nodes).
IN_USE_SECONDS = 3600.0
TAIL_LOG_LINES = 20


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
    """Remove older agent bundles (the newest keep_old stay, and any an agent started from
    within IN_USE_SECONDS: each agent start touches its bundle) and stale temporary files."""
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
    doomed = [e.filename for e in bundles[keep_old:] if now - (e.st_mtime or 0) > IN_USE_SECONDS]
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


@dataclass(frozen=True)
class AgentCounts:
    """What a session (or a node's sessions) asked of its agent: `requests` sent (the
    lease's pings, never answered, are not counted) and `round_trips`, the times the
    controller waited for answers to requests sent since it last waited. Requests sent
    together before one wait (pipelined) cost one round trip."""

    requests: int = 0
    round_trips: int = 0

    def __add__(self, other: AgentCounts) -> AgentCounts:
        return AgentCounts(self.requests + other.requests, self.round_trips + other.round_trips)

    def __sub__(self, other: AgentCounts) -> AgentCounts:
        return AgentCounts(self.requests - other.requests, self.round_trips - other.round_trips)

    def to_json(self) -> dict:
        return {"requests": self.requests, "round_trips": self.round_trips}


class AgentSession:
    """The agent running on a node, on one exec channel of the node's connection.

    From the start it pings the agent from a thread of its own (agent.wire.protocol's lease).
    `counts()`: its requests and round trips so far (AgentCounts).
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
        self._count_lock = threading.Lock()
        self._requests = 0
        self._round_trips = 0
        self._unawaited = 0  # requests sent since the controller last waited for an answer
        self._behind: list[tuple[int, bytes]] = []  # requests to send behind the next one (send_behind_next)
        self._open: set[int] = set()  # streams whose answers are still to be read
        self._kept: dict[int, list[dict]] = {}  # their messages, read while waiting for another
        self._start_pings()

    @property
    def node(self) -> str:
        return self.conn.name

    @property
    def pid(self) -> int | None:
        return self.hello.get("pid")

    def counts(self) -> AgentCounts:
        with self._count_lock:
            return AgentCounts(self._requests, self._round_trips)

    @classmethod
    def open(cls, conn: Connection, bundle: Any, *, state_dir: str = DEFAULT_STATE_DIR,
             python: str | None = None) -> AgentSession:
        python = python or conn.target.python
        remote, uploaded = ensure_agent(conn, bundle, state_dir, python)
        # the careful path (after a check and an upload): a fresh channel, never a spare
        # agent started before the upload (kept.KeptConnection sends open_exec direct)
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

    @staticmethod
    def _line(op: str, args: dict | None, req_id: int) -> bytes:
        return (json.dumps(agent_request(req_id, op, args), separators=(",", ":")) + "\n").encode()

    def _send(self, op: str, args: dict | None, req_id: int) -> None:
        with self._count_lock:
            behind, self._behind = self._behind, []
        lines = [self._line(op, args, req_id)] + [line for _, line in behind]
        try:
            with self._send_lock:
                self.channel.sendall(b"".join(lines))
        except (OSError, EOFError) as err:
            raise self._died(f"cannot send to the agent ({err})") from None
        with self._count_lock:
            self._requests += len(lines)
            self._unawaited += len(lines)

    def send_behind_next(self, op: str, args: dict | None = None) -> AgentStream:
        """A request sent right behind the next one this session sends, in the same write;
        its answer is read from the returned stream whenever wanted. The agent serves a
        session's requests in order, so it runs once that one is done (e.g. reads under the
        deploy lock behind `lock_acquire`), and it costs no round trip of its own."""
        req_id = self._next_id()
        with self._count_lock:
            self._behind.append((req_id, self._line(op, args, req_id)))
            self._open.add(req_id)
        return AgentStream(self, req_id, op)

    def withdraw_behind(self) -> set[int]:
        """Take back the requests still waiting behind the next one (never sent: their
        streams would wait forever); their ids."""
        with self._count_lock:
            ids, self._behind = {i for i, _ in self._behind}, []
            self._open -= ids
        return ids

    def _awaiting(self) -> None:
        """About to wait for an answer: a round trip if anything was sent since the last wait
        (the answers to requests sent along with it come without another)."""
        with self._count_lock:
            if self._unawaited:
                self._round_trips += 1
                self._unawaited = 0

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
        self._awaiting()
        while True:
            kept = self._kept.get(req_id)
            msg = kept.pop(0) if kept else self._read(timeout)
            if msg.get("event", {}).get("type") == "heartbeat":
                continue  # only resets the idle timeout
            if msg.get("id") != req_id:
                if msg.get("id") in self._open:  # a pipelined request's answer, read before its turn
                    self._kept.setdefault(msg["id"], []).append(msg)
                continue  # else answers to cancel requests, leftovers of an abandoned stream
            if "error" in msg or "result" in msg:
                self._open.discard(req_id)
                self._kept.pop(req_id, None)
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
        self._open.add(req_id)
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
                  require_engine: bool = True, max_parallel: int = 32,
                  opener: Callable[[Any], AgentSession] | None = None) -> dict[str, AgentSession]:
    """An agent session per node (AgentSession.open, or opener(conn)), in parallel; all or
    nothing, like connect_all.

    With require_engine, also asks each agent for `info` and fails (naming every such
    node, with the fix) when a node's Docker Engine is not reachable.
    """

    def one(conn: Connection) -> AgentSession:
        session = opener(conn) if opener else AgentSession.open(conn, bundle, state_dir=state_dir)
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
        failures = {name: as_transport_error(name, err) for name, err in errors.items()}
        connected = not any(isinstance(e, SETUP_ERRORS) for e in failures.values())  # a kept connection connects here
        raise NodesUnreachable(failures, len(conns), action="start the agent on" if connected else "connect to")
    return {name: sessions[name] for name in conns}

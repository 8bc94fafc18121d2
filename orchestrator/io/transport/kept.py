"""A command's side of the keeper (keeper.py): `KeptConnection`, a node's connection whose
agent sessions come from the keeper's kept SSH connection (`RelayChannel`: the channel's
bytes through the keeper's socket), while anything else it is asked (SFTP, commands,
forwards) opens a direct connection of its own on first use.

`open_through_keeper` starts the keeper when none answers (one at a time: a lock file
beside the socket). When the keeper cannot be reached or fails, the command goes to the node
directly, as without persistence; an error of the node itself (unreachable, a changed host
key) is raised as the keeper met it, the same class a direct connect raises, except a
refused login, which is tried again directly (the keeper's SSH agent socket is the one of
the shell that started it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.core.environments import NodeSpec
from orchestrator.io.transport import keeper_wire as W
from orchestrator.io.transport.errors import AuthenticationFailed
from orchestrator.io.transport.options import SSHOptions
from orchestrator.io.transport.ssh import Connection, connect

START_WAIT = 5.0  # seconds for a new keeper to listen
LOG_MAX_BYTES = 1 << 20  # keeper.log beyond this is moved to keeper.log.1 when a keeper starts
# What the keeper's environment keeps of the command's: nothing that may hold a secret (it
# outlives the command); SSH_AUTH_SOCK for keys in the SSH agent.
KEEPER_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR", "SSH_AUTH_SOCK", "PYTHONPATH")


class RelayChannel:
    """What AgentSession uses of a paramiko Channel, over the keeper's socket."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._cv = threading.Condition()
        self._out = bytearray()
        self._err = bytearray()
        self._eof = False
        self._status: int | None = None
        self._timeout: float | None = None
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read_frames, name="relay", daemon=True).start()

    def _read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _read_frames(self) -> None:
        try:
            while True:
                kind, size = W.HEADER.unpack(self._read_exact(W.HEADER.size))
                data = self._read_exact(size) if size else b""
                with self._cv:
                    if kind == W.FRAME_OUT:
                        self._out += data
                    elif kind == W.FRAME_ERR:
                        self._err += data
                    elif kind == W.FRAME_EXIT and len(data) == 4:
                        self._status = struct.unpack("!i", data)[0]
                    self._cv.notify_all()
        except (OSError, EOFError, struct.error):
            pass
        finally:
            with self._cv:
                self._eof = True
                self._cv.notify_all()

    # -- paramiko.Channel's API, as far as the agent session uses it

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def recv(self, n: int) -> bytes:
        with self._cv:
            if not self._cv.wait_for(lambda: self._out or self._eof, self._timeout):
                raise socket.timeout("timed out")
            data = bytes(self._out[:n])
            del self._out[:n]
            return data

    def recv_stderr_ready(self) -> bool:
        with self._cv:
            return bool(self._err)

    def recv_stderr(self, n: int) -> bytes:
        with self._cv:
            data = bytes(self._err[:n])
            del self._err[:n]
            return data

    def exit_status_ready(self) -> bool:
        with self._cv:
            return self._status is not None

    @property
    def exit_status(self) -> int:
        with self._cv:
            return -1 if self._status is None else self._status

    def recv_exit_status(self) -> int:
        with self._cv:
            self._cv.wait_for(lambda: self._status is not None or self._eof)
        return self.exit_status

    @property
    def closed(self) -> bool:
        """Closed here, or by the keeper (the command ended, the connection was lost)."""
        with self._cv:
            return self._eof

    def sendall(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def shutdown_write(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class KeptConnection:
    """A node's connection for one command when the keeper holds its SSH connection: agent
    sessions (open_agent_exec) through the keeper; the rest of Connection's API from a
    direct connection opened on first use (so a command that only talks to agents never
    pays a handshake)."""

    kept = True

    def __init__(self, target: NodeSpec, options: SSHOptions, persist: float, path: Path):
        self.target = target
        self.options = options
        self.persist = persist
        self.path = path
        self._direct: Connection | None = None
        self._lock = threading.Lock()
        self.warm = 0  # agent sessions that came from a spare (started ahead)

    @property
    def name(self) -> str:
        return self.target.name

    def open_agent_exec(self, argv: list[str], timeout: float | None = None) -> Any:
        """A channel running the agent: a spare the keeper started ahead when there is one.
        Falls back to the direct connection when the keeper fails (not when the node does)."""
        try:
            chan, warm = open_through_keeper(self.path, self.target, self.options, argv, self.persist, spare=True)
        except (W.KeeperError, AuthenticationFailed):
            # AuthenticationFailed: the keeper's SSH agent socket is the one of the shell
            # that started it, perhaps gone since; this command's own may still serve.
            return self.direct().open_exec(argv, timeout)
        self.warm += int(warm)
        chan.settimeout(timeout if timeout is not None else self.options.command_timeout)
        return chan

    def direct(self) -> Connection:
        with self._lock:
            if self._direct is None:
                self._direct = connect(self.target, self.options)
            return self._direct

    def __getattr__(self, name: str) -> Any:  # run, sftp, upload, transport, open_exec, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.direct(), name)

    def is_active(self) -> bool:
        return self._direct is None or self._direct.is_active()

    def close(self) -> None:
        with self._lock:
            direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()


def open_through_keeper(path: Path, target: NodeSpec, options: SSHOptions, argv: list[str], persist: float,
                        spare: bool) -> tuple[RelayChannel, bool]:
    """(channel, warm?) for argv on the node, through the keeper (started if needed).
    Raises the node's TransportError as the keeper met it, or W.KeeperError."""
    sock = _connect(path)
    try:
        sock.settimeout(options.connect_timeout * (options.retries + 1) + 30)  # the keeper may be connecting
        sock.sendall(W.request_line(target, options, argv, persist, spare))
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(1)  # byte by byte: what follows the answer is the channel's
            if not chunk:
                raise W.KeeperError("the keeper closed the connection")
            line += chunk
            if len(line) > W.MAX_REQUEST:
                raise W.KeeperError("the keeper's answer is too long")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise W.error_from_json(answer.get("error") or {})
        sock.settimeout(None)
        return RelayChannel(sock), bool(answer.get("warm"))
    except (OSError, ValueError) as err:
        sock.close()
        raise W.KeeperError(f"the keeper failed: {err}") from None
    except BaseException:
        sock.close()
        raise


def _try_connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _connect(path: Path) -> socket.socket:
    """A socket to the keeper at path, starting one if none answers."""
    sock = _try_connect(path)
    if sock is not None:
        return sock
    try:
        directory = W.private_dir(path.parent)
        with open(directory / "keeper.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = _try_connect(path)  # another command started it while this one waited
            if sock is not None:
                return sock
            try:
                path.unlink()  # a keeper that died left it
            except FileNotFoundError:
                pass
            env = {k: os.environ[k] for k in KEEPER_ENV if k in os.environ}
            log_path = directory / "keeper.log"
            if log_path.exists() and log_path.stat().st_size > LOG_MAX_BYTES:
                log_path.replace(directory / "keeper.log.1")  # the previous keepers' lines, once
            with open(log_path, "a") as log:
                subprocess.Popen([sys.executable, "-m", "orchestrator.io.transport.keeper", str(path)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd="/",
                                 start_new_session=True, close_fds=True)
            deadline = time.monotonic() + START_WAIT
            while time.monotonic() < deadline:
                sock = _try_connect(path)
                if sock is not None:
                    return sock
                time.sleep(0.02)
    except OSError as err:
        raise W.KeeperError(f"cannot start the keeper at {path}: {err}") from None
    raise W.KeeperError(f"the keeper did not start listening at {path} within {START_WAIT:g}s")

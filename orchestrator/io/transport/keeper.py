"""The keeper: SSH connections to the nodes held between commands, and an agent started
ahead on each, so that a command pays neither a handshake nor an agent's start-up (opt-in:
the environment file's `ssh.persist`, or ORCH_SSH_PERSIST; OpenSSH's ControlPersist is the
model). One process per user, started by the first command that wants it
(`python -m orchestrator.io.transport.keeper SOCKET`), serving on a Unix socket in a 0700
directory (keeper_wire.socket_path), to processes of the same user only (SO_PEERCRED).

What it keeps safe:
- Host keys: a connection serves only requests with the same connection_key (the node, the
  SSH options, the host keys known_hosts trusts for it, the identity file's stamp); anything changed
  opens a new connection, checked as a command's own would be (ssh.connect).
- The deploy lock and the agent's state: every command gets agent processes of its own,
  never one another command used. A spare is an agent started ahead that has read nothing
  yet (the keeper renews its lease with pings until it is taken); it is handed out once,
  and its channel closes with the client's socket, so the agent sees the end of its input
  as it would when a command exits or dies (and frees a lock it held).
- The bundle: a spare runs exactly the command line the client asked for, the bundle's
  content-addressed name included.
- Nothing outlives `persist` seconds of idleness: an idle connection is closed (its spare
  with it), and the keeper exits when it holds none.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.wire.protocol import PING, PING_SECONDS
from agent.wire.protocol import request as agent_request
from orchestrator.io.transport import keeper_wire as W
from orchestrator.io.transport.ssh import Connection, connect

# sshd's MaxSessions is 10 a connection: a command's agent sessions (nodes.MAX_SESSIONS, 8)
# and a spare fit; a second command at once on the same node gets a second connection.
CHANNELS_PER_CONNECTION = 9
POLL = 0.5  # seconds: how often a relay looks for stderr and the exit status
SPARE_WAIT = 5.0  # seconds a request waits for a spare being started
# Spares kept a connection: as many agents as the last command had open on it at once (a
# deploy applies several services of a wave on one node in parallel, one agent each), at
# most this many idle agents on a node; a no-op needs one.
MAX_SPARES = 4
# A connection idle longer than this is asked for an answer before it is used: a node that
# rebooted or a link lost since the last command is found in one round trip, not when
# TCP gives up on the next packet (minutes).
PROBE_AFTER = 5.0


def log(msg: str) -> None:
    sys.stderr.write(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + msg + "\n")
    sys.stderr.flush()


@dataclass
class Spare:
    """An agent started ahead on a kept connection; nothing but pings has been sent to it."""

    argv: tuple
    channel: Any
    taken: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alive(self) -> bool:
        ch = self.channel
        return not (ch.closed or ch.eof_received or ch.exit_status_ready())


@dataclass
class Kept:
    """One SSH connection the keeper holds, the channels open on it, its spares."""

    conn: Connection
    persist: float
    channels: int = 0
    last_used: float = field(default_factory=time.monotonic)
    spares: list = field(default_factory=list)  # Spare, all of one command line (the newest bundle's)
    starting: dict = field(default_factory=dict)  # argv tuple -> spares being started for it
    agents: int = 0  # agent channels relayed now
    peak: int = 0  # the most relayed at once since the connection was last idle
    wanted: int = 1  # spares to keep: the last command's peak

    def spare_for(self, argv: tuple) -> Spare | None:
        return next((s for s in self.spares if s.argv == argv), None)

    def idle_channels(self) -> int:
        """Channels held by spares, started or on their way."""
        return len(self.spares) + sum(self.starting.values())


class Keeper:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._spare_ready = threading.Condition(self._lock)
        self._kept: dict[str, list[Kept]] = {}  # connection_key -> connections
        self._relays = 0
        self._last_request = time.monotonic()
        self._persist = 0.0

    # ------------------------------------------------------------- connections

    def _connection(self, key: str, req: dict) -> tuple[Kept, Any, bool]:
        """A channel for the request: (its connection, the channel, warm?), taking a spare of
        the same command line if one is ready; connects when no kept connection has room, or
        when the kept one is found dead (a node rebooted, a link lost since the last command)."""
        argv = tuple(req["argv"])
        while True:
            kept, spare, idle = self._pick(key, argv)
            if kept is not None and idle > PROBE_AFTER and not _answers(kept.conn):
                self._drop(key, kept, "it no longer answers")
                continue
            fresh = kept is None
            if fresh:
                target, options = W.target_from_json(req["target"]), W.options_from_json(req["options"])
                conn = connect(target, options)  # raises the TransportError a command's own connect would
                kept = Kept(conn, float(req["persist"]), channels=1)
                with self._lock:
                    self._kept.setdefault(key, []).append(kept)
                log(f"connected to {target.name} ({target.address})")
            if spare is not None:
                return kept, spare.channel, True
            try:
                return kept, kept.conn.open_exec(list(argv), timeout=None), False
            except BaseException:
                with self._lock:
                    kept.channels -= 1
                if fresh:
                    raise
                self._drop(key, kept, "it refused a channel")  # then once more, on a new connection

    def _pick(self, key: str, argv: tuple) -> tuple[Kept | None, Spare | None, float]:
        """A kept connection with room (a channel reserved on it) and its spare for argv if
        one is alive, and how long it had been idle; (None, None, 0) when none has room."""
        with self._lock:
            # A spare on its way (the last command just ended) is worth waiting for: a
            # channel of its own would cost the same agent start-up, and one more.
            self._spare_ready.wait_for(lambda: not any(k.starting.get(argv) and k.spare_for(argv) is None
                                                       for k in self._kept.get(key, [])), SPARE_WAIT)
            for kept in self._kept.get(key, []):
                if not kept.conn.is_active():
                    continue
                idle = time.monotonic() - kept.last_used
                while (spare := kept.spare_for(argv)) is not None:
                    kept.spares.remove(spare)
                    with spare.lock:
                        spare.taken = True
                    if spare.alive():
                        kept.last_used = time.monotonic()
                        return kept, spare, idle
                    kept.channels -= 1  # a dead one (its bundle removed, the node rebooted): the next
                    spare.channel.close()
                if kept.channels < CHANNELS_PER_CONNECTION:
                    kept.channels += 1
                    kept.last_used = time.monotonic()
                    return kept, None, idle
        return None, None, 0.0

    def _drop(self, key: str, kept: Kept, why: str) -> None:
        with self._lock:
            if kept in self._kept.get(key, []):
                self._kept[key].remove(kept)
                if not self._kept[key]:
                    del self._kept[key]
            spares = list(kept.spares)
            kept.spares.clear()
        log(f"dropping the connection to {kept.conn.name}: {why}")
        _close(kept.conn, spares)

    def _start_spare(self, kept: Kept, argv: tuple) -> None:
        """Start spares for argv until the connection has `kept.wanted` (within its channels)."""
        with self._lock:
            have = sum(1 for s in kept.spares if s.argv == argv) + kept.starting.get(argv, 0)
            count = min(kept.wanted - have, CHANNELS_PER_CONNECTION - kept.channels)
            if count <= 0:
                return
            kept.starting[argv] = kept.starting.get(argv, 0) + count
            kept.channels += count

        def run() -> None:
            spare = None
            try:
                spare = Spare(argv, kept.conn.open_exec(list(argv), timeout=None))
            except Exception as err:  # noqa: BLE001 - a spare is only ever a head start
                log(f"{kept.conn.name}: no spare agent: {err}")
            with self._lock:
                kept.starting[argv] -= 1
                if not kept.starting[argv]:
                    del kept.starting[argv]
                if spare is None:
                    kept.channels -= 1
                else:
                    kept.spares.append(spare)
                # Spares of one command line: another's (an older bundle) go.
                stale = [s for s in kept.spares if s.argv != argv] if spare is not None else []
                for old in stale:
                    kept.spares.remove(old)
                    kept.channels -= 1
                self._spare_ready.notify_all()
            for old in stale:
                with old.lock:
                    old.taken = True
                old.channel.close()

        for _ in range(count):
            threading.Thread(target=run, name="spare", daemon=True).start()

    def _ping_spares(self) -> None:
        """Renew the lease of every agent not handed out yet (agent.wire.protocol)."""
        line = (json.dumps(agent_request(0, PING, None), separators=(",", ":")) + "\n").encode()
        while True:
            time.sleep(PING_SECONDS)
            with self._lock:
                spares = [s for ks in self._kept.values() for k in ks for s in k.spares]
            for spare in spares:
                with spare.lock:
                    if not spare.taken:
                        try:
                            spare.channel.sendall(line)
                        except Exception:  # noqa: BLE001 - a dead spare is dropped when asked for
                            pass

    def _expire(self) -> bool:
        """Close connections idle longer than their persist; True when the keeper may exit."""
        now = time.monotonic()
        doomed = []
        with self._lock:
            for key in list(self._kept):
                keep = []
                for kept in self._kept[key]:
                    busy = kept.channels - kept.idle_channels()
                    if busy <= 0 and (now - kept.last_used > kept.persist or not kept.conn.is_active()):
                        doomed.append(kept)
                    else:
                        keep.append(kept)
                if keep:
                    self._kept[key] = keep
                else:
                    del self._kept[key]
            idle = not self._kept and self._relays == 0 and now - self._last_request > max(self._persist, 1.0)
        for kept in doomed:
            log(f"closing the connection to {kept.conn.name} (idle)")
            _close(kept.conn, list(kept.spares))
        return idle

    # ------------------------------------------------------------- clients

    def _peer_is_us(self, sock: socket.socket) -> bool:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid == os.getuid()

    def handle(self, sock: socket.socket) -> None:
        try:
            if not self._peer_is_us(sock):
                return
            sock.settimeout(30)
            req = self._read_request(sock)
            if req is None:
                return
            with self._lock:
                self._last_request = time.monotonic()
                self._persist = max(self._persist, float(req.get("persist") or 0))
            key = W.connection_key(W.target_from_json(req["target"]), W.options_from_json(req["options"]))
            try:
                kept, channel, warm = self._connection(key, req)
            except Exception as err:  # noqa: BLE001 - said to the client, who reports it
                sock.sendall((json.dumps({"ok": False, "error": W.error_to_json(err)}) + "\n").encode())
                return
            kept.persist = max(kept.persist, float(req["persist"]))
            sock.sendall((json.dumps({"ok": True, "warm": warm}) + "\n").encode())
            self._opened(kept)
            try:
                relay(sock, channel)
            finally:
                done = self._closed(kept)
            if req.get("spare") and done:
                # After the command, not during it: starting an agent costs the node a
                # python3 start-up, which would compete with the command's own agents.
                self._start_spare(kept, tuple(req["argv"]))
        except Exception as err:  # noqa: BLE001 - one client's trouble never stops the keeper
            log(f"a client failed: {type(err).__name__}: {err}")
        finally:
            sock.close()

    def _opened(self, kept: Kept) -> None:
        """An agent channel handed to a client (its channel reserved by _pick)."""
        with self._lock:
            self._relays += 1
            kept.agents += 1
            kept.peak = max(kept.peak, kept.agents)

    def _closed(self, kept: Kept) -> bool:
        """Its client went away; True when it was the connection's last: the command ended,
        and the next one is likely to want as many agents at once (kept.wanted)."""
        with self._lock:
            self._relays -= 1
            kept.channels -= 1
            kept.agents -= 1
            kept.last_used = time.monotonic()
            if kept.agents:
                return False
            kept.wanted, kept.peak = max(1, min(kept.peak, MAX_SPARES)), 0
            return True

    @staticmethod
    def _read_request(sock: socket.socket) -> dict | None:
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            buf += chunk
            if len(buf) > W.MAX_REQUEST:
                return None
        line, rest = buf.split(b"\n", 1)
        if rest:
            return None  # a client sends nothing before the answer
        req = json.loads(line)
        if not isinstance(req, dict) or req.get("v") != W.VERSION or not isinstance(req.get("argv"), list):
            return None
        return req

    def serve(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            server.bind(self.path)
        finally:
            os.umask(old)
        bound = os.stat(self.path).st_ino  # removed at exit only if still ours
        server.listen(128)
        server.settimeout(1.0)
        threading.Thread(target=self._ping_spares, name="pings", daemon=True).start()
        log(f"keeper {os.getpid()} serving on {self.path}")
        try:
            while True:
                try:
                    client, _ = server.accept()
                except socket.timeout:
                    if self._expire():
                        break
                    continue
                client.settimeout(None)
                threading.Thread(target=self.handle, args=(client,), name="client", daemon=True).start()
        finally:
            try:
                if os.stat(self.path).st_ino == bound:
                    os.unlink(self.path)
            except OSError:
                pass
            server.close()
            log(f"keeper {os.getpid()} exits (idle)")


def _close(conn: Connection, spares: list) -> None:
    """A kept connection closed, its spares first (their agents see the end of input)."""
    for spare in spares:
        spare.channel.close()
    conn.close()


def _answers(conn: Connection) -> bool:
    """Whether the node's sshd answers on this connection within its connect timeout (a
    global request it refuses: a round trip, nothing run)."""
    done = threading.Event()

    def ask() -> None:
        try:
            conn.transport.global_request("keepalive@openssh.com", wait=True)
            done.set()
        except Exception:  # noqa: BLE001 - no answer is the answer
            pass

    threading.Thread(target=ask, name="probe", daemon=True).start()
    return done.wait(conn.options.connect_timeout) and conn.is_active()


def relay(sock: socket.socket, channel: Any) -> None:
    """The client's bytes to the channel's stdin; the channel's stdout, stderr and exit
    status back in frames. Either side closing closes both."""
    sock.settimeout(None)

    def upstream() -> None:
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                channel.sendall(data)
        except (OSError, EOFError):
            pass
        finally:
            try:
                channel.shutdown_write()  # the agent reads its end of input
            except Exception:  # noqa: BLE001
                pass

    up = threading.Thread(target=upstream, name="relay-up", daemon=True)
    up.start()
    channel.settimeout(POLL)
    try:
        while True:
            try:
                data = channel.recv(65536)
            except socket.timeout:
                data = None
            while channel.recv_stderr_ready():
                sock.sendall(W.frame(W.FRAME_ERR, channel.recv_stderr(65536)))
            if data:
                sock.sendall(W.frame(W.FRAME_OUT, data))
            elif data == b"":  # end of the command's output: its status follows
                channel.status_event.wait(2.0)
                while channel.recv_stderr_ready():
                    sock.sendall(W.frame(W.FRAME_ERR, channel.recv_stderr(65536)))
                if channel.exit_status_ready():
                    sock.sendall(W.frame(W.FRAME_EXIT, struct.pack("!i", channel.exit_status)))
                break
    except OSError:
        pass  # the client went away: closing the channel ends its agent
    finally:
        channel.close()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m orchestrator.io.transport.keeper SOCKET\n")
        return 2
    import orchestrator.io.transport  # noqa: F401 - paramiko without `invoke`, as for commands

    try:
        Keeper(args[0]).serve()
    except OSError as err:  # another keeper took the socket first
        log(f"keeper not started: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

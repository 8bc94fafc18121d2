"""The request loop: JSON lines in on stdin, JSON lines out on stdout.

A reader thread takes lines off stdin so that "cancel" (and end of input, which means
the controller went away) reach a running operation at once; operations themselves
run one at a time, in order, on the main thread.

A controller can also go away without an end of input: its network or power gone, the
TCP connection half-open until keepalives give up (hours with default settings). The
lease thread treats LEASE_SECONDS of silence (no request, no ping: see agent.wire.protocol)
like an end of input, and `give_up` (also on SIGTERM, what `orch lock break` sends)
frees the deploy locks at once: the running operation is cancelled and puts its batch
back under agent.lock.working, which the next holder waits for.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional, Set

from agent.context import Context
from agent.lock import TABLE, working
from agent.registry import Operations
from agent.wire.protocol import (
    BAD_REQUEST,
    INTERNAL,
    LEASE_EXPIRED,
    LEASE_SECONDS,
    MAX_REQUEST_BYTES,
    PING,
    AgentError,
    BadRequest,
    check_int,
    check_keys,
    check_name,
    encode,
    error,
    event,
    parse_request,
    require,
    result,
)


HEARTBEAT_SECONDS = 15.0


class Server:
    def __init__(
        self,
        stdin: BinaryIO,
        stdout: BinaryIO,
        engine_factory: Callable[[], Any],
        state_dir: str,
        operations: Optional[Mapping[str, Callable]] = None,
    ):
        self.stdin = stdin
        self.stdout = stdout
        self.engine_factory = engine_factory
        self.state_dir = state_dir
        # not `or`: an Operations' truth would import every operation
        self.operations = operations if operations is not None else Operations()
        self._out_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._current: Optional[Any] = None
        self._cancel: Optional[threading.Event] = None
        self._cancelled_early: Set[Any] = set()
        self._engine: Any = None
        self.engine_id_factory: Optional[Callable[[], Optional[str]]] = None  # fast engine ID (see _engine_id)
        self.reader_factory: Optional[Callable[[], Any]] = None  # queries without the SDK (see _reader_once)
        self._socket_reads: Any = None
        self._engine_id: Optional[str] = None
        self.broken = False
        self.heartbeat_interval = HEARTBEAT_SECONDS
        self.max_request = MAX_REQUEST_BYTES
        self.lease_seconds = LEASE_SECONDS
        self.clock: Callable[[], float] = time.monotonic
        self._last_input = self.clock()
        self._gone = threading.Event()  # given up on the controller (lease expired, lock broken)
        self._served = threading.Event()  # serve() returned: the lease has nothing left to guard
        self._queue: "Optional[queue.Queue[Any]]" = None

    # --------------------------------------------------------------- output

    def send(self, obj: Dict[str, Any]) -> None:
        if self.broken:
            return
        data = encode(obj)
        with self._out_lock:
            try:
                self.stdout.write(data)
                self.stdout.flush()
            except (BrokenPipeError, OSError, ValueError):
                # The controller is gone: finish quietly, leave the node as it is.
                self.broken = True
                if self._cancel is not None:
                    self._cancel.set()

    # --------------------------------------------------------------- input

    def _reader(self, q: "queue.Queue[Any]") -> None:
        # Queue items: a request line, an AgentError to answer in turn, None at the end.
        try:
            while True:
                line = self.stdin.readline(self.max_request)
                if not line:
                    break
                self._last_input = self.clock()  # any input renews the controller's lease
                if len(line) >= self.max_request and not line.endswith(b"\n"):
                    # Too long: skip to its end without keeping it; answered in turn.
                    while line and not line.endswith(b"\n"):
                        line = self.stdin.readline(1 << 20)
                        self._last_input = self.clock()
                    q.put(BadRequest("request is longer than %d bytes" % self.max_request))
                    continue
                if not line.strip():
                    continue
                try:
                    if (b'"cancel"' in line or b'"ping"' in line) and self._act_now(line):
                        continue
                except Exception as exc:  # a bug: report it, keep reading
                    self.send(error(None, _bug(exc)))
                    continue
                q.put(line)
        except (OSError, ValueError):
            pass
        finally:
            with self._state_lock:
                if self._cancel is not None:
                    self._cancel.set()
            q.put(None)

    def _act_now(self, line: bytes) -> bool:
        """Acts on a ping (it only renews the lease) or a cancel at once, never queued
        behind a running operation; False when the line is something else (or not valid:
        the main loop answers it in turn)."""
        try:
            req = parse_request(line)
        except AgentError:
            return False
        if req["op"] == PING:
            return True
        if req["op"] != "cancel":
            return False
        self._cancel_request(req)
        return True

    def _cancel_request(self, req: Dict[str, Any]) -> None:
        try:
            check_keys(req["args"], ("target",), "cancel")
            target = check_int(require(req["args"], "target", "cancel"), "target", 0)
        except AgentError as err:
            self.send(error(req.get("id"), err))
            return
        with self._state_lock:
            if target == self._current and self._cancel is not None:
                self._cancel.set()
            elif len(self._cancelled_early) < 1024:  # ids of requests not read yet; bounded
                self._cancelled_early.add(target)
        self.send(result(req.get("id"), {"cancelled": target}))

    # --------------------------------------------------------------- loop

    def serve(self) -> int:
        q: "queue.Queue[Any]" = queue.Queue()
        self._queue = q
        self._last_input = self.clock()
        reader = threading.Thread(target=self._reader, args=(q,), name="stdin", daemon=True)
        reader.start()
        threading.Thread(target=self._watch_lease, name="lease", daemon=True).start()
        while not self.broken and not self._gone.is_set():
            line = q.get()
            if line is None or self._gone.is_set():
                break  # nothing queued before a give-up runs: the locks are gone
            if isinstance(line, AgentError):
                self.send(error(None, line))
                continue
            self.handle(line)
        self._served.set()
        return 0

    def finish(self, code: int) -> int:
        """The process's exit code; after a give-up the process ends here at once: the
        stdin reader is still blocked in a read, which would abort the interpreter's exit."""
        if self._gone.is_set():
            for stream in (self.stdout, sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
        return code

    def _watch_lease(self) -> None:
        step = max(0.05, min(1.0, self.lease_seconds / 10))
        while not self._gone.wait(step):
            if self._served.is_set():
                return  # a later give-up would free locks that are no longer this session's
            silent = self.clock() - self._last_input
            if silent >= self.lease_seconds:
                self.give_up("the controller sent nothing for %.0fs (lease %.0fs): taken as gone"
                             % (silent, self.lease_seconds))
                return

    def give_up_on_sigterm(self) -> None:
        """SIGTERM (what `orch lock break` sends the holder) gives up like a lost lease; the
        handler only starts a thread, as give_up may wait on a full stdout pipe."""
        import signal

        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(
            target=self.give_up, args=("stopped by SIGTERM (orch lock break, or a shutdown)",), daemon=True).start())

    def give_up(self, why: str) -> None:
        """Treat the controller as gone although its channel is open: free the deploy
        locks now, stop the running operation (it puts its batch back), serve no more."""
        with self._state_lock:
            if self._gone.is_set():
                return
            self._gone.set()
        TABLE.release_all()  # first: the put-back runs under agent.lock.working, which the next holder waits for
        with self._state_lock:
            if self._cancel is not None:
                self._cancel.set()
        if self._queue is not None:
            self._queue.put(None)
        self.send(error(None, AgentError(LEASE_EXPIRED, why)))  # if the controller can still hear

    def _engine_once(self) -> Any:
        # One engine connection for the life of the session, made on first use.
        if self._engine is None:
            self._engine = self.engine_factory()
        return self._engine

    def _engine_id_once(self) -> str:
        # The engine's ID, once per session: from the SDK if it is connected already, else
        # the fast way (engine_id_factory), else by connecting the SDK.
        if self._engine_id is None:
            found = None
            if self._engine is None and self.engine_id_factory is not None:
                found = self.engine_id_factory()
            self._engine_id = found or self._engine_once().engine_id()
        return self._engine_id

    def _reader_once(self) -> Any:
        # Reads go through the SDK once it is connected (an operation changed something);
        # until then through one socket reader for the session.
        if self._engine is not None or self.reader_factory is None:
            return None
        if self._socket_reads is None:
            self._socket_reads = self.reader_factory()
        return self._socket_reads

    def _heartbeat(self, req_id: Any, done: threading.Event) -> None:
        # A quiet operation (a long pull, logs --follow of a quiet container) still
        # shows the controller it is alive, so its idle timeout means "agent hung".
        while not done.wait(self.heartbeat_interval):
            self.send(event(req_id, "heartbeat"))

    def handle(self, line: bytes) -> None:
        req_id = None
        try:
            req = parse_request(line)
            req_id = req.get("id")
            if req["op"] == "cancel":  # one the reader did not recognise (e.g. an escaped name)
                self._cancel_request(req)
                return
            op = self.operations.get(req["op"])
            if op is None:
                raise BadRequest(
                    "unknown operation %r; known: %s" % (req["op"], ", ".join(sorted(self.operations)))
                )
            cancel = threading.Event()
            with self._state_lock:
                self._current, self._cancel = req_id, cancel
                if req_id in self._cancelled_early:
                    cancel.set()

            def emit(type_: str, **data: Any) -> None:
                self.send(event(req_id, type_, **data))

            ctx = Context(engine_factory=self._engine_once, state_dir=self.state_dir, emit=emit, cancelled=cancel,
                          engine_id=self._engine_id_once if self.engine_id_factory is not None else None,
                          reader=self._reader_once)
            done = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(req_id, done), daemon=True)
            beat.start()
            try:
                with working(ctx, _work_env(req["op"], req["args"])):
                    out = op(ctx, req["args"])
            finally:
                done.set()
            self.send(result(req_id, out))
        except AgentError as err:
            if req_id is None:
                req_id = _salvage_id(line)
            self.send(error(req_id, err))
        except Exception as exc:  # a bug: report it, keep serving
            self.send(error(req_id, _bug(exc)))
        finally:
            with self._state_lock:
                self._current, self._cancel = None, None


# Operations that change an environment's containers: they run under agent.lock.working.
CHANGES_CONTAINERS = frozenset({"apply", "rollout", "restore", "retire", "remove"})


def _work_env(op: str, args: Any) -> Optional[str]:
    """The environment an operation changes (args.env, or the spec's), when it is one
    that does and the name is valid (else the operation's own checks refuse it)."""
    if op not in CHANGES_CONTAINERS or not isinstance(args, dict):
        return None
    spec = args.get("spec")
    env = args.get("env") or (spec.get("env") if isinstance(spec, dict) else None)
    try:
        return check_name(env, "env") if env else None
    except AgentError:
        return None


def _bug(exc: Exception) -> AgentError:
    tb = traceback.format_exc(limit=8)
    return AgentError(INTERNAL, "agent bug: %s: %s" % (type(exc).__name__, str(exc)[:500]), {"traceback": tb})


def _salvage_id(line: bytes) -> Any:
    """The id of a refused request, when it is one a request may carry (else None)."""
    try:  # lenient about NaN, nesting and long numbers (refused anyway), in linear time
        obj = json.loads(line.decode("utf-8"), parse_int=lambda text: int(text) if len(text) <= 20 else None)
        req_id = obj.get("id") if isinstance(obj, dict) else None
        return check_int(req_id, "id", 0) if req_id is not None else None
    except Exception:
        return None


__all__ = ["Server", "BAD_REQUEST"]

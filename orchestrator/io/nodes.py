"""The node pool: one SSH connection per node and a pool of agent sessions on it
(`SSHNode`), opened for every node of an environment at once (`ssh_connect`, all or
nothing; `env_sessions`: one plain session per node for commands that make a few calls), observed in parallel (`observe_nodes`) and closed (`close_nodes`). The use cases
in orchestrator.app take a `Connector` (ssh_connect by default; tests hand in fakes).

Round trips: every agent session counts its requests and the round trips it waited for
(transport.AgentCounts); `SSHNode.round_trips()` adds them up per node, split at the end
of the connect (`RoundTrips`). `SSHNode.read_behind_next` pipelines reads behind the
node's next request (the deploy lock's `lock_acquire`), and `call` answers them from there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agent.wire.messages import StateRequest, StateResult
from orchestrator.io import transport as T
from orchestrator.io.transport.agent_session import AgentCounts
from orchestrator.io.transport.keeper_wire import persist_seconds, socket_path
from orchestrator.io.transport.kept import KeptConnection
from orchestrator.errors import OrchError
from orchestrator.core.environments import NodeSpec
from orchestrator.core.plan import Observed, observe
from orchestrator.core.progress import Progress
from orchestrator.core.shared_nodes import of_env



@dataclass(frozen=True)
class RoundTrips:
    """A node's agent requests and round trips for one command: while connecting (hello,
    and the `state` read along with it) and after; `sessions`: agent sessions opened after
    the connect (each also costs the SSH round trips of a channel open and an exec)."""

    connect: AgentCounts
    after_connect: AgentCounts
    sessions: int = 0

    def to_json(self) -> dict:
        return {"connect": self.connect.to_json(), "after_connect": dict(self.after_connect.to_json(),
                                                                          sessions=self.sessions)}


def _request_key(op: str, args: dict | None) -> str:
    return json.dumps([op, args or {}], sort_keys=True, separators=(",", ":"))


# sshd refuses session channels beyond its MaxSessions (default 10) on one connection
# ("ChannelException(2, 'Connect failed')"): a wave of 40 services on one node waited for
# none. Agent sessions stay under it, leaving room for an SFTP channel and a forward.
MAX_SESSIONS = 8


class SSHNode:
    """A node for the length of one command: its SSH connection and a pool of agent
    sessions on it (the agent serves one request at a time per session, so parallel
    applies on one node use one session each, opened on demand, at most MAX_SESSIONS:
    beyond that a request waits for a free one)."""

    def __init__(self, conn: Any, bundle: Any, first: Any, progress: Progress | None = None,
                 state: dict | None = None):
        self.prefetched_state = state  # the `state` answer read along with hello, if any
        self.conn = conn
        self.bundle = bundle
        self.name = conn.name
        self.progress = progress
        self._free = [first]
        self._all = [first]
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # a session freed, or a slot
        self._slots = 1  # sessions open or being opened (the first one included)
        self.max_sessions = MAX_SESSIONS
        self._closed = False
        self._warming: list[threading.Thread] = []
        self._pending = 0  # sessions prewarm is opening now
        self._expecting = 0  # requests waiting for one of those rather than opening their own
        self._at_connect = _counts(first)
        # Reads sent behind the lock session's next request (read_behind_next), in send
        # order, and the answers drained before their turn: (key, ("ok"|"error", value)).
        self._ahead: list[tuple[str, Any]] = []
        self._ahead_answers: dict[str, tuple[str, Any]] = {}
        self._ahead_lock = threading.RLock()

    def round_trips(self) -> RoundTrips:
        total = AgentCounts()
        with self._lock:
            sessions = list(self._all)
        for s in sessions:
            total = total + _counts(s)
        return RoundTrips(self._at_connect, total - self._at_connect, len(sessions) - 1)

    def read_behind_next(self, requests: Iterable[tuple[str, dict]]) -> None:
        """Send these reads behind the lock session's next request (the deploy lock's
        `lock_acquire`: the agent serves them under the lock, in order) and answer `call`s
        for the same (op, args) from them. Until they are read the lock session leaves the
        pool; any other request on the node first drops what is left of them (an answer
        read ahead is never served after the node was asked anything else)."""
        s = self.lock_session()
        with self._ahead_lock:
            with self._lock:
                if s in self._free:
                    self._free.remove(s)
            for op, args in requests:
                self._ahead.append((_request_key(op, args), s.send_behind_next(op, args)))

    def _take_ahead(self, op: str, args: dict | None) -> tuple[str, Any] | None:
        """The answer read ahead for (op, args), or None (then nothing is left ahead)."""
        key = _request_key(op, args)
        with self._ahead_lock:
            if not self._ahead and not self._ahead_answers:
                return None
            self._withdraw_unsent()
            found = self._ahead_answers.pop(key, None)
            while found is None and self._ahead:
                k, stream = self._ahead.pop(0)
                outcome = _outcome(stream)
                if k == key:
                    found = outcome
                else:
                    self._ahead_answers[k] = outcome
            if found is None:
                self._ahead_answers.clear()
            if not self._ahead:
                self._lock_session_back()
            return found

    def _withdraw_unsent(self) -> None:
        """Reads whose lock_acquire was never sent are taken back: nothing will answer them."""
        unsent = self.lock_session().withdraw_behind()
        self._ahead = [(k, st) for k, st in self._ahead if st.req_id not in unsent]

    def _drop_ahead(self) -> None:
        with self._ahead_lock:
            if not self._ahead and not self._ahead_answers:
                return
            self._withdraw_unsent()
            while self._ahead:
                _outcome(self._ahead.pop(0)[1])
            self._ahead_answers.clear()
            self._lock_session_back()

    def _lock_session_back(self) -> None:
        s = self.lock_session()
        with self._released:
            if s not in self._free and not self._closed and not s.channel.closed:
                self._free.append(s)
                self._released.notify()

    def prewarm(self, count: int, project: str | None = None) -> None:
        """Open sessions in the background until `count` exist (parallel applies coming
        later, e.g. two services of one wave on this node, then find them ready)."""

        def open_one() -> None:
            try:
                s = open_agent(self.conn, self.bundle, fallback=False, project=project)
            except Exception:
                with self._released:
                    self._slots -= 1
                    self._pending -= 1
                    self._released.notify_all()
                return  # session() opens one itself if it needs it
            with self._released:
                self._pending -= 1
                if self._closed:
                    s.channel.close()
                    self._released.notify_all()
                    return
                self._all.append(s)
                self._free.append(s)
                self._released.notify_all()
            if self.progress is not None:
                self.progress.event("session", node=self.name, pid=s.pid)

        with self._lock:
            self._warming = [t for t in self._warming if t.is_alive()]
            missing = max(0, min(count, self.max_sessions) - self._slots)
            self._slots += missing
            self._pending += missing
        for _ in range(missing):
            t = threading.Thread(target=open_one, daemon=True, name=f"orch-warm-{self.name}")
            self._warming.append(t)
            t.start()

    @contextmanager
    def session(self) -> Iterator[Any]:
        self._drop_ahead()
        with self._released:
            while not self._free:
                if self._pending > self._expecting and not self._closed:
                    # a session prewarm is opening is on its way: wait for it rather than start
                    # another agent on the node (they take as long)
                    self._expecting += 1
                    try:
                        self._released.wait()
                    finally:
                        self._expecting -= 1
                elif self._slots >= self.max_sessions:
                    self._released.wait()
                else:
                    break
            s = self._free.pop() if self._free else None
            if s is None:
                self._slots += 1
        if s is None:
            try:
                s = open_agent(self.conn, self.bundle, fallback=False)
            except BaseException:
                with self._released:
                    self._slots -= 1
                    self._released.notify()
                raise
            with self._lock:
                self._all.append(s)
            if self.progress is not None:
                self.progress.event("session", node=self.name, pid=s.pid)
        try:
            yield s
        finally:
            with self._released:
                if not s.channel.closed and not s.channel.exit_status_ready():
                    self._free.append(s)
                else:
                    self._slots -= 1  # its agent is gone: the slot is free
                self._released.notify()

    def lock_session(self) -> Any:
        """The session that holds the deploy lock: the first one, which lives as long as
        the command (no extra agent start). Its agent ends when the controller goes away,
        after putting back the batch it was working on; lock_acquire waits for the other
        sessions' work (agent.lock.working). Not to be closed by the caller."""
        return self._all[0]

    def call(self, op: str, args: dict | None = None, on_event: Callable[[dict], None] | None = None,
             timeout: float | None = None) -> dict:
        ahead = self._take_ahead(op, args)
        if ahead is not None:
            kind, value = ahead
            if kind == "error":
                raise value
            return value
        with self.session() as s:
            return s.call(op, args, on_event, timeout)

    def call_many(self, requests: list[tuple[str, dict]]) -> list[tuple[str, Any]]:
        """Requests sent together on one session, served by the agent one after the other:
        one round trip. Each answer is ("ok", result) or ("error", err); a failed one does
        not stop the next (for best-effort work, e.g. discard then prune_images)."""
        with self.session() as s:
            streams = [s.stream(op, args) for op, args in requests]
            return [_outcome(st) for st in streams]

    @contextmanager
    def stream(self, op: str, args: dict | None = None) -> Iterator[Any]:
        """A streaming request on a session of its own (logs --follow, exec)."""
        with self.session() as s:
            st = s.stream(op, args)
            with st:
                yield st

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for t in self._warming:
            t.join(0.5)
        for s in list(self._all):
            try:
                s.channel.shutdown_write()  # EOF: the agent exits on its own
                s.channel.close()
            except Exception:
                pass
        self.conn.close()


def _counts(session: Any) -> AgentCounts:
    counts = getattr(session, "counts", None)
    return counts() if counts is not None else AgentCounts()


def _outcome(stream: Any) -> tuple[str, Any]:
    try:
        return "ok", stream.wait()
    except OrchError as err:
        return "error", err


def call_in_order(node: Any, requests: list[tuple[str, dict]]) -> list[tuple[str, Any]]:
    """SSHNode.call_many, or one call after the other on a node that cannot pipeline."""
    many = getattr(node, "call_many", None)
    if many is not None:
        return many(requests)
    out: list[tuple[str, Any]] = []
    for op, args in requests:
        try:
            out.append(("ok", node.call(op, args)))
        except OrchError as err:
            out.append(("error", err))
    return out


def open_agent(conn: Any, bundle: Any, fallback: bool = True, project: str | None = None,
               mesh_env: str = "") -> Any:
    """An agent session, fast: run the bundle straight away and say hello (and, with
    `project`, ask for its `state` in the same breath: session.prefetched).

    Only when that fails (bundle missing, python3 missing or too old) does it take
    transport.AgentSession.open's careful path: check python3, upload, prune, which
    also produces the readable error with the fix.
    """
    from agent.wire.protocol import PROTOCOL_VERSION

    remote = T.bundle_path(bundle)
    session = None
    try:
        channel = conn.open_agent_exec(T.agent_command(remote, python=conn.target.python))
        session = T.AgentSession(conn, channel, remote, False)
        hello = session.stream("hello", {"protocol": PROTOCOL_VERSION})
        state = session.stream("state", state_args(project, mesh_env)) if project else None
        session.hello = hello.wait()
        if session.hello.get("protocol") == PROTOCOL_VERSION:
            session.prefetched = _state_or_error(state)
            return session
    except T.SETUP_ERRORS:
        raise  # the node itself (met by the keeper's connect): the careful path would meet it again
    except OrchError:
        if not fallback:
            if session is not None:
                session.channel.close()
            raise
    if session is not None:
        session.channel.close()
    session = T.AgentSession.open(conn, bundle)
    session.prefetched = None
    return session


def state_args(project: str | None, mesh_env: str = "") -> dict:
    """`state` of a project; with mesh_env, the node's part of that environment's mesh too."""
    return StateRequest(project=project, mesh=mesh_env).to_dict()


def _state_or_error(stream: Any) -> Any:
    """The prefetched state, or the AgentError it raised (reported by observe_nodes)."""
    if stream is None:
        return None
    try:
        return stream.wait()
    except T.AgentError as err:
        return err


Connector = Callable[..., dict]


def node_connection(target: NodeSpec, options: Any, persist: float) -> Any:
    """A node's connection for one command: with ssh.persist (persist > 0) the keeper's
    (kept.KeptConnection: the SSH connection held between commands, agents started ahead),
    else a direct one (transport.connect)."""
    return KeptConnection(target, options, persist, socket_path()) if persist > 0 else T.connect(target, options)


def ssh_connect(environment: Any, progress: Progress, project: str | None = None) -> dict[str, SSHNode]:
    """Connect to every node and start its agent; all or nothing (NodesUnreachable).

    Each node goes through connect -> agent -> hello (+ `state` of `project`, pipelined)
    on its own, in parallel, so no node waits for another's handshake. Nothing is
    changed on any node until every node got this far.
    """

    from orchestrator.io.agent_bundle import current_bundle

    targets = list(environment.nodes)
    options = T.options_from_env(environment)
    bundle = current_bundle()
    mesh_env = environment.name if getattr(environment, "mesh_enabled", False) else ""

    persist = persist_seconds(options)

    def one(target: NodeSpec) -> SSHNode:
        conn = node_connection(target, options, persist)
        try:
            session = open_agent(conn, bundle, project=project, mesh_env=mesh_env)
        except BaseException:
            conn.close()
            raise
        progress.event("session", node=target.name, pid=session.pid, uploaded=session.uploaded,
                       kept=persist > 0, warm=bool(getattr(conn, "warm", 0)))
        return SSHNode(conn, bundle, session, progress, session.prefetched)

    nodes, errors = T.parallel(targets, one)
    if errors:
        close_nodes(nodes)
        failures = {name: _as_transport(name, err) for name, err in errors.items()}
        connected = not any(isinstance(e, T.SETUP_ERRORS) for e in failures.values())
        raise T.NodesUnreachable(failures, len(targets), action="start the agent on" if connected else "connect to")
    return {t.name: nodes[t.name] for t in targets}


def _as_transport(name: str, err: BaseException) -> T.TransportError:
    if isinstance(err, T.TransportError):
        return err
    if isinstance(err, OrchError):
        return T.TransportError(err.render(), node=name)
    return T.TransportError(f"{name}: {type(err).__name__}: {err}", node=name)


CLOSE_WAIT = 10.0  # seconds close_nodes waits for the goodbyes; then the process's exit closes the sockets


def close_nodes(nodes: Mapping[str, Any], wait: float = CLOSE_WAIT) -> None:
    """Close every node's sessions and connection, in parallel, for at most `wait` s.

    Daemon threads, not a pool: a goodbye stuck on a wedged connection must not keep the
    command from ending (a pool's workers are joined at exit). What is left open closes
    with the process; the agents see end of input, and the deploy lock goes with them."""
    if not nodes:
        return

    def close(node: Any) -> None:
        try:
            node.close()
        except Exception:
            pass  # a node that went away is closed enough

    threads = [threading.Thread(target=close, args=(n,), daemon=True, name=f"orch-close-{name}")
               for name, n in nodes.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + wait
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def observe_nodes(nodes: Mapping[str, Any], project: str, fresh: bool = False,
                  ingress: dict | None = None, env: str = "", owners: dict | None = None,
                  taken: dict | None = None, meshes: dict | None = None) -> dict[str, list[Observed]]:
    """Every node's containers of `project` in environment `env`, in parallel; a node whose
    Docker Engine is unusable fails the whole command (naming each such node) before
    anything is done.

    Uses the state a node's connector read along with hello, once, unless `fresh`.
    `ingress`, if given, is filled with each node's ingress frontends of the project;
    `owners` with each node's {env: [objects]} of the project (agent.owner), `taken` with
    the host ports other projects hold on each node (agent.owner.ports_elsewhere). Containers
    and frontends of another environment are left out: they are not this one's."""

    def state(n: Any) -> StateResult:
        pre = getattr(n, "prefetched_state", None)
        n.prefetched_state = None
        if pre is not None and not fresh:
            if isinstance(pre, BaseException):
                raise pre
            return StateResult.from_dict(pre)
        return StateResult.from_dict(n.call("state", state_args(project, env if meshes is not None else "")))

    results, errors = T.parallel(list(nodes.values()), state)
    if errors:
        failures = {}
        for name, err in errors.items():
            if isinstance(err, T.AgentError) and err.kind == "engine":
                failures[name] = T.NodeRequirementError(
                    f"{name}: Docker Engine is not usable: {err.message.split(': ', 1)[-1]}", node=name,
                    fix="install Docker Engine on the node (Debian: apt-get install docker.io), start it, and "
                        "make it reachable for the SSH user (DOCKER_HOST or the docker group).")
            else:
                failures[name] = _as_transport(name, err)
        raise T.NodesUnreachable(failures, len(nodes), action="read the state of")
    if owners is not None:
        owners.clear()
        owners.update({node: dict(res.owners or {}) for node, res in results.items()})
    if meshes is not None:
        meshes.clear()
        meshes.update({node: res.mesh or {"env": env} for node, res in results.items()})
    if taken is not None:
        taken.clear()
        taken.update({node: list(res.ports_elsewhere or []) for node, res in results.items()})
    mine = {node: of_env(res.to_dict(), env) for node, res in results.items()}
    if ingress is not None:
        ingress.clear()
        ingress.update({node: dict(res.get("ingress") or {}) for node, res in mine.items()})
    return observe(mine)


def observed_from(results: Mapping[str, StateResult], env: str) -> dict[str, list[Observed]]:
    """observe_nodes' answer from `state` results already read (the deploy's last check)."""
    return observe({node: of_env(res.to_dict(), env) for node, res in results.items()})


@contextmanager
def env_sessions(environment: Any, *, require_engine: bool = True) -> Iterator[tuple[dict, dict]]:
    """(connections, agent sessions) to every node of the environment, all or nothing; closed after.
    For the commands that call a few operations on every node (verify, history, lock); a deploy
    uses ssh_connect's SSHNode pool."""
    from orchestrator.io.agent_bundle import current_bundle

    targets = list(environment.nodes)
    options = T.options_from_env(environment)
    persist = persist_seconds(options)
    bundle = current_bundle()
    if persist > 0:  # the keeper's connections; the sessions' connect errors say which node
        conns = {t.name: node_connection(t, options, persist) for t in targets}
        opener = lambda conn: open_agent(conn, bundle)  # noqa: E731
    else:
        conns, opener = T.connect_all(targets, options), None
    try:
        sessions = T.open_sessions(conns, bundle, require_engine=require_engine, opener=opener)
        try:
            yield conns, sessions
        finally:
            for s in sessions.values():
                s.close()
    finally:
        T.close_all(conns)

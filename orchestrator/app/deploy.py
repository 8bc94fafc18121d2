"""`orch up`, `plan`, `down`, `ps`, `logs`, `exec`: the effectful side. Planning is pure
(orchestrator.core.specs, orchestrator.core.plan); this module connects, observes and applies.

A `Deployment` is one `orch up`, in clearly separated steps:

    prepare()   load nothing new: validate the project for the environment and compile
                every service's spec (InputError here, before any connection).
                Pinned image references (digests from the build / resolve step) come
                in through DeployOptions.images: they are part of the config hash.
    connect()   one SSH connection and one agent session per node, all or nothing
                (an unreachable node fails before anything is touched)
                -> hooks["connected"]        (the deploy lock goes here; observe()
                                              then reads the state again, under it)
    observe()   every node's `state`, in parallel, one call each
    make_plan() place (stable: existing replicas stay), build per-node specs, plan
                -> hooks["before_apply"]     (last checks before anything changes)
    apply()     wave by wave; in a wave every (service, node) `apply` runs in parallel;
                a service is ready for its dependents when it reached the strongest
                depends_on condition any of them asks (agent `wait`)
    cleanup()   remove moved / scaled-down replicas and, if asked, orphans
                -> hooks["after_apply"]      (the release record goes here: the hook
                                              sees .plan, .units and .nodes; Unit.spec
                                              has a "release" field, not hashed)

The connections are reused by every step and closed at the end. A no-op `up` makes
exactly one `state` call per node and no `apply` call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from orchestrator.io import transport as T
from orchestrator.errors import DeployError, InputError, OrchError, Problem
from orchestrator.core.plan import CREATE, RECREATE, REMOVE, Observed, Plan, existing_slots, make_plan, observe
from orchestrator.app.progress import DONE, FAILED, RUNNING, SKIPPED, Progress
from orchestrator.core.shared_nodes import of_env, refuse_other_envs, refuse_taken_ports

JSON_VERSION = 1
LOG_LINES = 20
_sleep = time.sleep  # update_config delay and monitor waits (unit tests replace it)


@dataclass
class DeployOptions:
    services: list[str] = field(default_factory=list)  # only these (and their dependencies)
    dry_run: bool = False
    remove_orphans: bool = False
    images: dict[str, str] = field(default_factory=dict)  # service -> pinned reference (build step)
    min_running: float = 1.0  # seconds a container without healthcheck must stay up
    completion_timeout: float = 600.0  # for one-shot services a dependent waits for
    # Drop the previous release's kept containers at the end of run(). The release
    # pipeline says False and calls Deployment.commit() once the ledger has it live.
    commit: bool = True


# --------------------------------------------------------------------------- results


@dataclass
class ContainerRow:
    service: str
    replica: int
    node: str
    name: str
    id: str
    state: str
    health: str
    exit_code: int
    image: str
    image_id: str
    ports: list[str]  # "10.250.0.11:8080->80/tcp"
    started_at: str
    release: str = ""

    @classmethod
    def from_observed(cls, c: Observed, host: str) -> "ContainerRow":
        ports = []
        for p in c.ports:
            if p.get("published"):
                ip = p.get("host_ip") or ""
                shown = host if ip in ("", "0.0.0.0", "::") else ip
                ports.append(f"{shown}:{p['published']}->{p['target']}/{p.get('protocol', 'tcp')}")
        return cls(service=c.service, replica=c.replica, node=c.node, name=c.name, id=c.id, state=c.state,
                   health=c.health, exit_code=c.exit_code, image=c.image, image_id=c.image_id,
                   ports=sorted(set(ports)), started_at=c.started_at, release=c.release)

    def uptime_s(self, now: float | None = None) -> float | None:
        if self.state != "running" or not self.started_at:
            return None
        started = _parse_time(self.started_at)
        if started is None:
            return None
        return max(0.0, (now if now is not None else time.time()) - started)

    @property
    def digest(self) -> str:
        """sha256:... of a pinned reference (what orch deploys), else ""."""
        return self.image.rsplit("@", 1)[1] if "@" in self.image else ""

    def state_text(self) -> str:
        return f"exited ({self.exit_code})" if self.state == "exited" else self.state

    def image_text(self) -> str:
        """For the table: a pinned reference with its digest cut to 12 hex (--json has it all)."""
        if "@sha256:" in self.image:
            repo, digest = self.image.rsplit("@sha256:", 1)
            return f"{repo}@sha256:{digest[:12]}"
        short = self.image_id.split(":", 1)[-1][:12] if self.image_id else ""
        return f"{self.image} ({short})" if short and "@" not in self.image else self.image

    def uptime_text(self, now: float | None = None) -> str:
        up = self.uptime_s(now)
        return "-" if up is None else _human(up)

    def to_json(self) -> dict:
        return {"service": self.service, "replica": self.replica, "node": self.node, "name": self.name,
                "id": self.id, "state": self.state, "health": self.health, "exit_code": self.exit_code,
                "image": self.image, "digest": self.digest, "image_id": self.image_id, "ports": list(self.ports),
                "started_at": self.started_at, "uptime_s": _round(self.uptime_s()), "release": self.release}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _human(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _parse_time(text: str) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    t = text.rstrip("Z")
    if "." in t:  # Docker gives nanoseconds
        head, frac = t.split(".", 1)
        t = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(t).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def container_rows(observed: Mapping[str, Iterable[Observed]], hosts: Mapping[str, str]) -> list[ContainerRow]:
    rows = [ContainerRow.from_observed(c, hosts.get(node, node)) for node, cs in observed.items() for c in cs
            if not c.retired]  # kept for a rollback: not part of what runs
    order = {n: i for i, n in enumerate(hosts)}
    return sorted(rows, key=lambda r: (r.service, r.replica, order.get(r.node, 99), r.name))


def published_addresses(rows: Iterable[ContainerRow]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        for p in r.ports:
            out.setdefault(r.service, set()).add(p.split("->", 1)[0])
    return {k: sorted(v) for k, v in sorted(out.items())}


@dataclass
class DeployResult:
    project: str
    environment: str
    status: str  # ok | planned (dry run)
    plan: Plan
    changed: list[str]
    containers: list[ContainerRow]
    addresses: dict[str, list[str]]
    duration_s: float
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    degraded: list[str] = field(default_factory=list)  # optional (required: false) services that failed

    def to_json(self) -> dict:
        return {
            "version": JSON_VERSION,
            "status": self.status,
            "command": "up",
            "environment": self.environment,
            "project": self.project,
            "noop": self.plan.is_noop,
            "dry_run": self.dry_run,
            "changed": list(self.changed),
            "containers": [r.to_json() for r in self.containers],
            "addresses": self.addresses,
            "duration_s": round(self.duration_s, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "plan": self.plan.to_json(),
            "warnings": list(self.warnings),
            "degraded": list(self.degraded),
        }


def failure_json(err: OrchError, command: str, project: str | None, environment: str | None,
                 duration: float, plan: Plan | None = None) -> dict:
    out = {"version": JSON_VERSION, "status": "failed", "command": command, "environment": environment,
           "project": project, "changed": [], "containers": [], "addresses": {}, "duration_s": round(duration, 3),
           "error": err.to_json()}
    if plan is not None:
        out["plan"] = plan.to_json()
    return out


# --------------------------------------------------------------------------- nodes


class SSHNode:
    """A node for the length of one command: its SSH connection and a pool of agent
    sessions on it (the agent serves one request at a time per session, so parallel
    applies on one node use one session each, opened on demand)."""

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
        self._closed = False
        self._warming: list[threading.Thread] = []

    def prewarm(self, count: int, project: str | None = None) -> None:
        """Open sessions in the background until `count` exist (parallel applies coming
        later, e.g. two services of one wave on this node, then find them ready)."""

        def open_one() -> None:
            try:
                s = open_agent(self.conn, self.bundle, fallback=False, project=project)
            except Exception:
                return  # session() opens one itself if it needs it
            with self._lock:
                if self._closed:
                    s.channel.close()
                    return
                self._all.append(s)
                self._free.append(s)
            if self.progress is not None:
                self.progress.event("session", node=self.name, pid=s.pid)

        with self._lock:
            self._warming = [t for t in self._warming if t.is_alive()]
            missing = count - len(self._all) - len(self._warming)
        for _ in range(max(0, missing)):
            t = threading.Thread(target=open_one, daemon=True, name=f"orch-warm-{self.name}")
            self._warming.append(t)
            t.start()

    @contextmanager
    def session(self) -> Iterator[Any]:
        with self._lock:
            s = self._free.pop() if self._free else None
        if s is None:
            s = open_agent(self.conn, self.bundle, fallback=False)
            with self._lock:
                self._all.append(s)
            if self.progress is not None:
                self.progress.event("session", node=self.name, pid=s.pid)
        try:
            yield s
        finally:
            if not s.channel.closed and not s.channel.exit_status_ready():
                with self._lock:
                    self._free.append(s)

    def lock_session(self) -> Any:
        """The session that holds the deploy lock: the first one, which lives as long as
        the command (no extra agent start). Its agent ends when the controller goes away,
        after putting back the batch it was working on; lock_acquire waits for the other
        sessions' work (agent.lock.working). Not to be closed by the caller."""
        return self._all[0]

    def call(self, op: str, args: dict | None = None, on_event: Callable[[dict], None] | None = None,
             timeout: float | None = None) -> dict:
        with self.session() as s:
            return s.call(op, args, on_event, timeout)

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


def open_agent(conn: Any, bundle: Any, fallback: bool = True, project: str | None = None) -> Any:
    """An agent session, fast: run the bundle straight away and say hello (and, with
    `project`, ask for its `state` in the same breath: session.prefetched).

    Only when that fails (bundle missing, python3 missing or too old) does it take
    transport.AgentSession.open's careful path: check python3, upload, prune, which
    also produces the readable error with the fix.
    """
    from agent.protocol import PROTOCOL_VERSION

    remote = T.bundle_path(bundle)
    session = None
    try:
        channel = conn.open_exec(T.agent_command(remote, python=conn.target.python))
        session = T.AgentSession(conn, channel, remote, False)
        hello = session.stream("hello", {"protocol": PROTOCOL_VERSION})
        state = session.stream("state", {"project": project}) if project else None
        session.hello = hello.wait()
        if session.hello.get("protocol") == PROTOCOL_VERSION:
            session.prefetched = _state_or_error(state)
            return session
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


def _state_or_error(stream: Any) -> Any:
    """The prefetched state, or the AgentError it raised (reported by observe_nodes)."""
    if stream is None:
        return None
    try:
        return stream.wait()
    except T.AgentError as err:
        return err


Connector = Callable[..., dict]


def ssh_connect(environment: Any, progress: Progress, project: str | None = None) -> dict[str, SSHNode]:
    """Connect to every node and start its agent; all or nothing (NodesUnreachable).

    Each node goes through connect -> agent -> hello (+ `state` of `project`, pipelined)
    on its own, in parallel, so no node waits for another's handshake. Nothing is
    changed on any node until every node got this far.
    """

    from orchestrator.io.agent_bundle import current_bundle

    targets = [T.target_from_node(n) for n in environment.nodes]
    options = T.options_from_env(environment)
    bundle = current_bundle()

    def one(target: T.NodeTarget) -> SSHNode:
        conn = T.connect(target, options)
        try:
            session = open_agent(conn, bundle, project=project)
        except BaseException:
            conn.close()
            raise
        progress.event("session", node=target.name, pid=session.pid, uploaded=session.uploaded)
        return SSHNode(conn, bundle, session, progress, session.prefetched)

    nodes, errors = T.parallel(targets, one)
    if errors:
        close_nodes(nodes)
        failures = {name: _as_transport(name, err) for name, err in errors.items()}
        connected = not any(isinstance(e, (T.HostUnreachable, T.AuthenticationFailed, T.UnknownHostKey,
                                           T.HostKeyChanged)) for e in failures.values())
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
                  taken: dict | None = None) -> dict[str, list[Observed]]:
    """Every node's containers of `project` in environment `env`, in parallel; a node whose
    Docker Engine is unusable fails the whole command (naming each such node) before
    anything is done.

    Uses the state a node's connector read along with hello, once, unless `fresh`.
    `ingress`, if given, is filled with each node's ingress frontends of the project;
    `owners` with each node's {env: [objects]} of the project (agent.owner), `taken` with
    the host ports other projects hold on each node (agent.owner.ports_elsewhere). Containers
    and frontends of another environment are left out: they are not this one's."""

    def state(n: Any) -> dict:
        pre = getattr(n, "prefetched_state", None)
        n.prefetched_state = None
        if pre is not None and not fresh:
            if isinstance(pre, BaseException):
                raise pre
            return pre
        return n.call("state", {"project": project})

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
        owners.update({node: dict(res.get("owners") or {}) for node, res in results.items()})
    if taken is not None:
        taken.clear()
        taken.update({node: list(res.get("ports_elsewhere") or []) for node, res in results.items()})
    results = {node: of_env(res, env) for node, res in results.items()}
    if ingress is not None:
        ingress.clear()
        ingress.update({node: dict(res.get("ingress") or {}) for node, res in results.items()})
    return observe(results)


# --------------------------------------------------------------------------- up


@dataclass
class StepFailure:
    step: Any
    error: OrchError


class Deployment:
    """One `orch up` (or `orch plan`): see the module docstring for the steps."""

    def __init__(self, workspace: Any, options: DeployOptions | None = None, progress: Progress | None = None,
                 connector: Connector | None = None):
        if workspace.environment is None:
            raise InputError(Problem("no environment given", fix="pass --env ENV"))
        self.workspace = workspace
        self.project = workspace.project
        self.environment = workspace.environment
        self.options = options or DeployOptions()
        self.progress = progress or Progress()
        self.connector = connector or ssh_connect
        self.hooks: dict[str, list[Callable[["Deployment"], None]]] = {
            "connected": [], "before_apply": [], "after_apply": []}
        self.nodes: dict[str, Any] = {}
        self.blueprint: Any = None
        self.observed: dict[str, list[Observed]] = {}
        self.units: dict = {}
        self.taken: dict = {}  # node -> host ports other projects hold there (observe)
        self.plan: Plan | None = None
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []
        self.degraded: list[str] = []
        self.auths: dict[str, dict] = {}  # service -> pull credentials of its image's own registry
        self.ingress: dict[str, dict] = {}  # node -> the project's ingress frontends there (state)
        self.journal: Any = None  # orchestrator.core.rollout.Journal of what apply() replaced
        self._journal_lock = threading.Lock()
        self._watch: list[_Watched] = []  # replaced replicas inside their monitor window
        self._t0 = time.monotonic()

    # -- steps --------------------------------------------------------------------------

    def _timed(self, name: str, t0: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - t0

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            self.progress.warning(text)

    def prepare(self) -> None:
        from orchestrator.core.specs import compile_blueprint

        t0 = time.monotonic()
        for p in getattr(self.project, "warnings", []):
            self.warn(p.render())
        self.blueprint = compile_blueprint(self.project, self.environment, self.options.services,
                                           self.options.images)
        for w in self.blueprint.warnings:
            self.warn(w)
        self.auths = self._registry_auths()
        self._timed("prepare", t0)

    def _registry_auths(self) -> dict[str, dict]:
        """Per service, the credentials of the registry its image is pulled from (`registry:`
        or a `registries:` entry), if any: a node's engine sends a pull's credentials to the
        image's registry, whichever registry they belong to."""
        from orchestrator.io.images import pull_auth

        cache: dict[str, Any] = {}
        out = {}
        for name, bp in self.blueprint.services.items():
            auth = pull_auth(self.environment, bp.image, cache=cache)
            if auth:
                out[name] = auth
        return out

    def connect(self) -> None:
        t0 = time.monotonic()
        names = [n.name for n in self.environment.nodes]
        self.progress.phase("connect", f"connecting to {len(names)} node(s): {', '.join(names)}", nodes=names)
        self.nodes = self.connector(self.environment, self.progress, self.project.name)
        self._timed("connect", t0)
        self._run_hooks("connected")

    def observe(self) -> None:
        t0 = time.monotonic()
        self.progress.phase("observe", f"reading the state of {len(self.nodes)} node(s)")
        # After a "connected" hook (the deploy lock) the state read with hello may be stale.
        owners: dict = {}
        self.observed = observe_nodes(self.nodes, self.project.name, fresh=bool(self.hooks["connected"]),
                                      ingress=self.ingress, env=self.environment.name, owners=owners,
                                      taken=self.taken)
        refuse_other_envs(self.environment, self.project.name, owners)
        self._timed("observe", t0)

    def make_plan(self) -> Plan:
        from orchestrator.core.specs import node_addresses, node_infos

        t0 = time.monotonic()
        order = [n.name for n in self.environment.nodes]
        slots = self.blueprint.place(node_infos(self.environment), existing_slots(self.observed))
        import socket

        self.units, warnings = self.blueprint.units(slots, node_addresses(self.environment, socket.gethostbyname),
                                                    order)
        for w in warnings:
            self.warn(w)
        refuse_taken_ports(self.project, self.blueprint, self.units, self.taken)
        self.plan = make_plan(self.project.name, self.environment.name, self.blueprint.waves, self.units,
                              self.observed, self.blueprint.project_services, self.options.remove_orphans, order,
                              ingress=self.ingress)
        for w in self.plan.warnings:
            self.warn(w)
        self.progress.show_plan(self.plan)
        self._timed("plan", t0)
        return self.plan

    def apply(self) -> None:
        """Wave by wave; in a wave every service rolls on its own, in parallel: its changed
        replicas in batches across its nodes (orchestrator.core.rollout), each batch on a node
        one agent `rollout`. Then the monitor window. A failure the service's update
        policy does not tolerate ends in _failed (the whole release put back, or paused)."""
        from orchestrator.core.rollout import Journal

        t0 = time.monotonic()
        plan = self.plan
        assert plan is not None
        self._run_hooks("before_apply")
        self.journal = Journal()
        for node, count in _parallel_applies(plan).items():
            prewarm = getattr(self.nodes.get(node), "prewarm", None)
            if prewarm is not None and count > 1:
                prewarm(count, self.project.name)
        try:
            for i, wave in enumerate(plan.waves, 1):
                services = [s for s in wave if any(st.needs_apply for st in plan.wave_steps(i) if st.service == s)]
                if not services:
                    continue
                self.progress.phase("apply", f"wave {i}/{len(plan.waves)}: {', '.join(wave)}", wave=i)
                pool = ThreadPoolExecutor(max_workers=len(services), thread_name_prefix="orch-roll")
                try:
                    futures = {name: pool.submit(self._roll_service, i, name,
                                                 [st for st in plan.wave_steps(i) if st.service == name])
                               for name in services}
                    failures = {name: f.result() for name, f in futures.items()}
                except BaseException:
                    # Ctrl-C (or a bug): close the sessions so each agent sees EOF, cancels its
                    # rollout and puts its batch back. Re-running converges.
                    self.close()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                pool.shutdown(wait=True)
                fatal: list[StepFailure] = []
                for name, fails in failures.items():
                    if not fails:
                        continue
                    if self._optional(name):
                        self.degraded.append(name)
                        self.warn(f"{name} failed on {fails[0].step.node}, but every dependent marks it "
                                  f"required: false; going on. {fails[0].error.message.splitlines()[0]}")
                        continue
                    fatal.extend(fails)
                if fatal:
                    for st in plan.steps:
                        if st.wave > i and st.needs_apply:
                            self.progress.step(st.wave, st.service, st.node, SKIPPED)
                    later = [s for w in plan.waves[i:] for s in w]
                    raise self._failed(fatal, later)
            self._retire_moved()
            self._monitor()
        finally:
            self._timed("apply", t0)

    def _policy(self, service: str) -> Any:
        from orchestrator.core.rollout import UpdatePolicy

        bp = self.blueprint.services.get(service) if self.blueprint is not None else None
        return getattr(bp, "policy", None) or UpdatePolicy()

    def _ingress_args(self, service: str) -> dict | None:
        bp = self.blueprint.services.get(service) if self.blueprint is not None else None
        ingress = getattr(bp, "ingress", None)
        return ingress.agent_args() if ingress is not None else None

    def _rollback_ingress_args(self, node: str, service: str) -> dict | None:
        """The ingress a rollback puts back on node: the frontend the service had there
        before this release (port and health check, as observed), else this release's
        (restore drops that one when the kept containers publish the port themselves)."""
        now = self._ingress_args(service)
        before = (self.ingress.get(node) or {}).get(service)
        if not before or not before.get("port"):
            return now
        args = {"port": dict(before["port"]), "health": dict(before.get("health") or {})}
        if now is not None:
            args["drain_timeout"] = now["drain_timeout"]
        return args

    def _roll_service(self, wave: int, service: str, steps: list[Any]) -> list[StepFailure]:
        """One service's rolling update; its failures ([] when it went through, or when the
        policy tolerated them)."""
        from orchestrator.core.rollout import Slot, batches, by_node, too_many_failures

        policy = self._policy(service)
        by_step = {st.node: st for st in steps}
        slots = [Slot(st.node, a.replica, a.kind) for st in steps for a in st.changes if a.kind in (CREATE, RECREATE)]
        plan_batches = batches(slots, policy.parallelism)
        failures: list[StepFailure] = []
        failed = replaced = 0
        exceeded = False
        for k, batch in enumerate(plan_batches, 1):
            if k > 1 and policy.delay > 0:
                self.progress.event("delay", service=service, seconds=policy.delay)
                _sleep(policy.delay)
            groups = by_node(batch)
            self.progress.event("batch", service=service, batch=k, batches=len(plan_batches), wave=wave,
                                replicas=[{"node": s.node, "replica": s.replica} for s in batch])
            results, errors = T.parallel(list(groups.items()), lambda item: self._rollout(
                wave, by_step[item[0]], item[1], k, policy), key=lambda item: item[0])
            for node, res in sorted(results.items()):
                self._journal_add(service, node, wave, res.get("replaced") or [], policy)
            replaced += len(batch)
            for node, err in sorted(errors.items()):
                failures.append(StepFailure(by_step[node], _as_orch_error(node, err)))
                failed += len(groups[node])
            if errors and too_many_failures(failed, replaced, policy.max_failure_ratio):
                exceeded = True
                if policy.failure_action != "continue":
                    return failures
        if failures and not exceeded:
            self.warn(f"{service}: {failed} of {replaced} replica(s) failed to update and stayed on the previous "
                      f"release (within max_failure_ratio {policy.max_failure_ratio:g}): "
                      f"{failures[0].error.message.splitlines()[0]}")
            failures = []
        # Nodes where nothing was replaced but a kept container must be waited for, or the
        # ingress is not what the containers need.
        for st in steps:
            if not st.changes and (st.wait_only or st.ingress):
                try:
                    self._rollout(wave, st, [], 0, policy)
                except BaseException as err:  # noqa: BLE001 - reported like a failed batch
                    failures.append(StepFailure(st, _as_orch_error(st.node, err)))
        if failures:
            return failures
        # Replicas no longer wanted on a node (scaled down, moved): stopped and kept.
        for st in steps:
            gone = [a.replica for a in st.actions if a.kind == REMOVE]
            if gone:
                try:
                    self._retire(wave, service, st.node, gone)
                except BaseException as err:  # noqa: BLE001
                    failures.append(StepFailure(st, _as_orch_error(st.node, err)))
        return failures

    def _rollout(self, wave: int, step: Any, replicas: list[int], batch: int, policy: Any) -> dict:
        unit = step.unit
        t0 = time.monotonic()
        what = ", ".join(f"{a.kind} {a.replica}" for a in step.changes if a.replica in replicas)
        detail = (f"batch {batch}: {what}" if batch else "") or ("waiting" if step.wait_only else "ingress")
        self.progress.step(step.wave, step.service, step.node, RUNNING, detail=detail)
        args: dict[str, Any] = {"spec": unit.spec, "replicas": list(replicas), "order": policy.order,
                                "wait": unit.wait, "min_running": self.options.min_running,
                                "timeout": self.options.completion_timeout, "min_healthy": policy.min_healthy_time,
                                "batch": batch, "ingress": self._ingress_args(step.service)}
        if policy.healthy_deadline is not None:
            args["deadline"] = policy.healthy_deadline
        auth = self.auths.get(step.service)
        if auth:
            args["auth"] = auth
        try:
            result = self.nodes[step.node].call(
                "rollout", args, on_event=lambda ev: self.progress.agent_event(step.wave, step.service, step.node, ev))
        except BaseException as err:
            if isinstance(err, OrchError):
                self.progress.step(step.wave, step.service, step.node, FAILED,
                                   detail=_first_line(err).removeprefix(f"{step.node}: "),
                                   seconds=time.monotonic() - t0)
            raise
        actions = [f"{c['action']} {c['replica']}" for c in result.get("containers", []) if c["action"] != "unchanged"]
        self.progress.step(step.wave, step.service, step.node, DONE, detail=", ".join(actions) or "ready",
                           seconds=time.monotonic() - t0)
        return result

    def _journal_add(self, service: str, node: str, wave: int, records: list[dict], policy: Any) -> None:
        with self._journal_lock:
            self.journal.add(service, node, wave, records)
            now = time.monotonic()
            for rec in records:
                if rec.get("old") is not None and rec.get("new") and policy.monitor > 0:
                    self._watch.append(_Watched(node, service, rec["replica"], rec["new"]["id"],
                                                now + policy.monitor, policy.monitor))

    def _retire(self, wave: int, service: str, node: str, replicas: list[int] | None) -> None:
        self.progress.step(wave, service, node, "removing")
        args: dict[str, Any] = {"project": self.project.name, "service": service, "env": self.environment.name,
                                "ingress": self._ingress_args(service)}
        if replicas is not None:
            args["replicas"] = replicas
        res = self.nodes[node].call("retire", args)
        with self._journal_lock:
            self.journal.add(service, node, wave, [dict(r, new=None) for r in res.get("retired", [])])
        self.progress.step(wave, service, node, "removed")

    def _retire_moved(self) -> None:
        """Services the plan takes off a node entirely: stopped and kept, like replaced ones."""
        plan = self.plan
        assert plan is not None
        moved = [r for r in plan.removals if not r.orphan]
        if not moved:
            return
        wave = len(plan.waves) + 1
        self.progress.phase("cleanup", f"stopping {sum(len(r.actions) for r in moved)} container(s) no longer "
                            "placed there")
        _, errors = T.parallel(moved, lambda r: self._retire(wave, r.service, r.node, r.replicas),
                               key=lambda r: f"{r.service}@{r.node}")
        if errors:
            failures = []
            for key, err in sorted(errors.items()):
                service, node = key.split("@", 1)
                failures.append(StepFailure(_Where(service, node), _as_orch_error(node, err)))
            raise self._failed(failures, [])

    def _monitor(self) -> None:
        """Swarm's monitor window: a replaced replica that fails within `monitor` of its
        replacement fails the update. Waits for the last window, then reads each node once."""
        if not self._watch:
            return
        until = max(w.until for w in self._watch)
        left = until - time.monotonic()
        if left > 0:
            self.progress.phase("monitor", f"watching {len(self._watch)} new container(s) for {left:.0f}s "
                                "(update_config.monitor)")
            _sleep(left)
        nodes = sorted({w.node for w in self._watch})
        states, errors = T.parallel(nodes, lambda n: self.nodes[n].call(
            "state", {"project": self.project.name}), key=lambda n: n)
        failures: list[StepFailure] = []
        for node, err in sorted(errors.items()):
            failures.append(StepFailure(_Where("", node), _as_orch_error(node, err)))
        for node, res in sorted(states.items()):
            by_id = {c.get("id"): c for c in res.get("containers") or []}
            for w in self._watch:
                if w.node != node:
                    continue
                service, replica, window = w.service, w.replica, w.window
                c = by_id.get(w.container_id)
                bad = ""
                if c is None:
                    bad = "was removed"
                elif c.get("state") != "running":
                    bad = f"is {c.get('state')} (exit code {c.get('exit_code')})"
                elif c.get("health") == "unhealthy":
                    bad = "became unhealthy"
                elif int(c.get("restart_count") or 0) > 0:
                    bad = f"restarted {c.get('restart_count')} time(s)"
                if bad:
                    failures.append(StepFailure(_Where(service, node), DeployError(
                        f"service {service} replica {replica} on {node} {bad} within {window:g}s of its "
                        "update (update_config.monitor)",
                        fix=f"see why in its logs (orch logs --env {self.environment.name} {service}); a re-run "
                        "deploys the same containers, so fix the cause first",
                        details={"service": service, "node": node, "replica": replica})))
        if failures:
            raise self._failed(failures, [])

    def _failed(self, failures: list[StepFailure], not_started: list[str]) -> DeployError:
        """The error for failures no policy tolerates, after the release was put back
        (failure_action rollback, orch's default) or left as it is (pause, continue)."""
        err = self._deploy_error(failures, not_started)
        # Several services failing at once: the safest of their actions (rollback first).
        actions = {self._policy(f.step.service).failure_action if f.step.service else "rollback" for f in failures}
        action = next(a for a in ("rollback", "pause", "continue") if a in actions)
        err.details["failure_action"] = action
        if action != "rollback":
            if self.journal:
                done = sorted({f"{e.service} on {e.node}" for e in self.journal.entries})
                err.message += (f"\nUpdate {'paused' if action == 'pause' else 'stopped'} (failure_action: {action}): "
                                f"{len(self.journal.entries)} replica(s) already run the new release "
                                f"({', '.join(done)}); re-run `orch up` to go on, or `orch rollback --to LIVE` (the live release's "
                                "id, see `orch history`) to put them back.")
            err.details["rolled_back"] = False
            return err
        restored, problems = self.rollback() if self.journal else ([], [])
        # A failed batch is put back by its node's agent before it answers.
        for f in failures:
            where = f"{f.step.service} on {f.step.node}"
            if isinstance(f.error, T.AgentError) and f.error.details.get("restored") and where not in restored:
                restored.append(f"{where} (the failed batch, put back by the node's agent)")
        err.details["rolled_back"] = not problems
        err.details["restored"] = restored
        if problems:
            err.details["rollback_errors"] = problems
            err.message += ("\nRolled back, except: " + "; ".join(problems) +
                            ". Re-run `orch up` (or `orch rollback`) once the node is back.")
        elif restored:
            err.message += ("\nRolled back: every replica this release replaced is back on the previous release's "
                            f"container ({', '.join(restored)}).")
        else:
            err.message += "\nNothing had been replaced yet: the previous release still runs everywhere."
        return err

    def rollback(self) -> tuple[list[str], list[str]]:
        """Put back everything this release replaced, latest wave first: (what, problems)."""
        restored: list[str] = []
        problems: list[str] = []
        groups = self.journal.undo_order()
        total = sum(len(es) for g in groups for _, _, es in g)
        self.progress.phase("rollback", f"rolling back {total} replica(s) of {', '.join(self.journal.services())}")
        for group in groups:
            def one(item: tuple[str, str, list[Any]]) -> None:
                service, node, entries = item
                self.progress.step(entries[0].wave, service, node, RUNNING, detail="rolling back")
                args = {"project": self.project.name, "service": service, "env": self.environment.name,
                        "ingress": self._rollback_ingress_args(node, service),
                        "replicas": [{"replica": e.replica, "was_running": e.was_running} for e in entries]}
                self.nodes[node].call("restore", args, on_event=lambda ev: self.progress.agent_event(
                    entries[0].wave, service, node, ev))
                self.progress.step(entries[0].wave, service, node, "rolled back")

            _, errors = T.parallel(group, one, key=lambda item: f"{item[0]} on {item[1]}")
            for name in sorted(f"{s} on {n}" for s, n, _ in group):
                if name in errors:
                    problems.append(f"{name}: {_first_line(_as_orch_error(name.rsplit(' ', 1)[-1], errors[name]))}")
                else:
                    restored.append(name)
        return restored, problems

    def has_kept(self) -> bool:
        """Whether the last observed state has containers kept for a rollback."""
        return any(c.retired for cs in self.observed.values() for c in cs)

    def commit(self) -> None:
        """The release is live: drop the containers kept for its rollback (best effort; the
        next deploy drops whatever is left)."""
        _, errors = T.parallel(list(self.nodes.items()), lambda item: item[1].call(
            "discard", {"project": self.project.name, "env": self.environment.name}), key=lambda item: item[0])
        for node, err in sorted(errors.items()):
            self.warn(f"{node}: could not remove the previous release's kept containers "
                      f"({getattr(err, 'message', err)}); the next deploy removes them")

    def _optional(self, service: str) -> bool:
        """A failed service blocks nothing when every dependent has `required: false` on it."""
        deps = [bp.dependencies[service] for bp in self.blueprint.services.values() if service in bp.dependencies]
        return bool(deps) and all(not d.required for d in deps)

    def _deploy_error(self, failures: list[StepFailure], not_started: list[str]) -> DeployError:
        first = failures[0]
        step, err = first.step, first.error
        details: dict[str, Any] = {"service": step.service, "node": step.node}
        where = f"deploy of {self.project.name} to {self.environment.name} failed on node {step.node}"
        fix = None
        if isinstance(err, T.AgentError):
            reason = err.message.split(": ", 1)[1] if err.message.startswith(f"{step.node}: ") else err.message
            text = f"{where}: {reason}"
            logs = err.details.get("logs") or []
            if logs:
                text += f"\nLast {len(logs)} log lines of {err.details.get('container', step.service)}:\n"
                text += "\n".join(f"  | {ln}" for ln in logs)
            details.update({k: err.details[k] for k in ("replica", "container", "exit_code", "health", "logs")
                            if k in err.details})
            details["reason"] = reason
            details["kind"] = err.kind
            fix = err.details.get("fix")
        else:
            text = f"{where} while applying {step.service}: {err.message}"
            details["reason"] = err.message
            details.update({k: v for k, v in (getattr(err, "details", None) or {}).items() if k == "replica"})
            fix = getattr(err, "fix", None) or "re-run `orch up`: applying again converges."
        for other in failures[1:]:
            text += f"\nAlso failed: {other.step.service} on {other.step.node}: {_first_line(other.error)}"
        if not_started:
            text += f"\nNot started: {', '.join(not_started)}."
        details["not_started"] = not_started
        return DeployError(text, fix=fix, details=details)

    def cleanup(self) -> None:
        """Orphans (with --remove-orphans): removed, they are not part of any release."""
        plan = self.plan
        assert plan is not None
        orphans = [r for r in plan.removals if r.orphan]
        if not orphans:
            return
        t0 = time.monotonic()
        self.progress.phase("cleanup", f"removing {sum(len(r.actions) for r in orphans)} orphan container(s)")
        wave = len(plan.waves) + 1

        def remove(r: Any) -> None:
            self.progress.step(wave, r.service, r.node, "removing")
            self.nodes[r.node].call("remove", {"project": self.project.name, "service": r.service,
                                               "env": self.environment.name})
            self.progress.step(wave, r.service, r.node, "removed")

        _, errors = T.parallel(orphans, remove, key=lambda r: f"{r.service}@{r.node}")
        self._timed("cleanup", t0)
        if errors:
            name, err = sorted(errors.items())[0]
            raise DeployError(f"removing {name} failed: {err}", fix="re-run `orch up`")

    def _run_hooks(self, name: str) -> None:
        for hook in self.hooks[name]:
            hook(self)

    def close(self) -> None:
        close_nodes(self.nodes)
        self.nodes = {}

    # -- the whole command -------------------------------------------------------------

    def run(self, close: bool = True) -> DeployResult:
        """The whole command. close=False leaves the connections open for the caller
        (orchestrator.app.pipeline records the release and verifies over them, then calls
        close()); an interrupted apply closes them anyway."""
        self._t0 = time.monotonic()
        self.prepare()
        try:
            self.connect()
            self.observe()
            plan = self.make_plan()
            if self.options.dry_run:
                return self._result("planned")
            if plan.is_noop and not any(s.needs_apply for s in plan.steps):
                self._run_hooks("after_apply")
                if self.options.commit and self.has_kept():
                    self.commit()  # left by an earlier deploy that stopped before it was live
                return self._result("ok")
            self.apply()
            self.cleanup()
            self._run_hooks("after_apply")
            if self.options.commit:
                self.commit()
            t0 = time.monotonic()
            self.observed = observe_nodes(self.nodes, self.project.name, fresh=True, env=self.environment.name)
            self._timed("observe", t0)
            return self._result("ok")
        finally:
            if close:
                self.close()

    def _result(self, status: str) -> DeployResult:
        assert self.plan is not None
        hosts = {n.name: n.host for n in self.environment.nodes}
        rows = container_rows(self.observed, hosts)
        addresses = published_addresses(rows)
        for name, bp in (self.blueprint.services.items() if self.blueprint is not None else ()):
            if getattr(bp, "ingress", None) is not None:  # served by each node's ingress
                nodes = sorted({r.node for r in rows if r.service == name and r.state == "running"},
                               key=lambda n: list(hosts).index(n) if n in hosts else 99)
                ip = bp.ingress.host_ip
                addresses[name] = sorted(set(addresses.get(name, [])) | {
                    f"{hosts.get(n, n) if ip in ('', '0.0.0.0') else ip}:{bp.ingress.published}" for n in nodes})
        return DeployResult(
            project=self.project.name, environment=self.environment.name, status=status, plan=self.plan,
            changed=[] if status == "planned" else self.plan.changed_services(), containers=rows,
            addresses=dict(sorted(addresses.items())), duration_s=time.monotonic() - self._t0, timings=dict(self.timings),
            warnings=list(self.warnings), dry_run=status == "planned", degraded=list(self.degraded),
        )


def _parallel_applies(plan: Plan) -> dict[str, int]:
    """Per node, the most `apply` calls any one wave makes there at once."""
    out: dict[str, int] = {}
    for i in range(1, len(plan.waves) + 1):
        per: dict[str, int] = {}
        for s in plan.wave_steps(i):
            if s.needs_apply:
                per[s.node] = per.get(s.node, 0) + 1
        for node, n in per.items():
            out[node] = max(out.get(node, 0), n)
    return out


@dataclass(frozen=True)
class _Watched:
    """A replaced replica's new container, watched until `until` (update_config.monitor)."""

    node: str
    service: str
    replica: int
    container_id: str
    until: float  # time.monotonic()
    window: float


@dataclass(frozen=True)
class _Where:
    """Where a failure happened when it is not one plan step (monitor, moved replicas)."""

    service: str
    node: str
    wave: int = 0


def _as_orch_error(node: str, err: BaseException) -> OrchError:
    if isinstance(err, OrchError):
        return err
    return DeployError(f"{node}: {type(err).__name__}: {err}", fix="re-run `orch up`: applying again converges.")


def _first_line(err: OrchError) -> str:
    text = err.message
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------- down, ps


@dataclass
class DownResult:
    project: str
    environment: str
    removed: list[dict]
    networks: dict[str, list[str]]
    volumes: dict[str, list[str]]
    duration_s: float

    def to_json(self) -> dict:
        return {"version": JSON_VERSION, "status": "ok", "command": "down", "environment": self.environment,
                "project": self.project, "removed": self.removed, "networks": self.networks,
                "volumes": self.volumes, "duration_s": round(self.duration_s, 3)}


def take_down(workspace: Any, remove_volumes: bool = False, progress: Progress | None = None,
              connector: Connector | None = None) -> DownResult:
    """Remove the project's containers wave by wave in reverse (dependents first), then
    its networks (and volumes with remove_volumes) on every node."""
    from orchestrator.core import graph as graphs

    progress = progress or Progress()
    project, environment = workspace.project, workspace.environment
    t0 = time.monotonic()
    waves = graphs.waves(graphs.build_graph(project))
    names = [n.name for n in environment.nodes]
    if connector is None:  # a given connector (the pipeline's, under the lock) is connected already
        progress.phase("connect", f"connecting to {len(names)} node(s): {', '.join(names)}", nodes=names)
    nodes = (connector or ssh_connect)(environment, progress, project.name)
    try:
        observed = observe_nodes(nodes, project.name, fresh=True, env=environment.name)
        present = {(c.service, node) for node, cs in observed.items() for c in cs}
        known = {s for w in waves for s in w}
        orphans = sorted({s for s, _ in present if s not in known})
        order = ([orphans] if orphans else []) + list(reversed(waves))
        removed: list[dict] = []
        for i, wave in enumerate(order, 1):
            work = [(s, n) for s in wave for n in names if (s, n) in present]
            if not work:
                continue
            progress.phase("down", f"removing {', '.join(wave)}", wave=i)

            def one(item: tuple[str, str], i: int = i) -> dict:
                service, node = item
                progress.step(i, service, node, "removing")
                t = time.monotonic()
                res = nodes[node].call("remove", {"project": project.name, "service": service,
                                                  "env": environment.name})
                progress.step(i, service, node, "removed", seconds=time.monotonic() - t)
                return res

            results, errors = T.parallel(work, one, key=lambda it: f"{it[0]}@{it[1]}")
            if errors:
                name, err = sorted(errors.items())[0]
                raise DeployError(f"orch down: removing {name} failed: {err}", fix="re-run `orch down`")
            for key, res in sorted(results.items()):
                node = key.split("@", 1)[1]
                removed += [dict(r, node=node) for r in res.get("removed", [])]
        finals, errors = T.parallel(list(nodes.values()), lambda n: n.call(
            "remove", {"project": project.name, "env": environment.name, "remove_volumes": remove_volumes}))
        if errors:
            name, err = sorted(errors.items())[0]
            raise DeployError(f"orch down: cleaning up {name} failed: {err}", fix="re-run `orch down`")
        for node, res in finals.items():
            removed += [dict(r, node=node) for r in res.get("removed", [])]
        return DownResult(project.name, environment.name, removed,
                          {n: r.get("networks", []) for n, r in finals.items() if r.get("networks")},
                          {n: r.get("volumes", []) for n, r in finals.items() if r.get("volumes")},
                          time.monotonic() - t0)
    finally:
        close_nodes(nodes)


def list_containers(workspace: Any, connector: Connector | None = None,
                    progress: Progress | None = None, ingress: list | None = None) -> list[ContainerRow]:
    """`orch ps`: one row per container of the project across the environment's nodes.

    `ingress`, if given, gets one dict per (node, service) behind a node's ingress: port,
    frontend status and each server's HAProxy status (agent ingress_status)."""
    environment = workspace.environment
    project = workspace.project.name
    nodes = (connector or ssh_connect)(environment, progress or Progress(), project)
    try:
        frontends: dict[str, dict] = {}
        observed = observe_nodes(nodes, project, ingress=frontends, env=environment.name)
        if ingress is not None:
            ingress.extend(ingress_rows(nodes, project, frontends, [n.name for n in environment.nodes]))
    finally:
        close_nodes(nodes)
    return container_rows(observed, {n.name: n.host for n in environment.nodes})


def ingress_rows(nodes: Mapping[str, Any], project: str, frontends: Mapping[str, Mapping[str, Any]],
                 order: list[str]) -> list[dict]:
    """The project's ingress on each node that has some, as HAProxy sees it now."""
    wanted = [n for n in order if frontends.get(n)]
    answers, errors = T.parallel(wanted, lambda n: nodes[n].call("ingress_status"), key=lambda n: n)
    rows = []
    for node in wanted:
        if node in errors:
            for service in sorted(frontends[node]):
                rows.append({"node": node, "service": service, "port": frontends[node][service]["port"]["published"],
                             "running": False, "status": f"unknown ({_first_line(_as_orch_error(node, errors[node]))})",
                             "servers": []})
            continue
        status = answers[node]
        for f in status.get("frontends") or []:
            if f.get("project") != project:
                continue
            rows.append({"node": node, "service": f["service"], "port": f["port"]["published"],
                         "running": bool(status.get("running")), "status": f["status"],
                         "servers": [{"name": x["name"], "container": x["container"], "status": x["status"],
                                      "state": x["state"], "sessions": x["sessions"]} for x in f["servers"]]})
    return sorted(rows, key=lambda r: (r["service"], order.index(r["node"]) if r["node"] in order else 99))


def ingress_table(rows: list[dict]) -> str:
    """For `orch ps`: one line per (service, node) behind the ingress."""
    lines = [["INGRESS", "NODE", "PORT", "FRONTEND", "SERVERS"]]
    for r in rows:
        up = sum(1 for x in r["servers"] if x["status"] == "UP")
        detail = ", ".join(f"{x['container']} {x['status']}" for x in r["servers"]) or "none"
        front = r["status"] if r["running"] else "HAPROXY NOT RUNNING"
        lines.append([r["service"], r["node"], str(r["port"]), front, f"{up}/{len(r['servers'])} up: {detail}"])
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


# --------------------------------------------------------------------------- logs, exec


def parse_since(text: str | None, now: float | None = None) -> int | None:
    """--since: a duration back from now (10m, 1h30m, 45s), an ISO time, or epoch seconds."""
    if not text:
        return None
    from orchestrator.core.compose.units import parse_duration

    now = time.time() if now is None else now
    if text.isdigit():
        return int(text)
    try:
        return int(now - parse_duration(text))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.astimezone()
        return int(dt.timestamp())
    except ValueError:
        raise InputError(Problem(f"cannot read --since {text!r}",
                                 fix="write a duration (10m, 2h) or a time (2024-05-01T12:00:00)")) from None


def stream_logs(workspace: Any, services: list[str], follow: bool, tail: Any, since: int | None,
                write: Callable[[dict], None], connector: Connector | None = None) -> int:
    """Logs of every replica of `services` (all when empty), as {service, replica, node,
    container, line} dicts to `write`, streamed as they come; with follow until Ctrl-C.
    Returns the number of lines."""

    project, environment = workspace.project, workspace.environment
    nodes = (connector or ssh_connect)(environment, Progress(), project.name)
    count = [0]
    lock = threading.Lock()
    try:
        observed = observe_nodes(nodes, project.name, env=environment.name)
        wanted = set(services)
        work = sorted({(c.service, node) for node, cs in observed.items() for c in cs
                       if not wanted or c.service in wanted})
        if not work:
            raise DeployError(f"no containers of {', '.join(services) or project.name} on {environment.name}",
                              fix=f"deploy first: orch up --env {environment.name}")
        errors: list[BaseException] = []

        def pump(service: str, node: str) -> None:
            args: dict[str, Any] = {"project": project.name, "service": service, "follow": follow, "tail": tail,
                                    "env": environment.name}
            if since is not None:
                args["since"] = since
            try:
                with nodes[node].stream("logs", args) as st:
                    for ev in st:
                        if ev.get("type") != "log":
                            continue
                        with lock:
                            count[0] += 1
                            write({"service": ev.get("service", service), "replica": ev.get("replica"),
                                   "node": node, "container": ev.get("container"), "line": ev.get("line", "")})
            except BaseException as err:  # noqa: BLE001 - reported after the others
                errors.append(err)

        threads = [threading.Thread(target=pump, args=w, daemon=True) for w in work]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
        if errors:
            raise errors[0]
        return count[0]
    finally:
        close_nodes(nodes)


def find_container(observed: Mapping[str, Iterable[Observed]], service: str, replica: int | None) -> Observed:
    candidates = [c for cs in observed.values() for c in cs if c.service == service]
    if replica is not None:
        candidates = [c for c in candidates if c.replica == replica]
    running = sorted((c for c in candidates if c.state == "running"), key=lambda c: (c.replica, c.node))
    if running:
        return running[0]
    what = f"{service}" + (f" replica {replica}" if replica is not None else "")
    if candidates:
        c = candidates[0]
        raise DeployError(f"{what} is not running on {c.node} ({c.describe_state()})",
                          fix="orch up, then try again")
    raise DeployError(f"no container of {what} is deployed", fix="check `orch ps`, or deploy with `orch up`")


def run_exec(workspace: Any, service: str, replica: int | None, cmd: list[str], user: str = "",
             workdir: str = "", out: Callable[[str, str], None] | None = None,
             connector: Connector | None = None) -> int:
    """Run cmd in one replica of service; stream its output to out(stream, data); its exit code."""
    import sys

    def default_out(stream: str, data: str) -> None:
        f = sys.stdout if stream == "stdout" else sys.stderr
        f.write(data)
        f.flush()

    out = out or default_out
    project, environment = workspace.project, workspace.environment
    nodes = (connector or ssh_connect)(environment, Progress(), project.name)
    try:
        observed = observe_nodes(nodes, project.name, env=environment.name)
        target = find_container(observed, service, replica)
        # by name: the container observed for this environment, never another one's
        args: dict[str, Any] = {"project": project.name, "service": service, "replica": target.replica,
                                "container": target.name, "cmd": list(cmd)}
        if user:
            args["user"] = user
        if workdir:
            args["workdir"] = workdir
        with nodes[target.node].stream("exec", args) as st:
            for ev in st:
                if ev.get("type") == "output":
                    out(ev.get("stream", "stdout"), ev.get("data", ""))
            result = st.result or {}
        code = result.get("exit_code")
        return 130 if code is None else int(code)
    finally:
        close_nodes(nodes)

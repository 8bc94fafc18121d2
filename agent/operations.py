"""The fixed operations the agent performs. Each takes (ctx, args) and returns a dict.

Arguments are validated here (or in agent.wire.spec) before anything touches the engine.
Operations only ever select containers, networks and volumes carrying the io.orch.*
labels (agent.wire.labels), so nothing else on the node is touched.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.wire import labels as L
from agent.about import agent_version, bundle_name, runs_from
from agent.create import create_body
from agent.engine import ContainerInfo, LineSplitter
from agent.wire.protocol import (
    CANCELLED,
    CONFLICT,
    EXITED,
    NOT_FOUND,
    PROTOCOL,
    PROTOCOL_VERSION,
    TIMEOUT,
    UNHEALTHY,
    AgentError,
    BadRequest,
    canonical_registry,
    check_bool,
    check_container_name,
    check_env_map,
    check_int,
    check_keys,
    check_name,
    check_number,
    check_project,
    check_str,
    check_str_list,
    image_registry,
    require,
)
from agent.owner import owned, refuse_foreign
from agent.wire.spec import ServiceSpec

LOG_LINES_ON_FAILURE = 20
DEFAULT_MIN_RUNNING = 1.0  # a container without healthcheck must stay up this long
POLL = 0.25
# What `apply` waits for before it answers (the controller asks for the strongest
# depends_on condition any dependent of the service has):
#   running    running (for min_running, or healthy when it has a healthcheck); a
#              one-shot (restart no / on-failure) that exits 0 counts as done
#   healthy    healthy; a container without any healthcheck is an error
#   completed  exited with code 0 (service_completed_successfully), within `timeout`
WAIT_MODES = ("running", "healthy", "completed")
DEFAULT_COMPLETION_TIMEOUT = 600.0


@dataclass
class Context:
    """What an operation may use: the engine, the state directory, events, cancellation."""

    engine_factory: Callable[[], Any]
    state_dir: str
    emit: Callable[..., None] = lambda type_, **data: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # The engine's ID without connecting the docker SDK (rpc.Server: engine.engine_id_from_socket),
    # so the deploy lock costs no SDK import; None: ask the engine.
    engine_id: Optional[Callable[[], str]] = None
    # The node's ingress for rollouts (agent.rollout.IngressDriver); None: the real one.
    ingress: Any = None
    # A reader for queries without the docker SDK (rpc.Server: agent.engine_reads), or
    # None when there is none or the SDK is connected already; None: use the engine.
    reader: Optional[Callable[[], Any]] = None
    _engine: Any = None

    @property
    def engine(self) -> Any:
        # Lazy, so hello/version work on a node whose Docker Engine is down.
        if self._engine is None:
            self._engine = self.engine_factory()
        return self._engine

    @property
    def reads(self) -> Any:
        """For operations that only read containers (containers(), container())."""
        if self._engine is None and self.reader is not None:
            found = self.reader()
            if found is not None:
                return found
        return self.engine

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise AgentError(CANCELLED, "cancelled by the controller")

    def data_dir(self) -> str:
        """Per-engine data (secret files, later the ledger): several engines may share a
        filesystem (the local lab), so data is keyed by the engine's ID."""
        raw = self.engine_id() if self.engine_id is not None else self.engine.engine_id()
        engine_id = raw.replace(":", "-").replace("/", "-") or "default"
        return os.path.join(self.state_dir, "engines", engine_id)


# ----------------------------------------------------------------------------- hello, info


def op_hello(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("protocol",), "hello")
    if args.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise AgentError(
            PROTOCOL,
            "protocol version mismatch: controller %r, agent %d" % (args.get("protocol"), PROTOCOL_VERSION),
            {"agent_protocol": PROTOCOL_VERSION},
        )
    return {
        "protocol": PROTOCOL_VERSION,
        "agent_version": agent_version(),
        "bundle": bundle_name(),
        "python": platform.python_version(),
        "executable": sys.executable,  # the node's nodes[].python, resolved
        "runs_from": runs_from(),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
    }


def _disk(path: str) -> Optional[Dict[str, int]]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {"free": st.f_bavail * st.f_frsize, "total": st.f_blocks * st.f_frsize}


def op_info(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, (), "info")
    out = op_hello(ctx, {})
    out.update({"platform": platform.platform(), "state_dir": ctx.state_dir, "engine": None, "engine_error": ""})
    try:
        import docker

        out["docker_sdk"] = docker.__version__
    except Exception as exc:  # pragma: no cover - the bundle always carries it
        out["docker_sdk"] = ""
        out["engine_error"] = "docker SDK not importable: %s" % exc
        return out
    disk = {"state_dir": _disk(ctx.state_dir if os.path.isdir(ctx.state_dir) else "/")}
    try:
        engine = ctx.engine.info()
        out["engine"] = engine
        if engine.get("root_dir"):
            disk["docker_root"] = _disk(engine["root_dir"])
    except AgentError as err:
        out["engine_error"] = err.message
    out["disk"] = disk
    return out


# ----------------------------------------------------------------------------- state


def op_state(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("project", "service", "env"), "state")
    project = check_project(args["project"]) if args.get("project") else None
    service = check_name(args["service"], "service") if args.get("service") else None
    env = check_name(args["env"], "env") if args.get("env") else None
    containers = ctx.reads.containers(L.filters(project, service, env))
    out: Dict[str, Any] = {"containers": [c.summary() for c in containers]}
    if project:
        from agent.owner import owners, ports_elsewhere
        from agent.rollout import ingress_state

        out["ingress"] = ingress_state(ctx, project)  # the project's frontends on this node
        # Which environments have objects of the project here: the controller refuses to
        # deploy one environment over another's (agent.owner).
        out["owners"] = owners(ctx, project, reads=True)
        out["ports_elsewhere"] = ports_elsewhere(ctx, project, reads=True)
    return out


# ----------------------------------------------------------------------------- apply


def _auth(value: Any, image: str) -> Optional[Dict[str, str]]:
    """The pull credentials of one image. The engine sends them to whatever registry the
    image names, so they are refused unless their serveraddress is that registry."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("auth must be an object")
    check_keys(value, ("username", "password", "serveraddress", "identitytoken"), "auth")
    auth = {k: check_str(v, "auth." + k) for k, v in value.items() if v}
    if not auth:
        return None
    server = auth.get("serveraddress", "")
    registry = image_registry(image)
    if canonical_registry(server) != registry:
        # Names the addresses only: never a user name or password in an error.
        raise BadRequest(
            "auth.serveraddress %r is not the registry of image %s (%s): credentials go only to their own "
            "registry" % (server, image, registry), {"image": image, "registry": registry})
    return auth


def ensure_networks(ctx: Context, svc: ServiceSpec) -> List[str]:
    used = [svc.networks[a.name] for a in svc.container.networks]
    created = []
    for net in used:
        name = net.engine_name(svc.project)
        existing = ctx.engine.network(name)
        if net.external:
            if existing is None:
                raise AgentError(
                    NOT_FOUND, "external network %s does not exist on this node" % name,
                    {"network": name, "fix": "create it (docker network create %s) or drop external: true" % name},
                )
            continue
        if existing is None:
            labels = dict(net.labels)
            labels.update(L.resource_labels(svc.project, net.name, svc.env))
            try:
                ctx.engine.create_network(name, net.driver, net.internal, net.attachable, labels)
                created.append(name)
                ctx.emit("network.create", network=name)
            except AgentError:
                existing = ctx.engine.network(name)  # created meanwhile by a parallel apply?
                if existing is None:
                    raise
        if existing is not None and (existing["labels"].get(L.PROJECT) != svc.project
                                     or L.other_env(existing["labels"], svc.env)):
            raise AgentError(
                CONFLICT,
                "network %s exists but is not managed by orch for project %s" % (name, svc.project),
                {"network": name, "fix": "remove it (docker network rm %s) or declare it external" % name},
            )
    return created


def ensure_volumes(ctx: Context, svc: ServiceSpec) -> List[str]:
    created = []
    for m in svc.container.volumes:
        if m.type != "volume" or not m.source:
            continue
        vol = svc.volumes[m.source]
        name = vol.engine_name(svc.project)
        existing = ctx.engine.volume(name)
        if vol.external:
            if existing is None:
                raise AgentError(
                    NOT_FOUND, "external volume %s does not exist on this node" % name,
                    {"volume": name, "fix": "create it (docker volume create %s) or drop external: true" % name},
                )
            continue
        if existing is None:
            labels = dict(vol.labels)
            labels.update(L.resource_labels(svc.project, vol.name, svc.env))
            ctx.engine.create_volume(name, vol.driver, vol.driver_opts, labels)
            created.append(name)
            ctx.emit("volume.create", volume=name)
        elif existing["labels"].get(L.PROJECT) != svc.project or L.other_env(existing["labels"], svc.env):
            raise AgentError(
                CONFLICT,
                "volume %s exists but is not managed by orch for project %s" % (name, svc.project),
                {"volume": name, "fix": "declare it external (it holds data orch must not take over)"},
            )
    return created


def ensure_image(ctx: Context, svc: ServiceSpec, auth: Optional[Dict[str, str]]) -> bool:
    ref = svc.container.image
    present = ctx.engine.image_exists(ref)
    if svc.pull == "never" or (present and svc.pull == "missing"):
        if not present:
            raise AgentError(NOT_FOUND, "image %s is not on this node and pull is 'never'" % ref, {"image": ref})
        return False
    ctx.emit("image.pull", image=ref, status="start")
    last = [0.0]

    def progress(msg: Dict[str, Any]) -> None:
        now = ctx.clock()
        if now - last[0] >= 1.0:  # at most one event a second per pull
            last[0] = now
            ctx.emit("image.pull", image=ref, status=msg.get("status", ""), layer=msg.get("id", ""))

    ctx.engine.pull(ref, auth, progress)
    ctx.emit("image.pull", image=ref, status="done")
    return True


def write_files(ctx: Context, svc: ServiceSpec) -> Dict[Tuple[str, str], str]:
    """Write secret/config files under the state directory; (kind, name) -> host path.

    Each version of a file has its own path (content, mode and owner hashed into the
    name): a container kept for a rollback (agent.rollout) mounts its own version again
    when it restarts. Written to a temporary name and renamed, so no container ever sees
    a half-written file.
    """
    import hashlib

    out: Dict[Tuple[str, str], str] = {}
    files = [("secret", f) for f in svc.container.secrets] + [("config", f) for f in svc.container.configs]
    if not files:
        return out
    base = os.path.join(ctx.data_dir(), "files", svc.project, svc.service)
    for kind, f in files:
        directory = os.path.join(base, kind + "s")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        data = f.data()
        version = hashlib.sha256(b"%o:%d:%d:" % (f.mode, f.uid, f.gid) + data).hexdigest()[:12]
        path = os.path.join(directory, "%s.%s" % (f.name, version))
        out[(kind, f.name)] = path
        try:
            st = os.stat(path)
            with open(path, "rb") as fh:
                same = fh.read() == data
            if same and (st.st_mode & 0o777) == f.mode and (st.st_uid, st.st_gid) == (f.uid, f.gid):
                os.utime(path)  # the newest version again: prune_files keeps it
                continue
        except OSError:
            pass
        tmp = "%s.tmp-%d" % (path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            if os.geteuid() == 0:
                os.fchown(fd, f.uid, f.gid)
            os.fchmod(fd, f.mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    return out


def prune_files(ctx: Context, project: str, service: Optional[str] = None) -> List[str]:
    """Remove the secret/config file versions (write_files) that no container of the
    project on this engine mounts any more: once a release is live, the kept containers
    are gone and so are the versions only they used. The newest version of each file is
    always kept (a deploy of the same project running now may just have written it)."""
    root = os.path.join(ctx.data_dir(), "files", project)
    if not os.path.isdir(root):
        return []
    used = set()
    for c in ctx.reads.containers(L.filters(project)):
        used.update(os.path.realpath(b) for b in c.binds)
    removed = []
    for svc_name in ([service] if service else sorted(os.listdir(root))):
        for kind in ("secrets", "configs"):
            directory = os.path.join(root, svc_name, kind)
            try:
                names = [n for n in os.listdir(directory) if ".tmp-" not in n]
            except OSError:
                continue
            versions: Dict[str, List[Tuple[float, str]]] = {}
            for n in names:
                path = os.path.join(directory, n)
                try:
                    versions.setdefault(n.rsplit(".", 1)[0], []).append((os.stat(path).st_mtime, path))
                except OSError:
                    continue
            for found in versions.values():
                for _, path in sorted(found)[:-1]:
                    if os.path.realpath(path) not in used:
                        try:
                            os.unlink(path)
                            removed.append(os.path.relpath(path, root))
                        except OSError:
                            pass
    return removed


def _name_conflicts(ctx: Context, svc: ServiceSpec) -> None:
    """A container already holding one of our names must be ours, for this replica."""
    for r in svc.replicas:
        name = svc.container_name(r)
        c = ctx.engine.container(name)
        if c is None:
            continue
        if (not L.is_ours(c.labels) or (c.project, c.service, c.replica) != (svc.project, svc.service, r)
                or L.other_env(c.labels, svc.env)):
            raise AgentError(
                CONFLICT,
                "container name %s is taken by a container orch does not manage for %s/%s"
                % (name, svc.project, svc.service),
                {"container": name, "fix": "rename or remove that container (docker rm -f %s)" % name},
            )


def one_shot_done(c: ContainerInfo, restart: str) -> bool:
    """A container that ran to completion: exited 0, never restarted, and a restart policy
    (no, on-failure) under which it stays exited. Such a container is converged."""
    return (c.state == "exited" and c.exit_code == 0 and c.restart_count == 0
            and restart.partition(":")[0] in ("no", "on-failure"))


def _keepable(c: ContainerInfo, svc: ServiceSpec, replica: int) -> bool:
    if c.config_hash != svc.config_hash or c.name != svc.container_name(replica):
        return False
    if c.state == "running":
        return c.health != "unhealthy"
    return one_shot_done(c, svc.container.restart)


def _ready_now(c: ContainerInfo, svc: ServiceSpec, wait: str) -> bool:
    """Whether a kept container already satisfies `wait` (else apply waits for it)."""
    if one_shot_done(c, svc.container.restart):
        return True
    if wait == "completed":
        return False
    if wait == "healthy" or c.healthcheck:
        return c.health == "healthy"
    return True


def _remove(ctx: Context, c: ContainerInfo, why: str) -> None:
    ctx.emit("container.remove", container=c.name, service=c.service, replica=c.replica, reason=why)
    if c.state in ("running", "restarting", "paused"):
        ctx.engine.stop(c.id)
    ctx.engine.remove(c.id)


def _remove_all(ctx: Context, containers: List[ContainerInfo], why: str) -> None:
    """Stop (each with its own grace period) and remove, all at once: stops are slow."""
    errors: List[BaseException] = []

    def one(c: ContainerInfo) -> None:
        try:
            _remove(ctx, c, why)
        except BaseException as exc:  # reported below, after the others finished
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def op_apply(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Converge one service's containers on this node to args["spec"] (a ServiceSpec).

    Idempotent, and safe to re-run after being killed at any point: containers are
    found by label and matched on the config hash, and anything half-done (created but
    not started, stopped, unhealthy, wrongly named) is removed and made again.
    """
    check_keys(args, ("spec", "auth", "min_running", "health_margin", "wait", "timeout"), "apply")
    svc = ServiceSpec.from_dict(require(args, "spec", "apply"))
    auth = _auth(args.get("auth"), svc.container.image)
    min_running = check_number(args.get("min_running", DEFAULT_MIN_RUNNING), "min_running")
    margin = check_number(args.get("health_margin", 5.0), "health_margin")
    wait = args.get("wait") or "running"
    if wait not in WAIT_MODES:
        raise BadRequest("wait must be one of %s" % ", ".join(WAIT_MODES))
    timeout = check_number(args.get("timeout", DEFAULT_COMPLETION_TIMEOUT), "timeout")
    refuse_foreign(ctx, svc.project, svc.env, "apply")
    ctx.emit("apply.start", service=svc.service, replicas=svc.replicas, config_hash=svc.config_hash)

    # Kept containers of a previous release (renamed *-prev) belong to agent.rollout.
    existing = [c for c in ctx.engine.containers(L.filters(svc.project, svc.service)) if not L.is_retired(c.name)]
    _name_conflicts(ctx, svc)
    outcome: Dict[int, Dict[str, Any]] = {}
    to_create: List[int] = []
    pending: List[ContainerInfo] = []
    by_replica: Dict[int, List[ContainerInfo]] = {}
    for c in existing:
        by_replica.setdefault(c.replica, []).append(c)

    # Decide first, so a replica that is already right is never touched.
    replaced: List[Tuple[ContainerInfo, str]] = []
    for r in svc.replicas:
        group = by_replica.pop(r, [])
        keep = next((c for c in group if _keepable(c, svc, r)), None)
        for c in group:
            if c is not keep:
                replaced.append((c, "config changed" if c.config_hash != svc.config_hash
                                 else "not running (%s)" % c.state))
        if keep is not None:
            outcome[r] = {"action": "unchanged", "container": keep}
            if not _ready_now(keep, svc, wait):
                pending.append(keep)
        else:
            to_create.append(r)
            outcome[r] = {"action": "recreated" if group else "created"}
    extra = [c for _, group in sorted(by_replica.items()) for c in group]  # replicas placed elsewhere now

    # Everything that can fail without touching a container comes first: the pull (slow,
    # and it fails when the registry is gone), networks, volumes, files. Until the old
    # containers are removed below, a failure leaves them running as they were.
    files: Dict[Tuple[str, str], str] = {}
    if to_create:
        ensure_image(ctx, svc, auth)
        ensure_networks(ctx, svc)
        ensure_volumes(ctx, svc)
        files = write_files(ctx, svc)
    ctx.check_cancelled()
    for c, why in replaced:
        _remove(ctx, c, why)
    _remove_all(ctx, extra, "replica not wanted on this node")
    removed = [{"replica": c.replica, "id": c.id, "name": c.name, "action": "removed"} for c in extra]

    if to_create:
        for r in to_create:
            ctx.check_cancelled()
            name = svc.container_name(r)
            body, extra = create_body(svc, r, files)
            cid = ctx.engine.create(name, body, extra)
            ctx.emit("container.create", container=name, service=svc.service, replica=r, id=cid)
            ctx.engine.start(cid)
            ctx.emit("container.start", container=name, service=svc.service, replica=r, id=cid)
            info = ctx.engine.container(cid)
            if info is None:
                raise AgentError(EXITED, "container %s vanished right after start" % name)
            outcome[r]["container"] = info
            pending.append(info)

    ready = wait_ready(ctx, svc, pending, min_running, margin, wait, timeout)
    containers = []
    for r in svc.replicas:
        c = ready.get(outcome[r]["container"].id, outcome[r]["container"])
        containers.append({"replica": r, "id": c.id, "name": c.name, "action": outcome[r]["action"],
                           "state": c.state, "health": c.health})
    changed = bool(removed) or any(o["action"] != "unchanged" for o in outcome.values())
    return {"service": svc.service, "changed": changed, "containers": containers + removed}


def _failure(ctx: Context, svc: ServiceSpec, c: ContainerInfo, kind: str, reason: str,
             fix: Optional[str] = None) -> AgentError:
    logs = ctx.engine.logs(c.id, LOG_LINES_ON_FAILURE)
    # Stop it so it neither restarts in a loop nor counts as converged next time.
    try:
        ctx.engine.stop(c.id, 2)
    except AgentError:
        pass
    details = {"service": svc.service, "replica": c.replica, "container": c.name, "id": c.id,
               "exit_code": c.exit_code, "health": c.health, "health_log": c.health_log, "logs": logs}
    if fix:
        details["fix"] = fix
    return AgentError(kind, "service %s replica %d (container %s) %s" % (svc.service, c.replica, c.name, reason),
                      details)


HEALTH_OUTPUT_CHARS = 300


def _probe_output(text: str) -> str:
    """A probe's output on one line, shortened (it can be a whole HTML page)."""
    one = " | ".join(ln.strip() for ln in text.splitlines() if ln.strip())
    return one if len(one) <= HEALTH_OUTPUT_CHARS else one[:HEALTH_OUTPUT_CHARS - 3] + "..."


def _health_fix(svc: ServiceSpec, no_result: bool = False) -> str:
    logs = "orch logs --env %s %s" % (svc.env or "ENV", svc.service)
    if no_result:
        return ("check the healthcheck command (and its start_period and interval: no probe had finished) "
                "and the container's logs: %s" % logs)
    return "check the healthcheck command and the container's logs: %s" % logs


def unhealthy_reason(c: ContainerInfo) -> str:
    """Why Docker says the container is unhealthy: how many probes failed, the last exit
    code and the last probe's output (which is often empty, e.g. `curl -f` or `false`)."""
    why = "healthcheck failed"
    if c.health_streak:
        why += " %d time%s in a row" % (c.health_streak, "" if c.health_streak == 1 else "s")
    if c.health_exit is not None:
        why += " (exit code %d)" % c.health_exit
    output = _probe_output(c.health_log[-1]) if c.health_log else ""
    return "is unhealthy: " + why + (": " + output if output else ", with no output")


def not_healthy_in_time_reason(c: ContainerInfo, budget: float) -> str:
    if not c.health_log:
        return "did not become healthy within %.0fs: no healthcheck result yet (health: %s)" % (
            budget, c.health or "none")
    last = "exit code %d" % c.health_exit if c.health_exit is not None else "failed"
    output = _probe_output(c.health_log[-1])
    return "did not become healthy within %.0fs (health: %s; last probe: %s%s)" % (
        budget, c.health or "none", last, ": " + output if output else ", no output")


def wait_ready(
    ctx: Context, svc: ServiceSpec, pending: List[ContainerInfo], min_running: float, margin: float,
    wait: str = "running", timeout: float = DEFAULT_COMPLETION_TIMEOUT, deadline: Optional[float] = None,
) -> Dict[str, ContainerInfo]:
    """Wait until each container is ready in the sense of `wait` (see WAIT_MODES).

    deadline: seconds a container with a healthcheck gets to become healthy (x-orch
    healthy_deadline), instead of the budget derived from its healthcheck settings."""
    start = ctx.clock()
    waiting = {c.id: c for c in pending}
    done: Dict[str, ContainerInfo] = {}
    budgets = {}
    for c in pending:
        hc = c.healthcheck
        if hc:
            budgets[c.id] = deadline if deadline is not None else (
                hc["start_period"] + (hc["retries"] + 1) * hc["interval"] + hc["timeout"] + margin)
        else:
            budgets[c.id] = min_running
    last_note = start
    while waiting:
        ctx.check_cancelled()
        now = ctx.clock()
        for cid in list(waiting):
            c = ctx.engine.container(cid)
            old = waiting[cid]
            if c is None:
                raise AgentError(EXITED, "container %s was removed while starting" % old.name,
                                 {"service": svc.service, "replica": old.replica, "container": old.name})
            elapsed = now - start
            if one_shot_done(c, svc.container.restart) or (
                    wait == "completed" and c.state == "exited" and c.exit_code == 0 and c.restart_count == 0):
                waiting.pop(cid)
                done[cid] = c
                ctx.emit("container.completed", container=c.name, replica=c.replica, exit_code=0,
                         seconds=round(elapsed, 1))
                continue
            if c.state in ("exited", "dead") or c.restart_count > 0 or c.state == "restarting":
                why = "exited with code %d" % c.exit_code
                if c.oom_killed:
                    why += " (killed: out of memory)"
                elif c.error:
                    why += " (%s)" % c.error
                if c.restart_count:
                    why += " and was restarted %d times" % c.restart_count
                raise _failure(ctx, svc, c, EXITED, why)
            if wait == "completed":
                if elapsed > timeout:
                    raise _failure(ctx, svc, c, TIMEOUT, "did not complete within %.0fs (state %s)" % (timeout, c.state))
                continue
            if wait == "healthy" and not c.healthcheck:
                raise AgentError(
                    UNHEALTHY,
                    "service %s replica %d (container %s) has no healthcheck, but a dependent waits for it "
                    "to be healthy (condition: service_healthy)" % (svc.service, c.replica, c.name),
                    {"service": svc.service, "replica": c.replica, "container": c.name,
                     "fix": "add a healthcheck to the service, or use condition: service_started"},
                )
            if c.healthcheck:
                if c.health == "healthy":
                    waiting.pop(cid)
                    done[cid] = c
                    ctx.emit("container.healthy", container=c.name, replica=c.replica, seconds=round(elapsed, 1))
                elif c.health == "unhealthy":
                    raise _failure(ctx, svc, c, UNHEALTHY, unhealthy_reason(c), _health_fix(svc))
                elif elapsed > budgets[cid]:
                    raise _failure(ctx, svc, c, UNHEALTHY, not_healthy_in_time_reason(c, budgets[cid]),
                                   _health_fix(svc, no_result=not c.health_log))
            elif c.state == "running" and elapsed >= budgets[cid]:
                done[cid] = c
                waiting.pop(cid)
                ctx.emit("container.running", container=c.name, replica=c.replica)
            elif c.state not in ("running", "created") or elapsed > budgets[cid] + 60:
                raise _failure(ctx, svc, c, TIMEOUT, "did not reach running (state %s)" % c.state)
        if waiting:
            if now - last_note >= 5.0:
                last_note = now
                ctx.emit("waiting", containers=sorted(c.name for c in waiting.values()), seconds=round(now - start))
            ctx.sleep(POLL)
    return done


# ----------------------------------------------------------------------------- remove


def op_remove(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Remove a project's (or one service's) containers; with the whole project, also its
    networks, files, and (remove_volumes) its volumes. Only `env`'s objects ("" when not
    given: only those without an environment label); another environment's are left."""
    check_keys(args, ("project", "service", "replicas", "env", "remove_volumes", "remove_networks"), "remove")
    project = check_project(require(args, "project", "remove"))
    service = check_name(args["service"], "service") if args.get("service") else None
    env = check_name(args["env"], "env") if args.get("env") else ""
    replicas = None
    if args.get("replicas") is not None:
        if not isinstance(args["replicas"], list):
            raise BadRequest("replicas must be a list of numbers")
        replicas = set(check_int(r, "replicas[]", 1) for r in args["replicas"])
    whole = service is None and replicas is None
    remove_networks = check_bool(args.get("remove_networks", whole), "remove_networks")
    remove_volumes = check_bool(args.get("remove_volumes", False), "remove_volumes")
    doomed = [
        c for c in ctx.engine.containers(L.filters(project, service, env))
        if (replicas is None or c.replica in replicas) and not L.other_env(c.labels, env)
    ]
    _remove_all(ctx, doomed, "remove requested")
    removed = [{"id": c.id, "name": c.name, "service": c.service, "replica": c.replica} for c in doomed]
    out: Dict[str, Any] = {"removed": removed, "networks": [], "volumes": [], "ingress": []}
    if replicas is None:  # the service (or the project) leaves the node: so does its ingress port
        from agent.rollout import driver, ingress_state

        for name, front in sorted(ingress_state(ctx, project).items()):
            if (service is None or name == service) and not L.other_env({L.ENV: front.get("env") or ""}, env):
                driver(ctx).remove({"project": project, "service": name})
                out["ingress"].append(name)
    if remove_networks and not ctx.engine.containers(L.filters(project)):
        for n in ctx.engine.networks(L.filters(project)):
            if not L.other_env(n["labels"], env):
                ctx.engine.remove_network(n["name"])
                out["networks"].append(n["name"])
    if remove_volumes and not ctx.engine.containers(L.filters(project)):
        for v in ctx.engine.volumes(L.filters(project)):
            if not L.other_env(v["labels"], env):
                ctx.engine.remove_volume(v["name"])
                out["volumes"].append(v["name"])
    # The files directory is per project, not per environment: it stays while another
    # environment has anything of the project here.
    if (whole or (service and replicas is None)) and not [o for o in owned(ctx, project) if o.env != env]:
        _remove_files(ctx, project, service)
    return out


def _remove_files(ctx: Context, project: str, service: Optional[str]) -> None:
    import shutil

    path = os.path.join(ctx.data_dir(), "files", project, *([service] if service else []))
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- logs, exec


def _select(ctx: Context, args: Dict[str, Any], what: str) -> List[ContainerInfo]:
    project = check_project(require(args, "project", what))
    service = check_name(args["service"], "service") if args.get("service") else None
    containers = ctx.engine.containers(L.filters(project, service))
    if args.get("replica") is not None:
        r = check_int(args["replica"], "replica", 1)
        containers = [c for c in containers if c.replica == r]
    if args.get("container"):
        name = check_container_name(args["container"])
        containers = [c for c in containers if c.name == name]
    if not containers:
        raise AgentError(NOT_FOUND, "no container of %s matches %s" % (
            project, ", ".join("%s=%s" % (k, args[k]) for k in ("service", "replica", "container") if args.get(k))
            or "(any)"), {"project": project})
    return containers


def op_logs(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Stream log lines as events; with follow, until cancelled or the containers stop."""
    check_keys(args, ("project", "service", "replica", "container", "tail", "follow", "since", "timestamps", "env"),
               "logs")
    tail = args.get("tail", 100)
    if tail != "all":
        tail = check_int(tail, "tail", 0)
    follow = check_bool(args.get("follow", False), "follow")
    since = check_int(args["since"], "since", 0) if args.get("since") is not None else None
    timestamps = check_bool(args.get("timestamps", False), "timestamps")
    containers = _select(ctx, args, "logs")
    if args.get("env"):  # not another environment's containers of the project (agent.owner)
        env = check_name(args["env"], "env")
        containers = [c for c in containers if not L.other_env(c.labels, env)]
    count = [0]
    lock = threading.Lock()
    streams: List[Any] = []

    def pump(c: ContainerInfo) -> None:
        split = LineSplitter()
        try:
            stream = ctx.engine.stream_logs(c.id, tail, follow, since, timestamps)
            with lock:
                streams.append(stream)
            for chunk in stream:
                for line in split.feed(chunk):
                    _emit_line(c, line)
                if ctx.cancelled.is_set():
                    break
        except Exception:
            if not ctx.cancelled.is_set():
                raise
        for line in split.flush():
            _emit_line(c, line)

    def _emit_line(c: ContainerInfo, line: str) -> None:
        with lock:
            count[0] += 1
        ctx.emit("log", container=c.name, service=c.service, replica=c.replica, line=line)

    if not follow:
        for c in containers:
            pump(c)
        return {"containers": [c.name for c in containers], "lines": count[0], "cancelled": False}
    threads = [threading.Thread(target=pump, args=(c,), daemon=True) for c in containers]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and not ctx.cancelled.is_set():
        ctx.cancelled.wait(0.2)
    with lock:
        for s in streams:
            try:
                s.close()  # unblocks the reader threads
            except Exception:
                pass
    for t in threads:
        t.join(2.0)
    return {"containers": [c.name for c in containers], "lines": count[0], "cancelled": ctx.cancelled.is_set()}


def op_exec(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Run an argv (never a shell string) in one container; stream output; return its exit code."""
    check_keys(args, ("project", "service", "replica", "container", "cmd", "env", "user", "workdir"), "exec")
    cmd = check_str_list(require(args, "cmd", "exec"), "cmd")
    if not cmd:
        raise BadRequest("cmd must not be empty")
    env = check_env_map(args.get("env") or {}, "env")
    user = check_str(args.get("user") or "", "user")
    workdir = check_str(args.get("workdir") or "", "workdir")
    running = [c for c in _select(ctx, args, "exec") if c.state == "running"]
    if not running:
        raise AgentError(NOT_FOUND, "no running container to exec in", {"project": args["project"]})
    target = running[0]
    ctx.emit("exec.start", container=target.name)
    stream, exit_code, close = ctx.engine.exec_run(target.id, cmd, env, user, workdir)
    finished = threading.Event()

    def watch() -> None:  # a cancel closes the stream, which ends the loop below
        while not finished.is_set():
            if ctx.cancelled.wait(0.2):
                close()
                return

    threading.Thread(target=watch, daemon=True).start()
    try:
        for out, err in stream:
            for name, data in (("stdout", out), ("stderr", err)):
                if data:
                    ctx.emit("output", stream=name, data=data.decode("utf-8", "replace"))
    except Exception:
        if not ctx.cancelled.is_set():
            raise
    finally:
        finished.set()
    if ctx.cancelled.is_set():
        return {"container": target.name, "exit_code": None, "cancelled": True}
    return {"container": target.name, "exit_code": exit_code(), "cancelled": False}


# ----------------------------------------------------------------------------- networks, volumes, prune


def op_networks(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("action", "project", "names", "env"), "networks")
    action = args.get("action", "list")
    project = check_project(args["project"]) if args.get("project") else None
    env = check_name(args["env"], "env") if args.get("env") else ""
    nets = ctx.engine.networks(L.filters(project))
    if action == "list":
        return {"networks": nets}
    if action != "remove":
        raise BadRequest("networks action must be list or remove")
    if project is None:
        raise BadRequest("networks remove needs a project")
    names = set(check_str_list(args["names"], "names")) if args.get("names") is not None else None
    removed = []
    for n in nets:
        if L.other_env(n["labels"], env):
            continue  # another environment's (agent.owner)
        if names is None or n["name"] in names or n["labels"].get(L.NAME) in names:
            ctx.engine.remove_network(n["name"])
            removed.append(n["name"])
    return {"removed": removed}


def op_volumes(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("action", "project", "names", "env"), "volumes")
    action = args.get("action", "list")
    project = check_project(args["project"]) if args.get("project") else None
    env = check_name(args["env"], "env") if args.get("env") else ""
    vols = ctx.engine.volumes(L.filters(project))
    if action == "list":
        return {"volumes": vols}
    if action != "remove":
        raise BadRequest("volumes action must be list or remove")
    if project is None or args.get("names") is None:
        raise BadRequest("volumes remove needs a project and the names to remove (data is never removed by default)")
    names = set(check_str_list(args["names"], "names"))
    removed = []
    for v in vols:
        if (v["name"] in names or v["labels"].get(L.NAME) in names) and not L.other_env(v["labels"], env):
            ctx.engine.remove_volume(v["name"])
            removed.append(v["name"])
    return {"removed": removed}


def op_prune(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Remove our stopped containers, our networks no container uses, secret/config files
    of services with no containers, and (images: true) dangling images."""
    check_keys(args, ("project", "images", "env"), "prune")
    project = check_project(args["project"]) if args.get("project") else None
    env = check_name(args["env"], "env") if args.get("env") else ""
    images = check_bool(args.get("images", False), "images")
    out: Dict[str, Any] = {"containers": [], "networks": [], "files": [], "images": None}
    for c in ctx.engine.containers(L.filters(project)):
        if c.state in ("exited", "created", "dead") and not L.other_env(c.labels, env):
            ctx.engine.remove(c.id)
            out["containers"].append(c.name)
    live = ctx.engine.containers(L.filters(project))
    live_projects = set(c.project for c in live)
    live_services = set((c.project, c.service) for c in live)
    for n in ctx.engine.networks(L.filters(project)):
        if n["labels"].get(L.PROJECT) not in live_projects and not L.other_env(n["labels"], env):
            ctx.engine.remove_network(n["name"])
            out["networks"].append(n["name"])
    files_root = os.path.join(ctx.data_dir(), "files")
    if os.path.isdir(files_root):
        import shutil

        for p in sorted(os.listdir(files_root)):
            if project and p != project:
                continue
            for s in sorted(os.listdir(os.path.join(files_root, p))):
                if (p, s) not in live_services:
                    shutil.rmtree(os.path.join(files_root, p, s), ignore_errors=True)
                    out["files"].append("%s/%s" % (p, s))
    if images:
        out["images"] = ctx.engine.prune_images()
    return out


def op_prune_images(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Remove the images orch built for `project` (image label io.orch.project) that no
    container uses (whoever's, in any state) and whose digest reference is not in `keep`
    (the controller sends the digests of the last releases, so a rollback pulls nothing).
    Images without that label (busybox, anyone's) are never touched."""
    check_keys(args, ("project", "keep", "env"), "prune_images")
    project = check_project(args.get("project"))
    keep = set(check_str_list(args.get("keep") or [], "keep"))
    # `keep` is one environment's: another's releases on this node need their own images.
    refuse_foreign(ctx, project, check_name(args["env"], "env") if args.get("env") else "", "prune_images")
    used = set(ctx.engine.image_users())
    removed: List[str] = []
    kept: List[str] = []
    reclaimed = 0
    for img in ctx.engine.list_images(["%s=%s" % (L.PROJECT, project)]):
        refs = list(img.get("repo_digests") or []) + list(img.get("repo_tags") or [])
        name = refs[0] if refs else img["id"]
        if img["id"] in used or keep.intersection(img.get("repo_digests") or []):
            kept.append(name)
            continue
        try:
            ctx.engine.remove_image(img["id"])
        except AgentError as err:  # in use meanwhile, or already gone: keep going
            kept.append(name)
            ctx.emit("image.keep", image=name, reason=err.message)
            continue
        removed.append(name)
        reclaimed += int(img.get("size") or 0)
    return {"removed": sorted(removed), "kept": sorted(kept), "reclaimed": reclaimed}


OPERATIONS: Dict[str, Callable[[Context, Dict[str, Any]], Dict[str, Any]]] = {
    "hello": op_hello,
    "info": op_info,
    "state": op_state,
    "apply": op_apply,
    "remove": op_remove,
    "logs": op_logs,
    "exec": op_exec,
    "networks": op_networks,
    "volumes": op_volumes,
    "prune": op_prune,
    "prune_images": op_prune_images,
}

# The release ledger and the deploy lock live in their own modules.
from agent.ledger import LEDGER_OPERATIONS  # noqa: E402
from agent.lock import LOCK_OPERATIONS  # noqa: E402
from agent.ingress import INGRESS_OPERATIONS  # noqa: E402
from agent.rollout import ROLLOUT_OPERATIONS  # noqa: E402

OPERATIONS.update(LEDGER_OPERATIONS)
OPERATIONS.update(LOCK_OPERATIONS)
OPERATIONS.update(INGRESS_OPERATIONS)
OPERATIONS.update(ROLLOUT_OPERATIONS)

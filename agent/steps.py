"""The steps operations are made of, shared by `apply` (agent.operations) and the
rolling update (agent.rollout): pull credentials, networks, volumes, images and files of
a service, which containers can be kept, removing containers, waiting until new ones
are ready, and the error a failed container gives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

from agent.context import Context
from agent.engine import ContainerInfo
from agent.stops import wait_stopped
from agent.wire import labels as L
from agent.wire.messages import (  # noqa: F401 - the request defaults, shared by apply and rollout
    DEFAULT_COMPLETION_TIMEOUT,
    DEFAULT_MIN_RUNNING,
    WAIT_MODES,
    pull_auth,
)
from agent.wire.protocol import (
    CONFLICT,
    EXITED,
    NOT_FOUND,
    TIMEOUT,
    UNHEALTHY,
    AgentError,
)
from agent.wire.spec import ServiceSpec, stays_exited


LOG_LINES_ON_FAILURE = 20
POLL = 0.25


def poll_interval(elapsed: float) -> float:
    """How long to wait before looking at a starting container again: 50 ms for its
    first 2 s (most containers are up, or healthy after their first probe, by then; an
    inspect over the engine's socket costs a few ms), 100 ms until 10 s, then POLL."""
    if elapsed < 2.0:
        return 0.05
    return 0.1 if elapsed < 10.0 else POLL


def ensure_networks(ctx: Context, svc: ServiceSpec) -> List[str]:
    used = [svc.networks[a.name] for a in svc.container.networks]
    created = []
    for net in used:
        name = net.engine_name(svc.project)
        with _creating(ctx, "network-" + name):
            created += _ensure_network(ctx, svc, net, name)
    if any(net.mesh_slot for net in used if not net.external):
        from agent.mesh.ops import sync_firewall

        sync_firewall(ctx, svc.env)  # the new bridge's rules now, not at the daemon's next tick
    return created


@contextlib.contextmanager
def _creating(ctx: Context, what: str) -> Iterator[None]:
    """One agent process at a time checks for and creates `what` on this node. The parallel
    applies of a wave (one agent process each) all find the project network missing; the
    engine's duplicate check is not atomic, and a second create of a mesh network fails
    with "Pool overlaps" before the first one is visible."""
    directory = os.path.join(ctx.data_dir(), "creating")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, what.replace("/", "_")), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_network(ctx: Context, svc: ServiceSpec, net: Any, name: str) -> List[str]:
    """The network `name` of svc checked (and created when missing): [name] if created."""
    created = []
    existing = ctx.engine.network(name)
    if net.external:
        if existing is None:
            raise AgentError(
                NOT_FOUND, "external network %s does not exist on this node" % name,
                {"network": name, "fix": "create it (docker network create %s) or drop external: true" % name},
            )
        return created
    if existing is None:
        labels = dict(net.labels)
        labels.update(L.resource_labels(svc.project, net.name, svc.env))
        try:
            _create_network(ctx, name, net, labels)
            created.append(name)
            ctx.emit("network.create", network=name, subnet=net.subnet)
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
    if existing is not None and net.subnet and net.subnet not in (existing.get("subnets") or [net.subnet]):
        # Made before the mesh (or with another mesh range): its replicas could not be
        # reached from other nodes. Docker cannot re-address a network in place.
        raise AgentError(
            CONFLICT,
            "network %s has subnet %s, but the environment's mesh needs %s" % (
                name, ", ".join(existing.get("subnets") or []) or "?", net.subnet),
            {"network": name, "fix": "run `orch down` for this project and environment, then `orch up` "
             "(volumes are kept): the network is made again in the mesh"},
        )
    return created


def _create_network(ctx: Context, name: str, net: Any, labels: Dict[str, str]) -> None:
    if not net.mesh_slot:
        ctx.engine.create_network(name, net.driver, net.internal, net.attachable, labels)
        return
    from agent.mesh.records import MESH_INTERNAL, MESH_SLOT

    labels = dict(labels)
    labels[MESH_SLOT] = str(net.mesh_slot)
    labels[MESH_INTERNAL] = "true" if net.internal else "false"
    # internal is enforced by the mesh firewall (agent.mesh.firewall), which lets the network
    # reach its own subnets on other nodes; Docker's internal would cut those too. Docker's
    # masquerading is off: the mesh's own rule masquerades all but mesh -> mesh traffic.
    # Docker >= 28 filters direct routing to unpublished container ports (gateway mode
    # `nat`); the mesh routes to container addresses on purpose, and its own firewall does
    # the filtering (older engines ignore the option).
    options = {"com.docker.network.bridge.enable_ip_masquerade": "false",
               "com.docker.network.bridge.gateway_mode_ipv4": "nat-unprotected"}
    if net.mtu:
        options["com.docker.network.driver.mtu"] = str(net.mtu)
    ctx.engine.create_network(name, net.driver, False, net.attachable, labels, subnet=net.subnet,
                              gateway=net.gateway, options=options)


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


def check_name_conflicts(ctx: Context, svc: ServiceSpec) -> None:
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
    return c.state == "exited" and c.exit_code == 0 and c.restart_count == 0 and stays_exited(restart)


def keepable(c: ContainerInfo, svc: ServiceSpec, replica: int) -> bool:
    if c.config_hash != svc.config_hash or c.name != svc.container_name(replica):
        return False
    if c.state == "running":
        return c.health != "unhealthy"
    return one_shot_done(c, svc.container.restart)


def ready_now(c: ContainerInfo, svc: ServiceSpec, wait: str) -> bool:
    """Whether a kept container already satisfies `wait` (else apply waits for it)."""
    if one_shot_done(c, svc.container.restart):
        return True
    if wait == "completed":
        return False
    if wait == "healthy" or c.healthcheck:
        return c.health == "healthy"
    return True


def remove_container(ctx: Context, c: ContainerInfo, why: str) -> None:
    ctx.emit("container.remove", container=c.name, service=c.service, replica=c.replica, reason=why)
    if c.state in ("running", "restarting", "paused"):
        # A stop already under way (agent.stops) is waited for, not signalled twice.
        if wait_stopped(ctx, c.id) is not None:
            c = ctx.engine.container(c.id) or c
        if c.state in ("running", "restarting", "paused"):
            ctx.engine.stop(c.id)
    ctx.engine.remove(c.id)


def remove_containers(ctx: Context, containers: List[ContainerInfo], why: str) -> None:
    """Stop (each with its own grace period) and remove, all at once: stops are slow."""
    errors: List[BaseException] = []

    def one(c: ContainerInfo) -> None:
        try:
            remove_container(ctx, c, why)
        except BaseException as exc:  # reported below, after the others finished
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def container_failure(ctx: Context, svc: ServiceSpec, c: ContainerInfo, kind: str, reason: str,
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
                raise container_failure(ctx, svc, c, EXITED, why)
            if wait == "completed":
                if elapsed > timeout:
                    raise container_failure(ctx, svc, c, TIMEOUT, "did not complete within %.0fs (state %s)" % (timeout, c.state))
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
                    raise container_failure(ctx, svc, c, UNHEALTHY, unhealthy_reason(c), _health_fix(svc))
                elif elapsed > budgets[cid]:
                    raise container_failure(ctx, svc, c, UNHEALTHY, not_healthy_in_time_reason(c, budgets[cid]),
                                   _health_fix(svc, no_result=not c.health_log))
            elif c.state == "running" and elapsed >= budgets[cid]:
                done[cid] = c
                waiting.pop(cid)
                ctx.emit("container.running", container=c.name, replica=c.replica)
            elif c.state not in ("running", "created") or elapsed > budgets[cid] + 60:
                raise container_failure(ctx, svc, c, TIMEOUT, "did not reach running (state %s)" % c.state)
        if waiting:
            if now - last_note >= 5.0:
                last_note = now
                ctx.emit("waiting", containers=sorted(c.name for c in waiting.values()), seconds=round(now - start))
            ctx.sleep(poll_interval(now - start))
    return done

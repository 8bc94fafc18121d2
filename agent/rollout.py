"""Rolling replacement of one service's replicas on this node, and putting them back.

The controller plans the batches across nodes (orchestrator.core.rollout_plan, executed by
orchestrator.app.deploy); each batch on a node is one `rollout` call here:

    rollout   replace these replicas of the service with containers of the new spec.
              The old container of a replica is kept, renamed "<name>-prev"
              (labels.retired_name), so a rollback needs no pull and no re-create:
                stop-first   drain it from the ingress, stop it, rename it, start the new
                start-first  rename it (it keeps serving), start the new one, wait until
                             it is ready and, with an ingress, in rotation; then drain the
                             old one and stop it in the background (agent.stops): the
                             batch answers without waiting for the stop, and the
                             controller's `await_stops` waits for it at the end
              A new container counts once it is ready (`wait`, `deadline`) and stayed
              running and not unhealthy for `min_healthy` seconds. If anything fails, or
              the controller goes away, the batch is put back before the error is
              returned (the old containers serve again, the new ones are removed).
              With an empty `replicas` list it only converges the service's ingress.
    restore   put replicas replaced by earlier rollouts of this release back (the
              controller's whole-release rollback); hitless with an ingress: the old
              container is back in rotation before the new one is drained.
    retire    stop and keep (renamed) replicas the release no longer wants on this node.
    discard   remove the kept containers, once the release is live.

Services with an ingress (x-orch.ingress) publish their HTTP port through the node's
HAProxy (agent.ingress), so an old and a new container can serve side by side; other
services publish host ports directly. Each replica of a rollout comes with its order
(agent.wire.messages.RolloutRequest), decided by the controller's plan
(orchestrator.core.rollout_plan: stop-first where the running old container publishes a
host port the new one needs); the agent follows it and does not decide again. Its
safety net: a start-first replica whose old container still holds such a port is
refused (`conflict`) before any container of the batch is touched, since the new one
could not start beside it; the plan was made from a state the node no longer has, and a
re-run of `orch up` plans from the current one.

The requests and results are the typed ones of agent.wire.messages.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional

from agent.context import Context
from agent.create import create_body
from agent.engine import ContainerInfo
from agent.ingress import driver
from agent.owner import refuse_foreign
from agent.stops import (DISCARD_GRACE, STOP_OPERATIONS, remove_when_stopped, stop_began, stop_in_background,
                         wait_stopped)
from agent.steps import (
    check_name_conflicts,
    container_failure,
    ensure_image,
    ensure_networks,
    ensure_volumes,
    keepable,
    poll_interval,
    prune_files,
    ready_now,
    remove_container,
    remove_containers,
    unhealthy_reason,
    wait_ready,
    write_files,
)
from agent.wire import labels as L
from agent.wire.ingress import IngressSettings
from agent.wire.messages import (
    STOP_FIRST,
    ContainerOutcome,
    DiscardRequest,
    DiscardResult,
    KeptContainer,
    NewContainer,
    RemovedContainer,
    ReplicaChange,
    RestoreRequest,
    RestoreResult,
    Restored,
    RetireRequest,
    RetireResult,
    RolloutRequest,
    RolloutResult,
)
from agent.wire.protocol import (
    CONFLICT,
    EXITED,
    UNHEALTHY,
    AgentError,
)
from agent.wire.spec import ServiceSpec


# ----------------------------------------------------------------------------- the ingress


def settings_of(front: Optional[Dict[str, Any]]) -> Optional[IngressSettings]:
    """The settings a frontend on the node was made with (its port and health check;
    drain and sync timeouts are not kept, so the defaults): to put it back."""
    if not front or not front.get("port"):
        return None
    return IngressSettings.parse({"port": front["port"], "health": front.get("health") or {},
                                  "route": front.get("route")})


def _server(c: ContainerInfo) -> Dict[str, str]:
    return {"name": L.server_name(c.service, c.replica, c.id), "container": c.name}


def _serving(ctx: Context, project: str, service: str, extra: List[ContainerInfo] = (),
             exclude: List[ContainerInfo] = ()) -> List[ContainerInfo]:
    """The containers the service's ingress should send requests to on this node: every
    running replica under its own name, plus `extra` (kept ones still serving), less
    `exclude` (new ones being put back)."""
    gone = {c.id for c in exclude}
    out = [c for c in ctx.engine.containers(L.filters(project, service))
           if not L.is_retired(c.name) and c.state == "running" and c.id not in gone]
    ids = {c.id for c in out}
    return sorted(out + [c for c in extra if c.id not in ids], key=lambda c: (c.replica, c.name))


def sync_ingress(ctx: Context, svc_project: str, service: str, env: str, ingress: IngressSettings,
                 containers: List[ContainerInfo]) -> Optional[Dict[str, Any]]:
    """The service's frontend serves exactly `containers` (none: the frontend goes)."""
    drv = driver(ctx)
    if not containers:
        if drv.frontend(svc_project, service) is not None:
            return drv.remove({"project": svc_project, "service": service})
        return None
    args = {"project": svc_project, "service": service, "port": ingress.port, "health": ingress.health,
            "backends": [_server(c) for c in containers], "timeout": ingress.timeout,
            "drain_timeout": ingress.drain_timeout}
    if ingress.route.routed:
        args["route"] = ingress.route.to_dict()
    if env:
        args["env"] = env
    return drv.sync(args)


def _drain(ctx: Context, project: str, service: str, c: ContainerInfo, timeout: float) -> None:
    """Take c out of rotation (its requests finish first), if the ingress has it."""
    drv = driver(ctx)
    front = drv.frontend(project, service)
    name = L.server_name(c.service, c.replica, c.id)
    if front is None or name not in [s.get("name") for s in front.get("servers") or []]:
        return
    drv.drain({"project": project, "service": service, "server": name, "timeout": timeout})


def _fresh(ctx: Context, c: ContainerInfo) -> ContainerInfo:
    """c as the engine sees it now (its name changes when it is kept)."""
    return ctx.engine.container(c.id) or c


def _holds(c: ContainerInfo, port: int) -> bool:
    return any(p.get("published") == port and (p.get("protocol") or "tcp") == "tcp" for p in c.ports)


def _conflicting_ports(old: ContainerInfo, svc: ServiceSpec, ingress: Optional[IngressSettings]) -> List[str]:
    """The host ports the old container holds that the new one (or the ingress, when the
    service moves behind it) needs: then both cannot run at once, and the replica must be
    replaced stop-first. The controller's plan applies the same rule to the observed
    containers (orchestrator.core.rollout_plan._port_conflict): keep them alike."""
    held = {(p.get("published"), p.get("protocol") or "tcp") for p in old.ports if p.get("published")}
    wanted = {(p.published, p.protocol) for p in svc.container.ports if p.published}
    if ingress is not None:
        wanted.add((ingress.port["published"], "tcp"))
    return ["%s/%s" % hp for hp in sorted(held & wanted, key=str)]


# ----------------------------------------------------------------------------- rollout


@dataclass
class _Replace:
    replica: int
    name: str  # the canonical container name
    old: Optional[ContainerInfo]  # the container being replaced (renamed on the way), if any
    was_running: bool = False
    stop_first: bool = True
    new: Optional[ContainerInfo] = None

    def record(self) -> ReplicaChange:
        old = new = None
        if self.old is not None:
            old = KeptContainer(self.old.id, L.retired_name(self.name), self.was_running,
                                self.old.labels.get(L.RELEASE, ""), self.old.image)
        if self.new is not None:
            new = NewContainer(self.new.id, self.new.name)
        return ReplicaChange(self.replica, old, new)


def refresh_names(ctx: Context, env: str) -> None:
    """The node's mesh names right after its replicas changed (agent.mesh): the names a
    replica on this node asks for are answered from them first (ndots:1), so a replaced
    or retired container must leave them now, not at the mesh daemon's next tick."""
    if not env:
        return
    from agent.mesh.ops import refresh_local

    refresh_local(ctx, env)


def op_rollout(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Replace the request's replicas of one service on this node, each in the order it
    is sent (see the module docstring)."""
    req = RolloutRequest.from_dict(args)
    svc = req.service_spec
    assert svc is not None
    replicas = [r.replica for r in req.replicas]
    wait, min_running, margin, timeout = req.wait, req.min_running, req.health_margin, req.timeout
    min_healthy, deadline, batch, auth, ingress = req.min_healthy, req.deadline, req.batch, req.auth, req.ingress
    project, service = svc.project, svc.service
    refuse_foreign(ctx, project, svc.env, "rollout")
    orders = sorted({r.order for r in req.replicas})
    ctx.emit("rollout.start", service=service, replicas=replicas,
             order=orders[0] if len(orders) == 1 else "mixed", batch=batch, config_hash=svc.config_hash)

    check_name_conflicts(ctx, svc)
    existing = ctx.engine.containers(L.filters(project, service))
    current = {c.name: c for c in existing if not L.is_retired(c.name)}
    kept = {c.name: c for c in existing if L.is_retired(c.name)}
    work: List[_Replace] = []
    # Replicas of the spec already right (not in this batch, or a re-run): waited for if
    # they are not ready yet, never touched.
    unchanged = [current[svc.container_name(r)] for r in svc.replicas
                 if svc.container_name(r) in current and keepable(current[svc.container_name(r)], svc, r)]
    _refuse_stale_order(req, svc, current, ingress)
    for r in replicas:
        name = svc.container_name(r)
        old = current.get(name)
        if old is not None and keepable(old, svc, r):
            continue
        stale = kept.get(L.retired_name(name))
        if stale is not None and old is not None:
            remove_container(ctx, stale, "older kept container")  # from a release before the previous one
            stale = None
        w = _Replace(r, name, old if old is not None else stale)
        if w.old is not None:
            w.was_running = w.old.state in ("running", "restarting") and old is not None
            w.stop_first = req.order_of(r) == STOP_FIRST
        work.append(w)

    if work:  # everything that can fail without touching a container comes first
        ensure_image(ctx, svc, auth)
        ensure_networks(ctx, svc)
        ensure_volumes(ctx, svc)
    files = write_files(ctx, svc) if work else {}
    ctx.check_cancelled()

    front = driver(ctx).frontend(project, service)
    # What a put-back restores the ingress to: this release's, or the frontend this
    # call removes (the service left the ingress), so a failed move gets it back.
    back_ingress = ingress
    try:
        if ingress is None and front is not None:
            # The service no longer goes through the ingress: free its port for the containers.
            back_ingress = settings_of(front)
            driver(ctx).remove({"project": project, "service": service})
            ctx.emit("ingress.remove", service=service, reason="the service has no ingress any more")
        for w in work:
            ctx.check_cancelled()
            if w.old is not None and not L.is_retired(w.old.name):
                if w.stop_first and w.was_running:
                    if ingress is not None:
                        _drain(ctx, project, service, w.old, ingress.drain_timeout)
                    ctx.engine.stop(w.old.id)
                ctx.engine.rename(w.old.id, L.retired_name(w.name))
                ctx.emit("container.retire", container=L.retired_name(w.name), service=service, replica=w.replica,
                         id=w.old.id, running=w.was_running and not w.stop_first)
            body, extra = create_body(svc, w.replica, files)
            cid = ctx.engine.create(w.name, body, extra)
            ctx.emit("container.create", container=w.name, service=service, replica=w.replica, id=cid, batch=batch)
            ctx.engine.start(cid)
            ctx.emit("container.start", container=w.name, service=service, replica=w.replica, id=cid, batch=batch)
            w.new = ctx.engine.container(cid)
            if w.new is None:
                raise AgentError(EXITED, "container %s vanished right after start" % w.name)
        pending = [w.new for w in work if w.new is not None] + [c for c in unchanged if not ready_now(c, svc, wait)]
        ready = wait_ready(ctx, svc, pending, min_running, margin, wait, timeout, deadline)
        hold_healthy(ctx, svc, [ready.get(w.new.id, w.new) for w in work if w.new is not None], min_healthy)
        # The replaced containers still serving (start-first), under their kept names.
        serving_old = [_fresh(ctx, w.old) for w in work if w.old is not None and w.was_running and not w.stop_first]
        if ingress is not None and serving_old:
            sync_ingress(ctx, project, service, svc.env, ingress, _serving(ctx, project, service, serving_old))
            for old in serving_old:
                _drain(ctx, project, service, old, ingress.drain_timeout)
        if ingress is not None:
            sync_ingress(ctx, project, service, svc.env, ingress, _serving(ctx, project, service))
        # Out of rotation and drained: their stops (a whole stop_grace_period for an app
        # deaf to SIGTERM) leave the critical path; await_stops, restore and discard wait.
        for old in serving_old:
            stop_in_background(ctx, old, svc.env)
            ctx.emit("container.stopping", container=old.name, service=service, replica=old.replica,
                     reason="replaced", background=True)
    except BaseException as exc:
        # Put the batch back even when the controller went away (cancelled): the
        # previous release keeps serving, and a re-run starts from a clean state.
        calm = replace(ctx, cancelled=threading.Event())
        restored = _put_back(calm, project, service, svc.env, back_ingress,
                             [(w.replica, w.was_running) for w in work])
        if isinstance(exc, AgentError):
            exc.details = dict(exc.details or {}, restored=restored, batch=batch)
        raise
    ctx.emit("rollout.done", service=service, batch=batch, replicas=[w.replica for w in work])
    refresh_names(ctx, svc.env)
    containers = []
    for w in work:
        info = ctx.engine.container(w.new.id) if w.new is not None else None
        if info is not None:
            containers.append(ContainerOutcome(w.replica, info.id, info.name,
                                               "recreated" if w.old is not None else "created",
                                               info.state, info.health))
    for c in unchanged:
        c = ready.get(c.id, c)
        containers.append(ContainerOutcome(c.replica, c.id, c.name, "unchanged", c.state, c.health))
    return RolloutResult(service, bool(work), batch, tuple(sorted(containers, key=lambda c: c.replica)),
                         tuple(w.record() for w in work)).to_dict()


def _refuse_stale_order(req: RolloutRequest, svc: ServiceSpec, current: Dict[str, ContainerInfo],
                        ingress: Optional[IngressSettings]) -> None:
    """The safety net under the plan's order: a start-first replica whose running old
    container holds a host port the new one needs cannot be replaced that way (the new
    container would fail to start). The plan says stop-first for those; if it did not,
    it was made from a state the node no longer has: refused before anything changes."""
    for item in req.replicas:
        if item.order == STOP_FIRST:
            continue
        old = current.get(svc.container_name(item.replica))
        if old is None or old.state not in ("running", "restarting") or keepable(old, svc, item.replica):
            continue
        ports = _conflicting_ports(old, svc, ingress)
        if ports:
            raise AgentError(
                CONFLICT, "replica %d of %s was sent start-first, but its running container %s publishes host "
                "port %s, which the new container needs: it can only be replaced stop-first"
                % (item.replica, svc.service, old.name, ", ".join(ports)),
                {"service": svc.service, "replica": item.replica, "container": old.name, "ports": ports,
                 "fix": "re-run `orch up`: the plan is made from the nodes' current containers and replaces this "
                        "replica stop-first"})


def hold_healthy(ctx: Context, svc: ServiceSpec, containers: List[ContainerInfo], seconds: float) -> None:
    """Each container must stay running (and not unhealthy, and not restart) for `seconds`
    after it was ready: Nomad's min_healthy_time."""
    if seconds <= 0 or not containers:
        return
    start = ctx.clock()
    while True:
        ctx.check_cancelled()
        for c0 in containers:
            c = ctx.engine.container(c0.id)
            if c is None:
                raise AgentError(EXITED, "container %s was removed while it was being watched" % c0.name,
                                 {"service": svc.service, "replica": c0.replica, "container": c0.name})
            if c.state != "running" or c.restart_count > c0.restart_count:
                why = "exited with code %d" % c.exit_code if c.state in ("exited", "dead") else (
                    "restarted" if c.restart_count > c0.restart_count else "is %s" % c.state)
                raise container_failure(ctx, svc, c, EXITED, "%s %.1fs after it was ready (it must stay healthy for "
                               "min_healthy_time %.0fs)" % (why, ctx.clock() - start, seconds))
            if c.health == "unhealthy":
                raise container_failure(ctx, svc, c, UNHEALTHY, unhealthy_reason(c) + " (within min_healthy_time %.0fs)"
                               % seconds)
        if ctx.clock() - start >= seconds:
            break
        ctx.sleep(poll_interval(ctx.clock() - start))
    ctx.emit("container.stable", service=svc.service, containers=[c.name for c in containers], seconds=seconds)


# ----------------------------------------------------------------------------- restore


def _put_back(ctx: Context, project: str, service: str, env: str, ingress: Optional[IngressSettings],
              items: List[Any]) -> List[Dict[str, Any]]:
    """Best effort, for a failed batch: its errors must not hide the batch's own error."""
    if not items:
        return []
    try:
        return restore_replicas(ctx, project, service, env, ingress, items)
    except BaseException as exc:  # noqa: BLE001 - reported in the event; the caller raises its own error
        ctx.emit("rollout.restore_failed", service=service, error=str(getattr(exc, "message", exc)))
        return []


def restore_replicas(ctx: Context, project: str, service: str, env: str, ingress: Optional[IngressSettings],
                     items: List[Any]) -> List[Dict[str, Any]]:
    """Put each (replica, was_running) back on its kept container: the new one goes, the
    kept one gets its name back and runs again if it ran before. A replica without a kept
    container (it was new in this release) is removed, unless it failed: then it stays,
    stopped, for `orch logs`."""
    existing = ctx.engine.containers(L.filters(project, service))
    # A kept container whose stop is still under way (agent.stops) runs again only once it
    # stopped: started before, the stop would end it after the rollback.
    waited = [wait_stopped(ctx, c.id) for c in existing if L.is_retired(c.name)]
    if any(w is not None for w in waited):
        existing = ctx.engine.containers(L.filters(project, service))
    by_name = {c.name: c for c in existing}
    plan = []
    for replica, was_running in items:
        name = L.container_name(project, service, replica)
        plan.append((replica, bool(was_running), by_name.get(name), by_name.get(L.retired_name(name))))
    front = driver(ctx).frontend(project, service) if ingress is not None else None
    if ingress is not None and any(old is not None and _holds(old, ingress.port["published"])
                                   for _, _, _, old in plan):
        # The kept containers published the port themselves (the service was not behind the
        # ingress before this release): the port goes back to them, the frontend goes.
        if front is not None:
            driver(ctx).remove({"project": project, "service": service})
        ingress, front = None, None
    hitless = ingress is not None and front is not None
    if hitless:
        # Old containers back in rotation before the new ones are drained: no request fails.
        started = []
        for replica, was_running, new, old in plan:
            if old is not None and was_running and old.state != "running":
                ctx.engine.start(old.id)
                ctx.emit("container.start", container=old.name, service=service, replica=replica, id=old.id,
                         reason="rollback")
                started.append(old)
        _wait_running(ctx, started)
        back = [_fresh(ctx, old) for _, was_running, _, old in plan if old is not None and was_running]
        # New containers in rotation keep serving until the old ones are UP (then they are
        # drained below); new ones never let in (they failed HAProxy's checks) leave now.
        in_rotation = {x.get("name") for x in (front or {}).get("servers") or [] if x.get("state", "ready") == "ready"}
        unproven = [new for _, _, new, _ in plan
                    if new is not None and L.server_name(new.service, new.replica, new.id) not in in_rotation]
        if back:
            sync_ingress(ctx, project, service, env, ingress,  # type: ignore[arg-type]
                         _serving(ctx, project, service, back, exclude=unproven))
        for replica, was_running, new, old in plan:
            if new is not None:
                _drain(ctx, project, service, new, ingress.drain_timeout)  # type: ignore[union-attr]
    # A new container goes; but a failed one with nothing to go back to stays, stopped,
    # for `orch logs` (the next deploy replaces it).
    doomed = [new for _, _, new, old in plan
              if new is not None and (old is not None or _fresh(ctx, new).state in ("running", "restarting"))]
    remove_containers(ctx, doomed, "rollback")
    out = []
    for replica, was_running, new, old in plan:
        name = L.container_name(project, service, replica)
        if old is not None:
            ctx.engine.rename(old.id, name)
            if was_running and _fresh(ctx, old).state != "running":
                ctx.engine.start(old.id)
                ctx.emit("container.start", container=name, service=service, replica=replica, id=old.id,
                         reason="rollback")
            ctx.emit("container.restore", container=name, service=service, replica=replica, id=old.id)
        out.append({"replica": replica, "removed": new.id if new is not None and new in doomed else None,
                    "restored": old.id if old is not None else None})
    if ingress is not None:
        sync_ingress(ctx, project, service, env, ingress, _serving(ctx, project, service))
    return out


def _wait_running(ctx: Context, containers: List[ContainerInfo], budget: float = 60.0) -> None:
    """Until each restarted container runs (and is healthy, when it has a healthcheck)."""
    start = ctx.clock()
    waiting = {c.id: c for c in containers}
    while waiting:
        for cid in list(waiting):
            c = ctx.engine.container(cid)
            if c is None or c.state in ("exited", "dead"):
                raise AgentError(EXITED, "the kept container %s did not start again" % waiting[cid].name)
            if c.state == "running" and (not c.healthcheck or c.health == "healthy"):
                waiting.pop(cid)
        if waiting:
            if ctx.clock() - start > budget:
                raise AgentError(UNHEALTHY, "the kept containers %s did not become ready again within %.0fs"
                                 % (", ".join(sorted(c.name for c in waiting.values())), budget))
            ctx.sleep(poll_interval(ctx.clock() - start))


def op_restore(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Put replicas back on the containers kept by earlier rollouts (a release's rollback)."""
    req = RestoreRequest.from_dict(args)
    project, service, env = req.project, req.service, req.env
    items = [(r.replica, r.was_running) for r in req.replicas]
    refuse_foreign(ctx, project, env, "restore")
    ctx.emit("rollout.restore", service=service, replicas=[r for r, _ in items])
    restored = restore_replicas(ctx, project, service, env, req.ingress, items)
    refresh_names(ctx, env)
    return RestoreResult(service, tuple(Restored(r["replica"], r["removed"], r["restored"]) for r in restored)).to_dict()


# ----------------------------------------------------------------------------- retire, discard


def op_retire(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Stop and keep (renamed) replicas not wanted on this node any more (scaled down,
    moved, or the service left the node): a rollback puts them back."""
    req = RetireRequest.from_dict(args)
    project, service, env, ingress = req.project, req.service, req.env, req.ingress
    replicas = None if req.replicas is None else set(req.replicas)
    refuse_foreign(ctx, project, env, "retire")
    existing = ctx.engine.containers(L.filters(project, service))
    kept = {c.name: c for c in existing if L.is_retired(c.name)}
    doomed = [c for c in existing if not L.is_retired(c.name) and (replicas is None or c.replica in replicas)]
    drv = driver(ctx)
    front = drv.frontend(project, service)
    if front is not None:
        remaining = [c for c in _serving(ctx, project, service) if c.id not in {d.id for d in doomed}]
        if ingress is None or not remaining:
            drv.remove({"project": project, "service": service})
        else:
            for c in doomed:
                _drain(ctx, project, service, c, ingress.drain_timeout)
    out = []
    for c in doomed:
        was_running = c.state in ("running", "restarting")
        if was_running:
            ctx.engine.stop(c.id)
        name = L.retired_name(c.name)
        if name in kept:  # from a release before the previous one
            remove_container(ctx, kept[name], "older kept container")
        ctx.engine.rename(c.id, name)
        ctx.emit("container.retire", container=name, service=service, replica=c.replica, id=c.id, running=False)
        out.append(ReplicaChange(c.replica, KeptContainer(c.id, name, was_running, c.labels.get(L.RELEASE, ""),
                                                          c.image)))
    if front is not None and ingress is not None:
        remaining = _serving(ctx, project, service)
        if remaining:
            sync_ingress(ctx, project, service, env, ingress, remaining)
    refresh_names(ctx, env)
    return RetireResult(service, tuple(out)).to_dict()


def op_discard(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Remove the containers kept for a rollback (the release that replaced them is live)."""
    req = DiscardRequest.from_dict(args)
    project, service = req.project, req.service
    refuse_foreign(ctx, project, req.env, "discard")
    doomed = [c for c in ctx.engine.containers(L.filters(project, service)) if L.is_retired(c.name)]
    # One still stopping in the background (a SIGTERM-deaf app takes its whole grace
    # period) is removed by a helper once stopped: the release is live, `orch up` is done.
    # Each stop gets DISCARD_GRACE from its own start, so all of them together wait at
    # most that long, and a stop begun batches ago not at all. Oldest stops first: once
    # one replica of the service outlived that grace (it ignores SIGTERM), its younger
    # ones are handed over without waiting either.
    began = {c.id: stop_began(ctx, c.id) for c in doomed}
    deaf: set = set()
    later = set()
    for c in sorted(doomed, key=lambda c: began[c.id] if began[c.id] is not None else float("inf")):
        grace = 0.0 if c.service in deaf else DISCARD_GRACE
        if remove_when_stopped(ctx, c, req.env, grace):
            later.add(c.id)
            deaf.add(c.service)
    remove_containers(ctx, [c for c in doomed if c.id not in later], "the release that replaced it is live")
    pruned = prune_files(ctx, project, service)
    if pruned:
        ctx.emit("files.prune", files=pruned)
    return DiscardResult(tuple(RemovedContainer(c.id, c.name, c.service, c.replica) for c in doomed),
                         tuple(pruned)).to_dict()


ROLLOUT_OPERATIONS = {
    "rollout": op_rollout,
    "restore": op_restore,
    "retire": op_retire,
    "discard": op_discard,
}
ROLLOUT_OPERATIONS.update(STOP_OPERATIONS)

"""The fixed operations the agent performs. Each takes (ctx, args) and returns a dict.

Arguments are validated here (or in agent.wire.spec) before anything touches the engine.
Operations only ever select containers, networks and volumes carrying the io.orch.*
labels (agent.wire.labels), so nothing else on the node is touched.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.certs.ops import CERT_OPERATIONS_TABLE
from agent.basics import op_hello, op_info, op_state
from agent.context import Context
from agent.create import create_body
from agent.engine import ContainerInfo, LineSplitter
from agent.ingress import INGRESS_OPERATIONS
from agent.ledger import LEDGER_OPERATIONS
from agent.lock import LOCK_OPERATIONS
from agent.look import LOOK_OPERATIONS
from agent.owner import owned, refuse_foreign
from agent.mesh.ops import MESH_OPERATIONS
from agent.prune import PRUNE_OPERATIONS
from agent.rollout import ROLLOUT_OPERATIONS
from agent.transfer import TRANSFER_OPERATIONS
from agent.steps import (
    DEFAULT_COMPLETION_TIMEOUT,
    DEFAULT_MIN_RUNNING,
    WAIT_MODES,
    check_name_conflicts,
    ensure_image,
    ensure_networks,
    ensure_volumes,
    keepable,
    pull_auth,
    ready_now,
    remove_container,
    remove_containers,
    wait_ready,
    write_files,
)
from agent.wire import labels as L
from agent.wire.messages import (
    RemovedContainer,
    RemoveRequest,
    RemoveResult,
)
from agent.wire.protocol import (
    EXITED,
    NOT_FOUND,
    AgentError,
    BadRequest,
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
    require,
)
from agent.wire.spec import ServiceSpec


# ----------------------------------------------------------------------------- apply


def op_apply(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Converge one service's containers on this node to args["spec"] (a ServiceSpec).

    Idempotent, and safe to re-run after being killed at any point: containers are
    found by label and matched on the config hash, and anything half-done (created but
    not started, stopped, unhealthy, wrongly named) is removed and made again.
    """
    check_keys(args, ("spec", "auth", "min_running", "health_margin", "wait", "timeout"), "apply")
    svc = ServiceSpec.from_dict(require(args, "spec", "apply"))
    auth = pull_auth(args.get("auth"), svc.container.image)
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
    check_name_conflicts(ctx, svc)
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
        keep = next((c for c in group if keepable(c, svc, r)), None)
        for c in group:
            if c is not keep:
                replaced.append((c, "config changed" if c.config_hash != svc.config_hash
                                 else "not running (%s)" % c.state))
        if keep is not None:
            outcome[r] = {"action": "unchanged", "container": keep}
            if not ready_now(keep, svc, wait):
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
        remove_container(ctx, c, why)
    remove_containers(ctx, extra, "replica not wanted on this node")
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


# ----------------------------------------------------------------------------- remove


def op_remove(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Remove a project's (or one service's) containers; with the whole project, also its
    networks, files, and (remove_volumes) its volumes. Only `env`'s objects ("" when not
    given: only those without an environment label); another environment's are left."""
    req = RemoveRequest.from_dict(args)
    project, service, env = req.project, req.service, req.env
    replicas = None if req.replicas is None else set(req.replicas)
    whole = req.whole
    remove_networks = whole if req.remove_networks is None else req.remove_networks
    remove_volumes = req.remove_volumes
    doomed = [
        c for c in ctx.engine.containers(L.filters(project, service, env))
        if (replicas is None or c.replica in replicas) and not L.other_env(c.labels, env)
    ]
    remove_containers(ctx, doomed, "remove requested")
    out: Dict[str, Any] = {"networks": [], "volumes": [], "ingress": []}
    if replicas is None:  # the service (or the project) leaves the node: so does its ingress port
        from agent.ingress import driver, ingress_state

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
    return RemoveResult(tuple(RemovedContainer(c.id, c.name, c.service, c.replica) for c in doomed),
                        tuple(out["networks"]), tuple(out["volumes"]), tuple(out["ingress"])).to_dict()


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
# The release ledger, the deploy lock, the ingress, the rolling update, the mesh and the
# looks (stats, top, inspect) have modules of their own.

OPERATIONS.update(LEDGER_OPERATIONS)
OPERATIONS.update(LOCK_OPERATIONS)
OPERATIONS.update(INGRESS_OPERATIONS)
OPERATIONS.update(ROLLOUT_OPERATIONS)
OPERATIONS.update(MESH_OPERATIONS)
OPERATIONS.update(LOOK_OPERATIONS)
OPERATIONS.update(PRUNE_OPERATIONS)
OPERATIONS.update(CERT_OPERATIONS_TABLE)
OPERATIONS.update(TRANSFER_OPERATIONS)

"""The node's ingress: one HAProxy per node in front of the published HTTP ports of
ingress-marked services, so replicas can be swapped without a refused connection.

Why: a published host port belongs to one container, so a new container cannot take
traffic before the old one has left. With an ingress the port belongs to HAProxy;
containers of such a service publish nothing, and HAProxy forwards to them by address.

Addresses. A container of an ingress service is created WITHOUT the service's host port
(the controller leaves `published` out of its ContainerSpec; the ingress owns that port
on the node). HAProxy runs in the node's network namespace, where the container's IP on
its Docker network (by default the project network, `<project>_default`) is reachable
through the network's bridge; `container_address()` looks that IP up by container name.
A backend may give `address` instead (e.g. 127.0.0.1 for a host-network container).

The HAProxy process, its files and its runtime API are agent.haproxy's.

Operations (registered in agent.operations.OPERATIONS):
  ingress_sync    {project, env?, service, port: {published, target, protocol: http,
                  host_ip?}, health: {path, interval?, timeout?, rise?, fall?, host?},
                  backends: [{name, container, address?}], network?, timeout?,
                  drain_timeout?, route?} -> converge the service's frontend/backend to exactly
                  these servers and wait until every one is UP in HAProxy's health checks
                  (error kind "unhealthy" after `timeout` seconds). `route`: the service's
                  host names on the node's shared HTTP/HTTPS ports (agent.edge; then
                  `port.published` may be 0).
  ingress_drain   {project, env?, service, server, timeout?} -> drain, then maintenance:
                  {sessions, remaining, drained, seconds, state: "maint"}; the caller may
                  then stop the container.
  ingress_remove  {project, env?, service} -> the service's frontend and backend are gone (the
                  port is free again); HAProxy stops when no service is left.
  sync, drain and remove refuse (conflict) a frontend made for another environment than
  `env` ("" when absent), see agent.owner.
  ingress_status  {} -> {installed, version, running, pid, worker_pid, frontends: [...],
                  problems, ok} for `orch ps` and `orch nodes check`.
  ingress_start   {} -> start HAProxy from the saved state if it is not running (after
                  a node reboot); the status.
Error kinds: bad_request, not_found (no haproxy binary, no such service/server or
container), conflict (port taken), unhealthy, exited (container not running), cancelled,
and "ingress" (HAProxy refused a config, did not start or reload, or its socket failed).

Python 3.9 compatible; stdlib, the docker SDK (through agent.engine) and Jinja2 (bundled,
pure Python). Never runs a shell: HAProxy is started with a fixed argv, and every value in
the config or a runtime command was validated first (names, ports, IPv4 addresses, paths).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Set

from agent.haproxy import (
    HAProxy,
    check_passed,
    cmd_add_server,
    cmd_del_server,
    cmd_state,
    cmds_warm,
    plan_servers,
    render_config,
    serving,
    warmed,
)
from agent.certs.store import loaded_files, route_certs
from agent.edge import check_routes
from agent.ingress_files import POLL, Paths, ingress_lock, load_state, paths_for, save_state, write_atomic
from agent.wire import labels as L
from agent.wire.ingress import (
    INGRESS,
    Server,
    ServiceIngress,
    SyncRequest,
    parse_drain,
    parse_remove,
    parse_sync,
    service_key,
)
from agent.wire.protocol import (
    CONFLICT,
    ENGINE,
    EXITED,
    NOT_FOUND,
    UNHEALTHY,
    AgentError,
    check_keys,
    check_name,
)

NOTE_EVERY = 2.0  # seconds between progress events of a long wait


# ----------------------------------------------------------------------------- containers


def inspect_container(engine: Any, ref: str) -> Optional[Dict[str, Any]]:
    """The Engine API's raw inspect of a container, or None if there is none by that name."""
    fn = getattr(engine, "inspect_container", None)  # a test double may provide it
    if fn is None:
        api = getattr(engine, "api", None)
        if api is None:
            raise AgentError(ENGINE, "this engine cannot inspect containers")
        fn = api.inspect_container
    try:
        return fn(ref)
    except Exception as exc:
        if type(exc).__name__ == "NotFound":
            return None
        if isinstance(exc, AgentError):
            raise
        raise AgentError(ENGINE, "inspect container %s: %s" % (ref, exc))


def container_address(engine: Any, container: str, network: str = "", project: str = "") -> Dict[str, Any]:
    """A container's IPv4 address on its Docker network, by container name.

    network: the engine's network name; by default the project's own network
    (`<project>_default` first, then any other `<project>_*`), else the only one it has.
    Returns {"address", "network", "published": [host ports it publishes], "labels"}.
    """
    attrs = inspect_container(engine, container)
    if attrs is None:
        raise AgentError(NOT_FOUND, "no container %s on this node" % container, {"container": container})
    state = (attrs.get("State") or {}).get("Status", "")
    if state != "running":
        raise AgentError(EXITED, "container %s is not running (state %s)" % (container, state or "unknown"),
                         {"container": container})
    settings = attrs.get("NetworkSettings") or {}
    nets = {k: (v or {}).get("IPAddress") or "" for k, v in (settings.get("Networks") or {}).items()}
    published = sorted(set(int(b["HostPort"]) for bs in (settings.get("Ports") or {}).values() for b in (bs or [])
                           if b.get("HostPort")))
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    if network:
        chosen = network
    else:
        own = sorted(n for n in nets if project and n.startswith(project + "_") and nets[n])
        preferred = L.network_name(project, "default") if project else ""
        with_ip = sorted(n for n in nets if nets[n])
        chosen = preferred if preferred in own else (own[0] if own else (with_ip[0] if len(with_ip) == 1 else ""))
        if not chosen:
            raise AgentError(NOT_FOUND, "container %s is on %s; say which network the ingress should use"
                             % (container, ", ".join(sorted(nets)) or "no network"),
                             {"container": container, "networks": sorted(nets),
                              "fix": "pass 'network', or 'address' (127.0.0.1 for host networking)"})
    if not nets.get(chosen):
        raise AgentError(NOT_FOUND, "container %s has no IPv4 address on network %s" % (container, chosen),
                         {"container": container, "networks": sorted(nets)})
    return {"address": nets[chosen], "network": chosen, "published": published, "labels": labels}


# ----------------------------------------------------------------------------- operations


def _paths(ctx: Any) -> Paths:
    return paths_for(ctx.data_dir())


def _hap(ctx: Any, paths: Paths) -> HAProxy:
    return HAProxy(paths, clock=getattr(ctx, "clock", time.monotonic), sleep=getattr(ctx, "sleep", time.sleep))


def _resolve(ctx: Any, req: SyncRequest) -> List[Server]:
    svc = req.service
    out = []
    for b in req.backends:
        if b.address:
            out.append(Server(b.name, b.container, b.address))
            continue
        found = container_address(ctx.engine, b.container, req.network, svc.project)
        owner = found["labels"].get(L.PROJECT)
        if owner != svc.project:
            raise AgentError(CONFLICT, "container %s is not a container orch manages for project %s"
                             % (b.container, svc.project), {"container": b.container})
        if svc.published in found["published"]:
            raise AgentError(
                CONFLICT, "container %s publishes host port %d itself, which the ingress must own"
                % (b.container, svc.published),
                {"container": b.container, "fix": "create the containers of an ingress service without "
                                                  "publishing that port (drop 'published' from their spec)"})
        out.append(Server(b.name, b.container, found["address"]))
    return out


def _port_free(host_ip: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host_ip, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _check_port(services: Dict[str, ServiceIngress], svc: ServiceIngress, running: bool) -> None:
    check_routes(services, svc, running, _port_free)  # host names and the shared ports (agent.edge)
    if not svc.published:  # reached by host name only
        return
    for other in services.values():
        if other.key != svc.key and other.published == svc.published:
            raise AgentError(CONFLICT, "port %d on this node already belongs to the ingress of %s"
                             % (svc.published, other.key), {"port": svc.published, "service": other.key})
    old = services.get(svc.key)
    ours = running and old is not None and old.published == svc.published
    if not ours and not _port_free(svc.host_ip, svc.published):
        raise AgentError(CONFLICT, "port %d is in use on this node" % svc.published,
                         {"port": svc.published,
                          "fix": "stop what listens there (a container still publishing it?) or pick another port"})


def _apply_config(ctx: Any, hap: HAProxy, services: Dict[str, ServiceIngress]) -> str:
    """Render, check, install; then reload the running HAProxy or start one. 'reloaded'|'started'."""
    previous = hap.write_config(render_config(hap.paths, services))
    try:
        if hap.pid():
            hap.save_server_state()
            hap.reload()
            ctx.emit("ingress.reload", config=hap.paths.config)
            return "reloaded"
        hap.start()
        ctx.emit("ingress.start", config=hap.paths.config, pid=hap.pid())
        return "started"
    except AgentError:
        if previous is not None:  # leave the file as what runs
            write_atomic(hap.paths.config, previous.encode("utf-8"))
        raise


def _mirror(hap: HAProxy, services: Dict[str, ServiceIngress]) -> None:
    """Make state.json and haproxy.cfg say what the runtime now has (no reload)."""
    save_state(hap.paths, services)
    hap.write_config(render_config(hap.paths, services))


def _server_row(rows: List[Dict[str, str]], backend: str, server: str) -> Dict[str, str]:
    for r in rows:
        if r.get("pxname") == backend and r.get("svname") == server:
            return r
    return {}


def _drain(ctx: Any, hap: HAProxy, backend: str, server: str, timeout: float) -> Dict[str, Any]:
    """drain -> sessions (and old workers) at 0, or timeout -> maint."""
    start = ctx.clock()
    hap.do(cmd_state(backend, server, "drain"))
    ctx.emit("ingress.server", backend=backend, server=server, action="drain")
    first: Optional[int] = None
    left = 0
    old_workers: List[int] = []
    drained = False
    zero_since: Optional[float] = None
    last_note = start
    while True:
        row = _server_row(hap.stat(), backend, server)
        left = int(row.get("scur") or 0) + int(row.get("qcur") or 0)
        if first is None:
            first = left
        now = ctx.clock()
        if left == 0:
            # An old worker (of a reload moments ago) may still send it requests.
            try:
                old_workers = hap.proc()["old_workers"]
            except AgentError:
                old_workers = []
            if not old_workers:
                if zero_since is None:
                    zero_since = now
                if now - zero_since >= 2 * POLL:  # twice in a row, so nothing was in flight to it
                    drained = True
                    break
            else:
                zero_since = None
        else:
            zero_since = None
        if now - start >= timeout:
            break
        if now - last_note >= NOTE_EVERY:
            last_note = now
            ctx.emit("ingress.draining", backend=backend, server=server, sessions=left,
                     seconds=round(now - start, 1))
        ctx.check_cancelled()
        ctx.sleep(POLL)
    hap.do(cmd_state(backend, server, "maint"))
    ctx.emit("ingress.server", backend=backend, server=server, action="maint", sessions=left)
    return {"sessions": first or 0, "remaining": left, "old_workers": len(old_workers), "drained": drained,
            "seconds": round(ctx.clock() - start, 2)}


def _delete(ctx: Any, hap: HAProxy, backend: str, server: str, timeout: float = 5.0) -> bool:
    deadline = ctx.clock() + timeout
    while True:
        out = hap.runtime(cmd_del_server(backend, server)).strip()
        if "deleted" in out.lower() or "no such server" in out.lower():
            ctx.emit("ingress.server", backend=backend, server=server, action="delete")
            return True
        if ctx.clock() > deadline:  # still has connections: stays in maintenance, retried next sync
            ctx.emit("ingress.server", backend=backend, server=server, action="delete-later", answer=out)
            return False
        ctx.sleep(0.25)


def _wait_up(ctx: Any, hap: HAProxy, svc: ServiceIngress, warming: List[str], keep: List[str],
             timeout: float) -> None:
    """Until each warming server passed its checks (then: ready) and each kept one is UP."""
    start = ctx.clock()
    last_note = start
    pending = list(warming)
    unsure = list(keep)
    while pending or unsure:
        rows = hap.stat()
        for name in list(pending):
            if warmed(_server_row(rows, svc.backend, name)):
                hap.do(cmd_state(svc.backend, name, "ready"))
                pending.remove(name)
                ctx.emit("ingress.server", backend=svc.backend, server=name, action="ready",
                         seconds=round(ctx.clock() - start, 1))
        for name in list(unsure):
            row = _server_row(rows, svc.backend, name)
            if serving(row) and (check_passed(row) or not row.get("check_status")):
                unsure.remove(name)
        if not pending and not unsure:
            return
        now = ctx.clock()
        if now - start > timeout:
            bad = []
            for name in pending + unsure:
                row = _server_row(rows, svc.backend, name)
                srv = svc.server(name)
                bad.append({"server": name, "container": srv.container if srv else "",
                            "address": srv.address if srv else "", "status": row.get("status", "?"),
                            "check": row.get("check_status", ""), "check_desc": row.get("check_desc", "")})
            raise AgentError(
                UNHEALTHY,
                "ingress of %s: %s not UP in HAProxy's health checks (GET %s on port %d) within %.0fs: %s"
                % (svc.key, ", ".join(b["server"] for b in bad), svc.health.path, svc.target, timeout,
                   "; ".join(("%s %s %s %s" % (b["server"], b["status"], b["check"], b["check_desc"])).strip()
                             for b in bad)),
                {"servers": bad, "fix": "make GET %s answer 2xx/3xx on the container's port %d, or fix the "
                                        "ingress health path" % (svc.health.path, svc.target)})
        if now - last_note >= NOTE_EVERY:
            last_note = now
            ctx.emit("ingress.waiting", service=svc.key, servers=sorted(pending + unsure),
                     seconds=round(now - start))
        ctx.check_cancelled()
        ctx.sleep(POLL)


def op_ingress_sync(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Converge one service's frontend and backend to exactly the given servers."""
    req = parse_sync(args)
    started_at = ctx.clock()
    desired = _resolve(ctx, req)
    paths = _paths(ctx)
    with ingress_lock(paths, ctx.cancelled, clock=ctx.clock, sleep=ctx.sleep):
        hap = _hap(ctx, paths)
        dynamic = hap.dynamic()
        services = load_state(paths)
        old = services.get(req.service.key)
        if old is not None and old.env and old.env != req.service.env:
            # the frontend of the same project and service for another environment (agent.owner)
            raise AgentError(CONFLICT, "the ingress of %s on port %d belongs to environment %s, not %s"
                             % (old.key, old.published, old.env, req.service.env or "(none)"),
                             {"fix": "remove %s's deployment of %s from this node first (orch down --env %s)"
                                     % (old.env, old.project, old.env)})
        svc = req.service.with_servers(desired)
        running = hap.pid() is not None
        runtime = hap.servers_state(svc.backend) if running and old is not None else None
        process = ""
        if not running or old is None or old.shape() != svc.shape() or runtime is None or not dynamic:
            _check_port(services, svc, running)
            if dynamic:
                # Keep the servers that stay as they are (their states come back from the
                # server-state file); the new ones are added and warmed up below. A new
                # target port makes every server a new one.
                same_port = old is not None and old.target == svc.target
                kept = [s for s in (old.servers if old and same_port else ()) if svc.server(s.name) is not None
                        and svc.server(s.name).address == s.address]  # type: ignore[union-attr]
                services[svc.key] = svc.with_servers(kept)
            else:
                services[svc.key] = svc
            process = _apply_config(ctx, hap, services)
            save_state(paths, services)
            runtime = hap.servers_state(svc.backend) or {}
        if dynamic:
            plan = plan_servers(runtime or {}, desired, svc.target)
            pending = []
            for name in plan.remove:
                r = (runtime or {})[name]
                if not r.maint:
                    _drain(ctx, hap, svc.backend, name, req.drain_timeout)
                else:
                    ctx.emit("ingress.server", backend=svc.backend, server=name, action="maint")
                _delete(ctx, hap, svc.backend, name)
            for s in plan.add:
                hap.do(cmd_add_server(svc.backend, s, svc.target, svc.health), expect="New server registered")
                ctx.emit("ingress.server", backend=svc.backend, server=s.name, action="add", address=s.address)
                pending.append(s.name)
            pending += list(plan.rewarm)
            for name in pending:
                for cmd in cmds_warm(svc.backend, name):
                    hap.do(cmd)
            services[svc.key] = svc.with_servers(
                [replace(s, state="warming" if s.name in pending else "ready") for s in desired])
            _mirror(hap, services)
            try:
                _wait_up(ctx, hap, svc, pending, list(plan.keep), req.timeout)
            finally:  # record which warming servers made it (all of them, unless it failed)
                try:
                    rows = hap.stat()
                except AgentError:
                    rows = []
                services[svc.key] = svc.with_servers(
                    [replace(s, state="ready" if s.name not in pending or serving(_server_row(rows, svc.backend, s.name))
                             else "warming") for s in desired])
                _mirror(hap, services)
            changes = plan.to_dict()
        else:
            _wait_up(ctx, hap, svc, [], [s.name for s in desired], req.timeout)
            changes = {"remove": sorted(set(s.name for s in (old.servers if old else ())) - set(
                s.name for s in desired)), "add": [s.name for s in desired], "rewarm": [], "keep": []}
        status = _service_status(services[svc.key], hap.stat())
    status.update({"process": process, "changes": changes, "seconds": round(ctx.clock() - started_at, 2)})
    return status


def op_ingress_drain(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Stop sending new requests to one server, wait for its requests to end, maintenance."""
    project, service, server, timeout = parse_drain(args)
    paths = _paths(ctx)
    with ingress_lock(paths, ctx.cancelled, clock=ctx.clock, sleep=ctx.sleep):
        hap = _hap(ctx, paths)
        services = load_state(paths)
        svc = services.get(service_key(project, service))
        if svc is None:
            raise AgentError(NOT_FOUND, "no ingress for %s on this node" % service_key(project, service))
        if svc.server(server) is None:
            raise AgentError(NOT_FOUND, "the ingress of %s has no server %s (it has: %s)"
                             % (svc.key, server, ", ".join(s.name for s in svc.servers) or "none"))
        if hap.pid() is None:
            raise AgentError(INGRESS, "HAProxy is not running on this node",
                             {"fix": "run ingress_start (or ingress_sync) to bring it back"})
        out = _drain(ctx, hap, svc.backend, server, timeout)
        services[svc.key] = svc.with_servers([replace(s, state="maint") if s.name == server else s
                                              for s in svc.servers])
        _mirror(hap, services)
    out.update({"project": project, "service": service, "server": server, "state": "maint"})
    return out


def op_ingress_remove(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    project, service = parse_remove(args)
    paths = _paths(ctx)
    with ingress_lock(paths, ctx.cancelled, clock=ctx.clock, sleep=ctx.sleep):
        hap = _hap(ctx, paths)
        services = load_state(paths)
        svc = services.pop(service_key(project, service), None)
        if svc is None:
            return {"removed": False, "process": "", "running": hap.pid() is not None}
        process = ""
        if not services:
            process = "stopped" if hap.stop() else ""
            save_state(paths, services)
            try:
                os.unlink(paths.config)
            except FileNotFoundError:
                pass
        else:
            if hap.pid() is not None:
                process = _apply_config(ctx, hap, services)
            else:
                hap.write_config(render_config(paths, services))
            save_state(paths, services)
        ctx.emit("ingress.remove", service=svc.key, port=svc.published)
        return {"removed": True, "port": svc.published, "process": process, "running": hap.pid() is not None}


def _route(svc: ServiceIngress, data_dir: str, loaded: Optional[Set[str]]) -> Dict[str, Any]:
    """The service's host names and how they are served; per name, its certificate here."""
    out = svc.route.to_dict()
    out["certs"] = route_certs(data_dir, svc.route.hosts, loaded) if svc.route.tls else {}
    return out


def _service_status(svc: ServiceIngress, rows: Optional[List[Dict[str, str]]],
                    route: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    rows = rows or []
    front = _server_row(rows, svc.frontend, "FRONTEND")
    servers = []
    for s in svc.servers:
        row = _server_row(rows, svc.backend, s.name)
        servers.append({
            "name": s.name, "container": s.container, "address": s.address, "port": svc.target,
            "state": s.state, "status": row.get("status", "absent" if rows else "unknown"),
            "check": row.get("check_status", ""), "check_desc": row.get("check_desc", ""),
            "sessions": int(row.get("scur") or 0), "total": int(row.get("stot") or 0),
        })
    return {
        "project": svc.project, "service": svc.service, "env": svc.env,
        "frontend": svc.frontend, "backend": svc.backend,
        "port": {"published": svc.published, "target": svc.target, "protocol": svc.protocol,
                 "host_ip": svc.host_ip},
        "health": svc.health.to_dict(), "route": route or svc.route.to_dict(),
        "status": front.get("status", "absent" if rows else "unknown") if svc.published else "routed",
        "sessions": int(front.get("scur") or 0),
        "servers": servers,
    }


def status(paths: Paths, hap: HAProxy) -> Dict[str, Any]:
    services = load_state(paths)
    out: Dict[str, Any] = {"installed": hap.installed(), "binary": "", "version": "", "dynamic_servers": False,
                           "running": False, "pid": None, "worker_pid": None, "uptime_s": None,
                           "paths": paths.to_dict(), "frontends": [], "problems": []}
    problems: List[str] = out["problems"]
    if out["installed"]:
        out["binary"] = hap.binary
        try:
            out["version"] = hap.version()[0]
            out["dynamic_servers"] = hap.dynamic()
        except (AgentError, OSError, subprocess.SubprocessError) as exc:
            problems.append("cannot run %s -v: %s" % (hap.binary, exc))
    elif services:
        problems.append("HAProxy is not installed, but %d ingress service(s) are configured" % len(services))
    pid = hap.pid()
    rows: Optional[List[Dict[str, str]]] = None
    if pid is not None:
        out["running"], out["pid"] = True, pid
        try:
            info = hap.info()
            out["worker_pid"] = int(info.get("Pid") or 0) or None
            out["uptime_s"] = int(info.get("Uptime_sec") or 0)
            rows = hap.stat()
        except AgentError as err:
            problems.append(err.message)
    elif services:
        problems.append("HAProxy is not running, but %d ingress service(s) are configured (run ingress_start)"
                        % len(services))
    tls = any(s.route.tls for s in services.values())
    loaded = loaded_files(hap) if rows is not None and tls else None
    for key in sorted(services):
        st = _service_status(services[key], rows, _route(services[key], os.path.dirname(paths.dir), loaded))
        out["frontends"].append(st)
        if rows is None:
            continue
        if st["status"] not in ("OPEN", "routed"):
            problems.append("%s: frontend on port %d is %s" % (key, services[key].published, st["status"]))
        for s in st["servers"]:
            if s["state"] == "ready" and s["status"] != "UP":
                problems.append("%s: server %s (%s) is %s %s" % (key, s["name"], s["container"], s["status"],
                                                                s["check_desc"] or s["check"]))
        if not [s for s in st["servers"] if s["status"] == "UP"]:
            problems.append("%s: no server is UP" % key)
    out["ok"] = not problems
    return out


def op_ingress_status(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, (), "ingress_status")
    paths = _paths(ctx)
    return status(paths, _hap(ctx, paths))


def op_ingress_start(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Start HAProxy from the saved state when it is not running (e.g. after a reboot)."""
    check_keys(args, (), "ingress_start")
    paths = _paths(ctx)
    with ingress_lock(paths, ctx.cancelled, clock=ctx.clock, sleep=ctx.sleep):
        hap = _hap(ctx, paths)
        services = load_state(paths)
        started = False
        if services and hap.pid() is None:
            hap.write_config(render_config(paths, services))
            hap.start()
            started = True
            ctx.emit("ingress.start", config=paths.config, pid=hap.pid())
    out = status(paths, hap)
    out["started"] = started
    return out


# ----------------------------------------------------------------------------- for agent.rollout, agent.owner


class IngressDriver:
    """The ingress operations of this module, called in-process by a rollout (unit tests put a fake
    in Context.ingress)."""

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def frontend(self, project: str, service: str) -> Optional[Dict[str, Any]]:
        svc = load_state(_paths(self.ctx)).get(service_key(project, service))
        return None if svc is None else svc.to_dict()

    def sync(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return op_ingress_sync(self.ctx, args)

    def drain(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return op_ingress_drain(self.ctx, args)

    def remove(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return op_ingress_remove(self.ctx, args)


def driver(ctx: Any) -> Any:
    return ctx.ingress if ctx.ingress is not None else IngressDriver(ctx)


def ingress_state(ctx: Any, project: str) -> Dict[str, Any]:
    """The project's ingress frontends on this node, for `state` (the controller's plan
    checks them against the containers): {service: {port, health, servers}, ...}."""
    try:
        paths = _paths(ctx)
        services = [s for s in load_state(paths).values() if s.project == project]
        hap = _hap(ctx, paths)
        running = bool(services) and hap.pid() is not None
        loaded = loaded_files(hap) if running and any(s.route.tls for s in services) else None
    except (OSError, ValueError, AgentError):
        return {}
    return {s.service: {"port": {"published": s.published, "target": s.target, "protocol": s.protocol,
                                 "host_ip": s.host_ip}, "env": s.env,
                        "health": s.health.to_dict(), "servers": sorted(x.name for x in s.servers),
                        "running": running, "route": _route(s, ctx.data_dir(), loaded)}
            for s in services}


def _for_env(op: Callable[[Any, Dict[str, Any]], Dict[str, Any]]) -> Callable[[Any, Dict[str, Any]], Dict[str, Any]]:
    """ingress_drain / ingress_remove as the controller may call them: with the `env` they
    act for ("" when absent), and never on another environment's frontend (agent.owner).
    agent.rollout calls the ops themselves, after its own guard."""

    def guarded(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
        args = dict(args)
        env = args.pop("env", None)
        env = check_name(env, "env") if env else ""
        if isinstance(args.get("project"), str) and isinstance(args.get("service"), str):
            svc = load_state(_paths(ctx)).get(service_key(args["project"], args["service"]))
            if svc is not None and svc.env and svc.env != env:
                raise AgentError(CONFLICT, "the ingress of %s on port %d belongs to environment %s, not %s"
                                 % (svc.key, svc.published, svc.env, env or "(none)"),
                                 {"fix": "act for %s (orch ... --env %s)" % (svc.env, svc.env)})
        return op(ctx, args)

    return guarded


INGRESS_OPERATIONS = {
    "ingress_sync": op_ingress_sync,
    "ingress_drain": _for_env(op_ingress_drain),
    "ingress_remove": _for_env(op_ingress_remove),
    "ingress_status": op_ingress_status,
    "ingress_start": op_ingress_start,
}

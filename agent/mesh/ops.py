"""Agent operations of the mesh, and the mesh part of `state`.

    mesh_join   {env}            make this node's key pair (once); answer its public key
    mesh_apply  {config}         bring link, firewall, DNS and the daemon to a MeshConfig
    mesh_leave  {env, project}   the environment's link, DNS and daemon go with the last
                                 project's mesh networks (orch down removes those first)
    mesh_refresh {env}           the daemon's tick now: names current before dependents start
    mesh_status {env}            the mesh as this node sees it (orch nodes check)

Host changes go through Context.mesh_host (agent.mesh.host.NodeHost by default).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from agent.mesh import firewall
from agent.mesh.paths import MeshPaths, write_atomic
from agent.mesh.records import MESH_SLOT, mesh_networks
from agent.wire import labels as L
from agent.wire.mesh import MeshConfig, MeshState, interface_name, node_block
from agent.wire.protocol import AgentError, BadRequest, check_keys, check_name, check_project, require

NOT_READY = "mesh"  # AgentError kind: the node lacks what the mesh needs


def host_of(ctx: Any) -> Any:
    host = getattr(ctx, "mesh_host", None)
    if host is None:
        from agent.mesh.host import NodeHost

        host = NodeHost()
    return host


def paths_of(ctx: Any, env: str) -> MeshPaths:
    return MeshPaths.of(ctx.data_dir(), env)


def _env_networks(ctx: Any, env: str) -> list:
    """The engine's networks of this environment (one engine call)."""
    return ctx.reads.networks(["%s=%s" % (L.ENV, env)])


def _engine_networks(ctx: Any, env: str, raw: Any = None) -> Dict[str, Any]:
    """Its mesh networks, by engine name (from `raw` when the caller listed them already)."""
    raw = _env_networks(ctx, env) if raw is None else raw
    return mesh_networks([{"Name": n["name"], "Id": n["id"], "Labels": n["labels"]} for n in raw], env)


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def state_section(ctx: Any, env: str) -> Dict[str, Any]:
    """The mesh as `state` reports it (agent.wire.mesh.MeshState as a dict)."""
    host = host_of(ctx)
    paths = paths_of(ctx, env)
    iface = interface_name(env)
    cfg = _read_json(paths.config)
    plain = _env_networks(ctx, env)
    nets = _engine_networks(ctx, env, plain)
    problems = list(host.problems())
    running: Dict[str, bool] = {}
    outdated: List[str] = []
    peers = []
    if cfg:
        address = MeshConfig.from_dict(cfg).address if cfg.get("cidr") else ""
        running = {"link": host.link_up(iface), "dns": host.dns_running(paths), "daemon": host.daemon_running(paths)}
        # Running, but started by another orch (other arguments, other code): the next
        # mesh_apply restarts them with this agent's.
        outdated = [part for part, current in (("dns", host.dns_current(paths, address)),
                                               ("daemon", host.daemon_current(paths)))
                    if running[part] and not current]
        status = _read_json(paths.status)
        seen = {p.get("node"): p for p in status.get("peers") or []}
        wg = {p["public_key"]: p for p in host.link_peers(iface)}
        for p in cfg.get("peers") or []:
            w = wg.get(p.get("public_key"), {})
            s = seen.get(p.get("node"), {})
            peers.append({"node": p.get("node"), "endpoint": p.get("endpoint"),
                          "handshake_age": w.get("handshake_age"), "reachable": bool(s.get("reachable")),
                          "last_seen_age": s.get("last_seen_age"), "records": s.get("records", 0),
                          "error": s.get("error", "")})
        problems.extend(status.get("problems") or [])
    key = host.public_key(paths) if os.path.exists(paths.private_key) else ""
    unmeshed = sorted("%s/%s" % (n["labels"].get(L.PROJECT, ""), n["labels"].get(L.NAME, ""))
                      for n in plain if MESH_SLOT not in n["labels"] and n["labels"].get(L.PROJECT))
    return MeshState(env=env, public_key=key or "", config=cfg,
                     net_slots={"%s/%s" % (n.project, n.compose_name): n.k for n in nets.values()},
                     running=running, peers=peers, problems=problems, unmeshed=unmeshed,
                     outdated=outdated).to_dict()


def sync_firewall(ctx: Any, env: str) -> None:
    """Re-apply the firewall from the engine's mesh networks (after one was made), so a new
    network's replicas are reachable before the daemon's next tick."""
    raw = _read_json(paths_of(ctx, env).config)
    if not raw:
        return
    cfg = MeshConfig.from_dict(raw)
    nets = _engine_networks(ctx, env)
    host_of(ctx).apply_firewall(cfg.interface, firewall.restore_text(
        cfg.interface, cfg.cidr, str(node_block(cfg.cidr, cfg.slot)), cfg.address,
        [firewall.LocalNet(n.bridge, n.k, n.internal) for n in nets.values()]))


def op_mesh_join(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("env",), "mesh_join")
    env = check_name(require(args, "env", "mesh_join"), "env")
    paths = paths_of(ctx, env)
    paths.ensure()
    return {"public_key": host_of(ctx).ensure_key(paths)}


def op_mesh_apply(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("config",), "mesh_apply")
    cfg = MeshConfig.from_dict(require(args, "config", "mesh_apply"), "mesh_apply.config")
    host = host_of(ctx)
    paths = paths_of(ctx, cfg.env)
    paths.ensure()
    old = _read_json(paths.config)
    kind = host.ensure_link(cfg, paths)
    write_atomic(paths.config, json.dumps(cfg.to_dict(), sort_keys=True), 0o644)
    sync_firewall(ctx, cfg.env)
    moved = bool(old) and (old.get("slot") != cfg.slot or old.get("cidr") != cfg.cidr)
    if moved:
        host.stop_dns(paths)  # it listens on the old address
    err = host.ensure_dns(paths, cfg.address)
    if err:
        raise AgentError(NOT_READY, err, {"fix": "apt-get install dnsmasq-base"})
    host.ensure_daemon(paths, cfg.env, restart=moved)
    ctx.emit("mesh.apply", interface=cfg.interface, peers=len(cfg.peers), link=kind)
    out = state_section(ctx, cfg.env)
    out["link_kind"] = kind
    return out


def op_mesh_leave(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("env", "project"), "mesh_leave")
    env = check_name(require(args, "env", "mesh_leave"), "env")
    if args.get("project"):
        check_project(args["project"])
    paths = paths_of(ctx, env)
    left = sorted({n.project for n in _engine_networks(ctx, env).values()})
    if left:
        sync_firewall(ctx, env)
        return {"removed": False, "projects": left}
    if not os.path.exists(paths.config):
        return {"removed": False, "projects": []}
    host = host_of(ctx)
    host.stop_daemon(paths)
    host.stop_dns(paths)
    iface = interface_name(env)
    host.remove_firewall(iface)
    host.remove_link(iface)
    for p in (paths.config, paths.status, paths.hosts, paths.wg_conf):
        try:
            os.unlink(p)
        except OSError:
            pass
    return {"removed": True, "projects": []}


# Seconds mesh_refresh waits for the peers a dependent needs: a keepalive interval (crossed
# handshakes, agent.mesh.link.KEEPALIVE) plus a pull (agent.mesh.daemon.PULL_TIMEOUT) and a tick.
REFRESH_WAIT = 10.0


def refresh_local(ctx: Any, env: str) -> bool:
    """A tick of env's mesh daemon now, if this node is in that mesh (else nothing)."""
    paths = paths_of(ctx, env)
    if not os.path.exists(paths.config):
        return False
    try:
        return not host_of(ctx).refresh_daemon(paths, timeout=3.0)
    except OSError:
        return False


def op_mesh_refresh(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Names and links up to date now: the controller calls it on the nodes of dependents
    before it starts them, with the nodes their dependencies run on (`peers`), so a
    dependency that just became ready on another node resolves and answers at once
    (instead of within the daemon's next tick, or once a just-made link has settled).
    Waits at most REFRESH_WAIT; `missing` names the peers still not heard from."""
    check_keys(args, ("env", "peers"), "mesh_refresh")
    env = check_name(require(args, "env", "mesh_refresh"), "env")
    peers = args.get("peers") or []
    if not isinstance(peers, list) or len(peers) > 1000:
        raise BadRequest("mesh_refresh.peers must be a list of at most 1000 node names")
    need = tuple(check_name(p, "mesh_refresh.peers") for p in peers)
    missing = host_of(ctx).refresh_daemon(paths_of(ctx, env), timeout=REFRESH_WAIT if need else 5.0, need=need)
    return {"refreshed": not missing, "missing": missing}


def op_mesh_status(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("env",), "mesh_status")
    return state_section(ctx, check_name(require(args, "env", "mesh_status"), "env"))


MESH_OPERATIONS = {
    "mesh_join": op_mesh_join,
    "mesh_apply": op_mesh_apply,
    "mesh_leave": op_mesh_leave,
    "mesh_refresh": op_mesh_refresh,
    "mesh_status": op_mesh_status,
}

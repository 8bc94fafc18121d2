"""Agent operations of the certificate daemon (agent.wire.tls; agent.certs.ops merges them).

    certd_configure  CertdConfig           write config.json (0600), (re)start the daemon
                                           only when it changed; names dropped from the
                                           config leave the store
    certd_ensure     {env, hosts?, force?} issuer: order what is due (all with `force`) now,
                                           in the daemon, and wait for the outcome
    certd_pull       {env}                 follower: fetch changed certificates now
    certd_status     {env}                 CertdResult (no config: role "")
    certd_leave      {env}                 stop the daemon, remove its files and the
                                           environment's automatic certificates

certd_ensure's outcome: the names it ordered are in `ordered`; a name that failed is in
`last_error` ("host: the CA's detail; ..."); when every requested name failed the operation
fails with kind "acme" naming each host and the CA's problem detail.

Processes go through ctx.certd_procs (certd_proc.CertdProcs when the Context has none)
and certificates through ctx.cert_store (agent.certs.store when none): unit tests set
both on their Context to the fakes of agent.certs.certd_fake.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional

from agent.certs import certd_plan as plan
from agent.certs.certd_paths import CertdPaths
from agent.wire.protocol import NOT_FOUND, AgentError, BadRequest
from agent.wire.tls import (
    ROLE_FOLLOWER,
    ROLE_ISSUER,
    TLS_AUTO,
    CertdConfig,
    CertdResult,
    config_id,
    parse_ensure,
    parse_env_only,
    secret_id,
)

ACME = "acme"  # AgentError kind: the CA refused or could not be reached
CERTD = "certd"  # AgentError kind: the daemon or the issuer is not there
ORDER_TIMEOUT = 180.0  # seconds one name may take (acme_client.ORDER_SECONDS + the network)


def procs_of(ctx: Any) -> Any:
    found = getattr(ctx, "certd_procs", None)
    if found is None:
        from agent.certs.certd_proc import CertdProcs

        found = CertdProcs()
    return found


def store_of(ctx: Any) -> Any:
    found = getattr(ctx, "cert_store", None)
    if found is None:
        from agent.certs import store as found
    return found


def paths_of(ctx: Any, env: str) -> CertdPaths:
    return CertdPaths.of(ctx.data_dir(), env)


def _read_config(paths: CertdPaths) -> Optional[Dict[str, Any]]:
    try:
        with open(paths.config) as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def certd_result(ctx: Any, env: str, ordered: tuple = (), last_error: Optional[str] = None) -> CertdResult:
    """The daemon of env on this node as CertdResult (for certd_status and tls_certs)."""
    paths = paths_of(ctx, env)
    raw = _read_config(paths)
    if raw is None:
        return CertdResult(env=env, role="")
    cfg = CertdConfig.parse(raw)
    procs = procs_of(ctx)
    status = procs.status(paths)
    certs = tuple(c for c in store_of(ctx).list_certs(ctx.data_dir(), env) if c.source == TLS_AUTO)
    return CertdResult(env=env, role=cfg.role, certs=certs, ordered=tuple(ordered), running=procs.running(paths),
                       last_error=status.get("last_error", "") if last_error is None else last_error,
                       next_check=status.get("next_check", ""), config_id=config_id(cfg),
                       secret_id=secret_id(cfg.secret))


def _config(ctx: Any, env: str, role: str, op: str) -> CertdConfig:
    raw = _read_config(paths_of(ctx, env))
    if raw is None:
        raise AgentError(NOT_FOUND, "%s: no certificate daemon for %s on this node" % (op, env),
                         {"fix": "orch up --env %s configures it" % env})
    cfg = CertdConfig.parse(raw)
    if cfg.role != role:
        raise AgentError(CERTD, "%s: this node is the %s of %s, not its %s" % (op, cfg.role, env, role))
    return cfg


def op_certd_configure(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    cfg = CertdConfig.parse(args)
    procs, store = procs_of(ctx), store_of(ctx)
    if cfg.role == ROLE_ISSUER:
        missing = procs.problems()
        if missing:
            raise AgentError(CERTD, "; ".join(missing), {"fix": "apt-get install python3-acme"})
    paths = paths_of(ctx, cfg.env)
    paths.ensure()
    old = _read_config(paths)
    new = cfg.to_dict()
    from agent.certs.certd_core import Archive
    from agent.mesh.paths import write_atomic

    archive = Archive(paths, leaf=lambda pem: None)
    for c in store.list_certs(ctx.data_dir(), cfg.env):
        if c.source == TLS_AUTO and c.host not in cfg.hosts:
            store.remove(ctx, cfg.env, c.host)
    for host in archive.hosts():
        if cfg.role == ROLE_FOLLOWER or host not in cfg.hosts:
            archive.remove(host)
    if cfg.role == ROLE_FOLLOWER:  # only the issuer keeps an account
        for p in (paths.account_key, paths.account):
            if os.path.exists(p):
                os.unlink(p)
    write_atomic(paths.config, json.dumps(new, sort_keys=True), 0o600)
    restart = plan.restart_needed(old, new, procs.running(paths), procs.current(paths))
    if restart:
        procs.start(paths, restart=True)
    ctx.emit("certd.configure", env=cfg.env, role=cfg.role, hosts=len(cfg.hosts), restarted=restart)
    return certd_result(ctx, cfg.env).to_dict()


def _ensure_running(ctx: Any, paths: CertdPaths) -> Any:
    procs = procs_of(ctx)
    if not procs.running(paths) or not procs.current(paths):
        procs.start(paths)
    return procs


def op_certd_ensure(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    env, hosts, force = parse_ensure(args)
    cfg = _config(ctx, env, ROLE_ISSUER, "certd_ensure")
    unknown = [h for h in hosts if h not in cfg.hosts]
    if unknown:
        raise BadRequest("certd_ensure: %s not among %s's automatic names" % (", ".join(unknown), env))
    paths = paths_of(ctx, env)
    wanted = hosts or cfg.hosts
    ctx.emit("certd.ensure", env=env, hosts=len(wanted), force=force)
    out = _ensure_running(ctx, paths).ask(paths, "ensure", {"hosts": list(hosts), "force": force},
                                          timeout=30.0 + ORDER_TIMEOUT * max(1, len(wanted)))
    errors = out.get("errors") or {}
    for host in out.get("ordered") or []:
        ctx.emit("certd.ordered", env=env, host=host)
    text = "; ".join("%s: %s" % (h, e) for h, e in sorted(errors.items()))
    if wanted and all(h in errors for h in wanted):
        raise AgentError(ACME, "no certificate served for %s (CA %s)" % (text, cfg.acme.directory if cfg.acme else ""),
                         {"errors": errors, "fix": "check that each name resolves to a node of %s, that port 80 "
                                                   "reaches it, and the CA's message above" % env})
    return certd_result(ctx, env, ordered=tuple(out.get("ordered") or ()), last_error=text).to_dict()


def op_certd_pull(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    env = parse_env_only(args, "certd_pull")
    cfg = _config(ctx, env, ROLE_FOLLOWER, "certd_pull")
    paths = paths_of(ctx, env)
    out = _ensure_running(ctx, paths).ask(paths, "pull", {}, timeout=60.0 + 15.0 * len(cfg.hosts))
    errors = out.get("errors") or {}
    if "*" in errors:
        raise AgentError(CERTD, errors["*"], {"fix": "check the mesh between this node and %s (orch nodes check)"
                                                     % cfg.issuer_address})
    for host in out.get("fetched") or []:
        ctx.emit("certd.pulled", env=env, host=host)
    text = "; ".join("%s: %s" % (h, e) for h, e in sorted(errors.items()))
    return certd_result(ctx, env, last_error=text).to_dict()


def op_certd_status(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    return certd_result(ctx, parse_env_only(args, "certd_status")).to_dict()


def op_certd_leave(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    env = parse_env_only(args, "certd_leave")
    paths, store = paths_of(ctx, env), store_of(ctx)
    existed = os.path.isdir(paths.root)
    procs_of(ctx).stop(paths)
    for c in store.list_certs(ctx.data_dir(), env):
        if c.source == TLS_AUTO:
            store.remove(ctx, env, c.host)
    shutil.rmtree(paths.root, ignore_errors=True)
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    ctx.emit("certd.leave", env=env, removed=existed)
    return {"left": existed}


CERTD_OPERATIONS = {
    "certd_configure": op_certd_configure,
    "certd_ensure": op_certd_ensure,
    "certd_pull": op_certd_pull,
    "certd_status": op_certd_status,
    "certd_leave": op_certd_leave,
}

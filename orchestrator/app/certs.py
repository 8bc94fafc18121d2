"""`orch certs --env E`: the environment's host names and their certificates, read from every
node (no lock); `orch certs renew --env E [HOST...] [--force]`: under the deploy lock, the
issuer's certificate daemon obtains what is due (all of them with --force), then the
followers fetch from it; old -> new fingerprint per host name."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.wire.tls import ROLE_FOLLOWER, TLS_AUTO, CertdResult
from orchestrator.app.edge import read_edge
from orchestrator.core.cert_report import CertRow, cert_rows
from orchestrator.core.edge_plan import choose_issuer
from orchestrator.core.progress import Progress
from orchestrator.errors import DeployError, InputError, Problem


@dataclass
class CertsReport:
    environment: str
    rows: list[CertRow]
    issuer: str = ""

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.rows)

    def to_json(self) -> dict:
        return {"environment": self.environment, "issuer": self.issuer, "certificates": [r.to_json() for r in self.rows]}


def _order(environment: Any) -> list[str]:
    return [n.name for n in environment.nodes]


def certs_report(environment: Any) -> CertsReport:
    from orchestrator.io.nodes import env_sessions

    with env_sessions(environment, require_engine=False) as (_, sessions):
        nodes = read_edge(sessions, environment.name)
    order = _order(environment)
    issuer = next((n for n in order if nodes[n].certd is not None and nodes[n].certd.role == "issuer"), "")
    return CertsReport(environment.name, cert_rows(environment.name, nodes, datetime.now(timezone.utc), order), issuer)


@dataclass
class Renewed:
    host: str
    old: str
    new: str
    ordered: bool
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"host": self.host, "old": self.old, "new": self.new, "ordered": self.ordered, "nodes": self.nodes}


@dataclass
class RenewReport:
    environment: str
    issuer: str
    followers: list[str]
    renewed: list[Renewed]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"environment": self.environment, "issuer": self.issuer, "followers": list(self.followers),
                "renewed": [r.to_json() for r in self.renewed], "warnings": list(self.warnings)}


def renew(environment: Any, hosts: list[str], force: bool, lock_wait: float = 0.0, command_line: str = "",
          progress: Progress | None = None, seams: Any = None) -> RenewReport:
    from orchestrator.app.pipeline import EnvConnection, Seams
    from orchestrator.io.ledger import detect_performer

    progress = progress or Progress()
    seams = seams or Seams()
    conn = EnvConnection(environment, "", progress, seams)
    env = environment.name
    try:
        conn.connect()
        conn.lock(command_line or f"orch certs renew --env {env}", lock_wait,
                  seams.performer or detect_performer(environ=seams.environ))
        nodes = conn.nodes
        before = read_edge(nodes, env)
        auto = sorted({c.host for e in before.values() for c in e.claims if c.env == env and c.tls == TLS_AUTO})
        unknown = [h for h in hosts if h not in auto]
        if not auto or unknown:
            raise InputError(Problem(
                (f"{', '.join(unknown)}: not among the automatic certificates of {env}" if unknown else
                 f"the environment {env} routes no host name with tls: auto"),
                file=str(environment.file),
                fix=(f"name one of: {', '.join(auto)}" if auto else "deploy a service with x-orch.ingress "
                     "{hosts: [...], tls: auto} first; certificates from files are renewed by giving new files "
                     "and running orch up")))
        serving = [n for n in _order(environment) if any(c.env == env and c.tls == TLS_AUTO for c in before[n].claims)]
        issuer = choose_issuer(serving, before, _order(environment))
        if before[issuer].certd is None:
            raise DeployError(f"{issuer}: the certificate daemon of {env} is not configured",
                              fix=f"run `orch up --env {env}` for a project with tls: auto: it configures it")
        followers = [n for n in _order(environment) if n != issuer and before[n].certd is not None
                     and before[n].certd.role == ROLE_FOLLOWER]
        progress.phase("certificates", f"{'renewing' if force else 'checking'} on {issuer}: "
                       f"{', '.join(hosts or auto)}")
        res = CertdResult.from_dict(nodes[issuer].call("certd_ensure", {"env": env, "hosts": list(hosts),
                                                                        "force": force}))
        warnings = [f"{issuer}: {res.last_error}"] if res.last_error else []
        from orchestrator.io import transport as T

        pulled, errors = T.parallel(followers, lambda n: CertdResult.from_dict(nodes[n].call(
            "certd_pull", {"env": env})), key=lambda n: n)
        warnings += [f"{n}: fetching from {issuer} failed: {getattr(e, 'message', e)}" for n, e in sorted(errors.items())]
        for w in warnings:
            progress.warning(w)
        new = {c.host: c for c in res.certs}
        out = []
        for host in hosts or auto:
            old = before[issuer].certs.get(host)
            now = new.get(host)
            have = [issuer] if now else []
            have += [n for n, r in sorted(pulled.items()) if now and any(
                c.host == host and c.fingerprint == now.fingerprint for c in r.certs)]
            out.append(Renewed(host, old.fingerprint if old else "", now.fingerprint if now else "",
                               host in res.ordered, have))
        return RenewReport(env, issuer, followers, out, warnings)
    finally:
        conn.close()

"""HTTPS at the edge, planned (pure, over what the nodes report): host names another
project already routes on a node (refused), which TLS_FILES certificates each node needs
(`tls_cert_put`, before the rollout), and the environment's certificate daemon (TLS_AUTO):
the issuer, its followers, each node's CertdConfig, and the certd calls an `up` makes after
the rollout. A no-op `up` (configs unchanged, certificates present and not due) plans none.
The contract is agent.wire.tls; orchestrator.app.edge executes this plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

from agent.wire.tls import (RENEW_FRACTION, ROLE_FOLLOWER, ROLE_ISSUER, TLS_AUTO, TLS_FILES, AcmeSettings, CertdConfig,
                            CertdResult, CertInfo, config_id)
from orchestrator.errors import InputError, Problem


@dataclass(frozen=True)
class Claim:
    """A host name routed on a node (from its ingress_status)."""

    host: str
    project: str
    env: str
    service: str
    tls: str


@dataclass(frozen=True)
class NodeEdge:
    """What one node reports: every routed host (all projects), the environment's
    certificates there, and its certificate daemon for the environment (None: none)."""

    node: str
    claims: tuple[Claim, ...] = ()
    certs: Mapping[str, CertInfo] = field(default_factory=dict)
    certd: CertdResult | None = None

    @classmethod
    def from_answers(cls, node: str, status: Mapping[str, Any] | None, certs: Mapping[str, Any] | None) -> "NodeEdge":
        claims = []
        for f in (status or {}).get("frontends") or []:
            route = f.get("route") or {}
            for host in route.get("hosts") or []:
                claims.append(Claim(host, f.get("project", ""), f.get("env", ""), f.get("service", ""),
                                    route.get("tls", "")))
        infos = {c["host"]: CertInfo.from_dict(c) for c in (certs or {}).get("certs") or []}
        raw = (certs or {}).get("certd")  # role "": no daemon for the environment on the node
        return cls(node, tuple(claims), infos, CertdResult.from_dict(raw) if raw and raw.get("role") else None)


@dataclass(frozen=True)
class CertPutStep:
    node: str
    host: str
    service: str
    fingerprint: str  # the certificate put there
    reason: str

    def to_json(self) -> dict:
        return {"node": self.node, "host": self.host, "service": self.service, "fingerprint": self.fingerprint,
                "reason": self.reason}


@dataclass(frozen=True)
class CertdStep:
    op: str  # configure | ensure | pull
    node: str
    role: str
    hosts: tuple[str, ...] = ()
    reason: str = ""

    def to_json(self) -> dict:
        return {"op": self.op, "node": self.node, "role": self.role, "hosts": list(self.hosts), "reason": self.reason}


@dataclass
class EdgePlan:
    """The certificate part of a plan (Plan.edge)."""

    puts: list[CertPutStep] = field(default_factory=list)
    certd: list[CertdStep] = field(default_factory=list)  # configure (all), then ensure (issuer), then pull
    issuer: str = ""
    followers: list[str] = field(default_factory=list)
    configs: dict[str, CertdConfig] = field(default_factory=dict)  # node -> config, secret "" (made at apply)
    auto_hosts: tuple[str, ...] = ()  # the environment's TLS_AUTO names
    retire: list["DownStep"] = field(default_factory=list)  # after the rollout: what no route needs any more

    def __bool__(self) -> bool:
        return bool(self.puts or self.certd or self.retire)

    def steps(self, op: str) -> list[CertdStep]:
        return [s for s in self.certd if s.op == op]

    def to_json(self) -> dict:
        return {"puts": [p.to_json() for p in self.puts], "certd": [c.to_json() for c in self.certd],
                "issuer": self.issuer, "followers": list(self.followers),
                "retire": [r.to_json() for r in self.retire]}

    def render_lines(self) -> list[str]:
        lines = [f"certificate: put {p.host} on {p.node} ({p.reason})" for p in self.puts]
        lines += [f"certd: {c.op} on {c.node} ({c.role}{': ' + ', '.join(c.hosts) if c.hosts else ''}; {c.reason})"
                  for c in self.certd]
        lines += [f"certificate: remove {r.host} on {r.node} (no route of the environment serves it there)"
                  if r.op == "tls_cert_remove" else
                  f"certd: leave on {r.node} (no tls: auto route of the environment left there)" for r in self.retire]
        return lines


# --------------------------------------------------------------------------- clashes


def refuse_clashes(project: str, env: str, env_file: str, wanted: Mapping[str, Mapping[str, str]],
                   nodes: Mapping[str, NodeEdge], locate: Any = None) -> None:
    """Exit 2 before anything is touched: a host name this deploy routes on a node (wanted:
    node -> host -> service) that another project, or this project for another environment,
    already routes there. locate(service) -> (file, line) for the message."""
    problems = []
    for node, hosts in sorted(wanted.items()):
        held = {c.host: c for c in (nodes.get(node) or NodeEdge(node)).claims
                if not (c.project == project and (c.env or env) == env)}
        for host, service in sorted(hosts.items()):
            other = held.get(host)
            if other is None:
                continue
            file, line = locate(service) if locate else (None, None)
            who = f"project {other.project}" + (f" (environment {other.env})" if other.env else "")
            problems.append(Problem(
                f"service {service} routes the host name {host} on node {node}, but {who} already routes it there "
                f"(service {other.service}); nothing was changed",
                file=file, line=line, key=f"services.{service}.x-orch.ingress.hosts",
                fix=f"use another host name for {service}, or take {host} away from {other.project} first "
                    f"(orch down -p {other.project} --env {other.env or env}, or drop it from its hosts), or deploy "
                    f"to other nodes"))
    if problems:
        raise InputError(problems)


# --------------------------------------------------------------------------- TLS_FILES certificates


def plan_puts(files: Mapping[str, Any], placed: Mapping[str, Sequence[str]], nodes: Mapping[str, NodeEdge]
              ) -> list[CertPutStep]:
    """files: service -> (Route, FileCert); placed: service -> its nodes. A node whose
    certificate for the host already has the fingerprint gets no call."""
    out = []
    for service, (route, cert) in sorted(files.items()):
        for node in placed.get(service) or ():
            have = (nodes.get(node) or NodeEdge(node)).certs
            for host in route.hosts:
                info = have.get(host)
                if info is not None and info.fingerprint == cert.fingerprint and info.source == TLS_FILES:
                    continue
                reason = "new" if info is None else "certificate changed"
                out.append(CertPutStep(node, host, service, cert.fingerprint, reason))
    return out


# --------------------------------------------------------------------------- TLS_AUTO: the certificate daemon


def due(info: CertInfo, renew_before: float, now: datetime) -> bool:
    """Whether the issuer would renew the certificate now (agent.wire.tls: renew_before,
    else RENEW_FRACTION of its lifetime before expiry)."""
    try:
        start = _parse(info.not_before) if info.not_before else None
        end = _parse(info.not_after)
    except ValueError:
        return True
    if renew_before > 0:
        margin = renew_before
    elif start is not None:
        margin = (end - start).total_seconds() * RENEW_FRACTION
    else:
        margin = 0.0
    return (end - now).total_seconds() <= margin


def _parse(text: str) -> datetime:
    d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def auto_hosts_by_node(project: str, env: str, mine: Mapping[str, Mapping[str, str]],
                       nodes: Mapping[str, NodeEdge]) -> dict[str, tuple[str, ...]]:
    """Per node, the environment's TLS_AUTO names it will serve: this deploy's (mine: node ->
    {host: tls}) and those other projects of the environment route there."""
    out: dict[str, set[str]] = {}
    for node, edge in nodes.items():
        for c in edge.claims:
            if c.tls == TLS_AUTO and c.env == env and c.project != project:
                out.setdefault(node, set()).add(c.host)
    for node, hosts in mine.items():
        out.setdefault(node, set()).update(h for h, tls in hosts.items() if tls == TLS_AUTO)
    return {n: tuple(sorted(h)) for n, h in sorted(out.items()) if h}


def choose_issuer(serving: Sequence[str], nodes: Mapping[str, NodeEdge], order: Sequence[str]) -> str:
    """A node whose certd already is the environment's issuer (it holds the account and the
    certificates), else the first node by name among those serving TLS_AUTO names."""
    for name in order:
        edge = nodes.get(name)
        if edge is not None and edge.certd is not None and edge.certd.role == ROLE_ISSUER and edge.certd.config_id:
            return name
    return sorted(serving)[0] if serving else ""


def plan_certd(env: str, acme: AcmeSettings | None, serving: Mapping[str, tuple[str, ...]],
               nodes: Mapping[str, NodeEdge], order: Sequence[str], addresses: Mapping[str, str],
               now: datetime, force: bool = False) -> EdgePlan:
    """The certificate daemon's configs and calls. serving: node -> its TLS_AUTO names;
    addresses: node -> its mesh address (empty with one node)."""
    plan = EdgePlan()
    if not serving or acme is None:
        return plan
    issuer = choose_issuer(list(serving), nodes, order)
    followers = [n for n in order if n in serving and n != issuer]
    every = tuple(sorted({h for hosts in serving.values() for h in hosts}))
    listen = addresses.get(issuer, "") if followers else ""
    configs = {issuer: CertdConfig(env=env, role=ROLE_ISSUER, hosts=every, secret="", acme=acme,
                                   listen_address=listen,
                                   followers=tuple(addresses[f] for f in followers if addresses.get(f)))}
    for f in followers:
        configs[f] = CertdConfig(env=env, role=ROLE_FOLLOWER, hosts=serving[f], secret="",
                                 issuer_address=addresses.get(issuer, ""))
    plan.issuer, plan.followers, plan.configs, plan.auto_hosts = issuer, followers, configs, every
    status = {n: (nodes.get(n) or NodeEdge(n)).certd for n in configs}
    secrets = {s.secret_id for s in status.values() if s is not None}
    stale = [n for n, cfg in configs.items()
             if status[n] is None or not status[n].running or status[n].config_id != config_id(cfg)]
    reconfigure = bool(stale) or len(secrets) != 1 or "" in secrets
    for n in configs:
        if reconfigure:
            why = "new" if status[n] is None or not status[n].config_id else (
                "config changed" if n in stale else "new shared secret")
            if status[n] is not None and not status[n].running and status[n].config_id == config_id(configs[n]):
                why = "not running"
            plan.certd.append(CertdStep("configure", n, configs[n].role, configs[n].hosts, why))
    have = (nodes.get(issuer) or NodeEdge(issuer)).certs
    missing = [h for h in every if h not in have or have[h].source != TLS_AUTO]
    renew = [h for h in every if h in have and h not in missing and due(have[h], acme.renew_before, now)]
    if reconfigure or missing or renew or force:
        why = ", ".join(filter(None, ["configured" if reconfigure else "",
                                      f"missing {', '.join(missing)}" if missing else "",
                                      f"due {', '.join(renew)}" if renew else "", "forced" if force else ""]))
        plan.certd.append(CertdStep("ensure", issuer, ROLE_ISSUER, every, why))
    ensuring = bool(plan.steps("ensure"))
    for f in followers:
        mine = (nodes.get(f) or NodeEdge(f)).certs
        behind = [h for h in serving[f] if h not in mine or h not in have or mine[h].fingerprint != have[h].fingerprint]
        if ensuring or reconfigure or behind:
            plan.certd.append(CertdStep("pull", f, ROLE_FOLLOWER, serving[f],
                                        "after the issuer" if ensuring or reconfigure else
                                        f"differs from the issuer: {', '.join(behind)}"))
    return plan


def with_secret(cfg: CertdConfig, secret: str) -> CertdConfig:
    return replace(cfg, secret=secret)


# --------------------------------------------------------------------------- orch down


@dataclass(frozen=True)
class DownStep:
    op: str  # tls_cert_remove | certd_leave
    node: str
    host: str = ""

    def to_json(self) -> dict:
        return {"op": self.op, "node": self.node, "host": self.host}

    def request(self, env: str) -> dict:
        """The agent request's arguments (tls_cert_remove names the host)."""
        return {"env": env, "host": self.host} if self.host else {"env": env}


def plan_down(env: str, nodes: Mapping[str, NodeEdge]) -> list[DownStep]:
    """After a project's routes left (orch down): a TLS_FILES certificate of the environment
    whose host no project routes on the node any more goes; a node where no TLS_AUTO route
    of the environment is left stops its certificate daemon (its files and certificates go)."""
    return _leftovers(env, nodes, lambda name, edge: {c.host for c in edge.claims if c.env == env},
                      lambda name, edge: any(c.env == env and c.tls == TLS_AUTO for c in edge.claims))


def plan_retire(env: str, project: str, wanted: Mapping[str, Mapping[str, str]], serving: Mapping[str, Any],
                configs: Mapping[str, CertdConfig], nodes: Mapping[str, NodeEdge]) -> list[DownStep]:
    """After an `orch up` whose routes moved or dropped TLS (wanted: node -> {host: service}
    this deploy routes there; serving and configs: plan_certd's), what plan_down does after
    a down: a TLS_FILES certificate no project routes on the node goes, and a node that has
    no part in the environment's certificate daemon any more stops its own. Else it would
    keep renewing names nothing serves."""
    def routed(name: str, edge: NodeEdge) -> set[str]:
        others = {c.host for c in edge.claims if c.env == env and c.project != project}
        return others | set(wanted.get(name, {}))

    return _leftovers(env, nodes, routed, lambda name, edge: name in configs or name in serving)


def _leftovers(env: str, nodes: Mapping[str, NodeEdge], routed: Callable[[str, NodeEdge], set[str]],
               keeps_certd: Callable[[str, NodeEdge], bool]) -> list[DownStep]:
    out = []
    for name, edge in sorted(nodes.items()):
        hosts = routed(name, edge)
        for host, info in sorted(edge.certs.items()):
            if info.source == TLS_FILES and host not in hosts:
                out.append(DownStep("tls_cert_remove", name, host))
        if not keeps_certd(name, edge) and edge.certd is not None and (edge.certd.config_id or edge.certd.running):
            out.append(DownStep("certd_leave", name))
    return out

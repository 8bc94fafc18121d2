"""`orch certs`, `orch ps` and `orch nodes check`: an environment's host names and their
certificates as the nodes report them (pure, over orchestrator.core.edge_plan.NodeEdge):
one row per host name with where it is served, by which certificate, and what is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from agent.wire.tls import ROLE_ISSUER, TLS_AUTO, CertInfo
from orchestrator.core.edge_plan import NodeEdge, _parse

EXPIRY_WARNING_DAYS = 7


@dataclass(frozen=True)
class CertRow:
    host: str
    source: str  # auto | files
    projects: tuple[str, ...] = ()
    issuer: str = ""
    not_after: str = ""
    fingerprint: str = ""  # the reference one: the issuer's (auto), else the first node's
    nodes: Mapping[str, str] = field(default_factory=dict)  # serving node -> its fingerprint ("" : none)
    status: str = "ok"
    problems: tuple[str, ...] = ()
    days_left: int | None = None

    def differs(self, node: str) -> bool:
        fp = self.nodes.get(node, "")
        return bool(fp) and fp != self.fingerprint

    def nodes_text(self) -> str:
        """`prod-1, prod-2*` (*: serves another certificate than the others), `-` when missing."""
        return ", ".join(f"{n}{'*' if self.differs(n) else ''}" for n, fp in self.nodes.items() if fp) or "-"

    def to_json(self) -> dict:
        return {"host": self.host, "source": self.source, "projects": list(self.projects), "issuer": self.issuer,
                "not_after": self.not_after, "fingerprint": self.fingerprint, "days_left": self.days_left,
                "nodes": [{"node": n, "fingerprint": fp, "differs": self.differs(n)} for n, fp in self.nodes.items()],
                "status": self.status, "problems": list(self.problems)}


def cert_rows(env: str, nodes: Mapping[str, NodeEdge], now: datetime, order: list[str] | None = None) -> list[CertRow]:
    """One row per host name the environment routes with TLS on any node."""
    order = order or sorted(nodes)
    serving: dict[str, dict[str, str]] = {}  # host -> node -> source
    projects: dict[str, set[str]] = {}
    for name in order:
        for c in (nodes.get(name) or NodeEdge(name)).claims:
            if c.env == env and c.tls:
                serving.setdefault(c.host, {})[name] = c.tls
                projects.setdefault(c.host, set()).add(c.project)
    issuer = next((n for n in order if (nodes.get(n) and nodes[n].certd is not None
                                        and nodes[n].certd.role == ROLE_ISSUER)), "")
    rows = []
    for host in sorted(serving):
        where = serving[host]
        source = next(iter(where.values()))
        infos: dict[str, CertInfo | None] = {n: (nodes[n].certs.get(host) if n in nodes else None) for n in where}
        # The reference: the issuer's certificate (automatic ones), else the first node's.
        ref = nodes[issuer].certs.get(host) if source == TLS_AUTO and issuer else None
        ref = ref or next((i for i in infos.values() if i is not None), None)
        problems = []
        missing = [n for n, i in infos.items() if i is None]
        if missing:
            problems.append(f"missing on {', '.join(missing)}")
        differ = [n for n, i in infos.items() if i is not None and ref is not None and i.fingerprint != ref.fingerprint]
        if differ:
            problems.append(f"another certificate on {', '.join(differ)}")
        days = None
        if ref is not None and ref.not_after:
            try:
                days = int((_parse(ref.not_after) - now).total_seconds() // 86400)
            except ValueError:
                days = None
        if days is not None and days < 0:
            problems.append("expired")
        elif days is not None and days <= EXPIRY_WARNING_DAYS:
            problems.append(f"expiring in {days} days")
        if source == TLS_AUTO:
            d = nodes[issuer].certd if issuer else None
            if d is None:
                problems.append("certd error: no issuer configured (run orch up)")
            elif d.last_error or not d.running:
                problems.append(f"certd error: {d.last_error or 'the daemon is not running'}")
        rows.append(CertRow(host=host, source=source, projects=tuple(sorted(projects[host])),
                            issuer=ref.issuer if ref else "", not_after=ref.not_after if ref else "",
                            fingerprint=ref.fingerprint if ref else "",
                            nodes={n: (i.fingerprint if i else "") for n, i in infos.items()},
                            status="; ".join(problems) or "ok", problems=tuple(problems), days_left=days))
    return rows

"""What `orch up`, `plan`, `ps` and `down` return: containers as rows (`ContainerRow`),
`DeployResult`, `DownResult`, and their JSON form. Data only; orchestrator.cli.render
draws them for people."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from orchestrator.errors import DeployError, OrchError
from orchestrator.core.plan import Observed, Plan
from orchestrator.core.progress import JSON_VERSION

# --------------------------------------------------------------------------- results


@dataclass
class ContainerRow:
    service: str
    replica: int
    node: str
    name: str
    id: str
    state: str
    health: str
    exit_code: int
    image: str
    image_id: str
    ports: list[str]  # "10.250.0.11:8080->80/tcp"
    started_at: str
    release: str = ""

    @classmethod
    def from_observed(cls, c: Observed, host: str) -> "ContainerRow":
        ports = []
        for p in c.ports:
            if p.get("published"):
                ip = p.get("host_ip") or ""
                shown = host if ip in ("", "0.0.0.0", "::") else ip
                ports.append(f"{shown}:{p['published']}->{p['target']}/{p.get('protocol', 'tcp')}")
        return cls(service=c.service, replica=c.replica, node=c.node, name=c.name, id=c.id, state=c.state,
                   health=c.health, exit_code=c.exit_code, image=c.image, image_id=c.image_id,
                   ports=sorted(set(ports)), started_at=c.started_at, release=c.release)

    def uptime_s(self, now: float | None = None) -> float | None:
        if self.state != "running" or not self.started_at:
            return None
        started = _parse_time(self.started_at)
        if started is None:
            return None
        return max(0.0, (now if now is not None else time.time()) - started)

    @property
    def digest(self) -> str:
        """sha256:... of a pinned reference (what orch deploys), else ""."""
        return self.image.rsplit("@", 1)[1] if "@" in self.image else ""

    def state_text(self) -> str:
        return f"exited ({self.exit_code})" if self.state == "exited" else self.state

    def image_text(self) -> str:
        """For the table: a pinned reference with its digest cut to 12 hex (--json has it all)."""
        if "@sha256:" in self.image:
            repo, digest = self.image.rsplit("@sha256:", 1)
            return f"{repo}@sha256:{digest[:12]}"
        short = self.image_id.split(":", 1)[-1][:12] if self.image_id else ""
        return f"{self.image} ({short})" if short and "@" not in self.image else self.image

    def uptime_text(self, now: float | None = None) -> str:
        up = self.uptime_s(now)
        return "-" if up is None else _human(up)

    def to_json(self) -> dict:
        return {"service": self.service, "replica": self.replica, "node": self.node, "name": self.name,
                "id": self.id, "state": self.state, "health": self.health, "exit_code": self.exit_code,
                "image": self.image, "digest": self.digest, "image_id": self.image_id, "ports": list(self.ports),
                "started_at": self.started_at, "uptime_s": _round(self.uptime_s()), "release": self.release}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _human(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _parse_time(text: str) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    t = text.rstrip("Z")
    if "." in t:  # Docker gives nanoseconds
        head, frac = t.split(".", 1)
        t = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(t).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def container_rows(observed: Mapping[str, Iterable[Observed]], hosts: Mapping[str, str]) -> list[ContainerRow]:
    rows = [ContainerRow.from_observed(c, hosts.get(node, node)) for node, cs in observed.items() for c in cs
            if not c.retired]  # kept for a rollback: not part of what runs
    order = {n: i for i, n in enumerate(hosts)}
    return sorted(rows, key=lambda r: (r.service, r.replica, order.get(r.node, 99), r.name))


def published_addresses(rows: Iterable[ContainerRow]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        for p in r.ports:
            out.setdefault(r.service, set()).add(p.split("->", 1)[0])
    return {k: sorted(v) for k, v in sorted(out.items())}


@dataclass
class DeployResult:
    project: str
    environment: str
    status: str  # ok | planned (dry run)
    plan: Plan
    changed: list[str]
    containers: list[ContainerRow]
    addresses: dict[str, list[str]]
    duration_s: float
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    degraded: list[str] = field(default_factory=list)  # optional (required: false) services that failed
    certificates: list[dict] = field(default_factory=list)  # host names with TLS (orchestrator.app.edge.rows)

    def to_json(self) -> dict:
        return {
            "version": JSON_VERSION,
            "status": self.status,
            "command": "up",
            "environment": self.environment,
            "project": self.project,
            "noop": self.plan.is_noop,
            "dry_run": self.dry_run,
            "changed": list(self.changed),
            "containers": [r.to_json() for r in self.containers],
            "addresses": self.addresses,
            "duration_s": round(self.duration_s, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "plan": self.plan.to_json(),
            "warnings": list(self.warnings),
            "degraded": list(self.degraded),
            "certificates": list(self.certificates),
        }


@dataclass
class DownResult:
    project: str
    environment: str
    removed: list[dict]
    networks: dict[str, list[str]]
    volumes: dict[str, list[str]]
    duration_s: float
    certificates: list[dict] = field(default_factory=list)  # {op, node, host}: tls_cert_remove, certd_leave
    round_trips: dict[str, dict] = field(default_factory=dict)  # per node: io.nodes.RoundTrips.to_json()

    def to_json(self) -> dict:
        return {"version": JSON_VERSION, "status": "ok", "command": "down", "environment": self.environment,
                "project": self.project, "removed": self.removed, "networks": self.networks,
                "volumes": self.volumes, "certificates": list(self.certificates),
                "duration_s": round(self.duration_s, 3), "round_trips": dict(sorted(self.round_trips.items()))}


def deploy_error(what: str, failures: list, not_started: list[str]) -> DeployError:
    """The error of a deploy whose failures no policy tolerates (what: "deploy of P to E")."""
    from orchestrator.io import transport as T

    first = failures[0]
    step, err = first.step, first.error
    details: dict[str, Any] = {"service": step.service, "node": step.node}
    where = f"{what} failed on node {step.node}"
    fix = None
    if isinstance(err, T.AgentError):
        reason = err.message.split(": ", 1)[1] if err.message.startswith(f"{step.node}: ") else err.message
        text = f"{where}: {reason}"
        logs = err.details.get("logs") or []
        if logs:
            text += f"\nLast {len(logs)} log lines of {err.details.get('container', step.service)}:\n"
            text += "\n".join(f"  | {ln}" for ln in logs)
        details.update({k: err.details[k] for k in ("replica", "container", "exit_code", "health", "logs")
                        if k in err.details})
        details["reason"] = reason
        details["kind"] = err.kind
        fix = err.details.get("fix")
    else:
        text = f"{where} while applying {step.service}: {err.message}"
        details["reason"] = err.message
        details.update({k: v for k, v in (getattr(err, "details", None) or {}).items() if k == "replica"})
        fix = getattr(err, "fix", None) or "re-run `orch up`: applying again converges."
    for other in failures[1:]:
        text += f"\nAlso failed: {other.step.service} on {other.step.node}: {_first_line(other.error)}"
    if not_started:
        text += f"\nNot started: {', '.join(not_started)}."
    details["not_started"] = not_started
    return DeployError(text, fix=fix, details=details)


def _as_orch_error(node: str, err: BaseException) -> OrchError:
    if isinstance(err, OrchError):
        return err
    return DeployError(f"{node}: {type(err).__name__}: {err}", fix="re-run `orch up`: applying again converges.")


def discard_warning(node: str, err: BaseException) -> str:
    """A node that did not remove the previous release's kept containers (best effort)."""
    return (f"{node}: could not remove the previous release's kept containers "
            f"({getattr(err, 'message', err)}); the next deploy removes them")


def _first_line(err: OrchError) -> str:
    text = err.message
    return text.splitlines()[0] if text else type(err).__name__

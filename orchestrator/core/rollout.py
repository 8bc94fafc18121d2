"""Rolling updates, planned: per-service update policy, ingress settings, batches, and
the journal of what a release replaced (for its rollback). Pure: no I/O.

The policy is Compose's `deploy.update_config` with Swarm's meanings and defaults, plus
Nomad's health gate under `x-orch` (docs/reference/x-orch.md):

    parallelism        replicas replaced at once, across all nodes (1; 0 = all at once)
    delay              pause between batches (0s)
    order              stop-first | start-first (stop-first; start-first for a service
                       behind the ingress, which is what the ingress is for)
    failure_action     rollback | pause | continue (orch's default: rollback)
    monitor            after a replica is replaced, how long a failure of it still
                       counts as a failed update (orch: 0s when not set, Swarm: 5s;
                       either way the new containers are checked once after the last
                       batch, see orchestrator.app.deploy._monitor)
    max_failure_ratio  failed replicas tolerated, as a fraction of the replaced ones (0)
    x-orch.min_healthy_time   a new container counts once it stayed healthy this long (0s;
                              unset, one without a healthcheck must have run 1s:
                              see readiness)
    x-orch.healthy_deadline   a new container not healthy by then has failed (default:
                              from its healthcheck: start_period + (retries+1) * interval
                              + timeout + 5s)

The agent side (one batch on one node) is agent.rollout; orchestrator.core.rollout_plan plans
the batches, the monitor window and what a rollback restores (a RolloutPlan), which
orchestrator.app.deploy executes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import Problem

ORDERS = ("stop-first", "start-first")
FAILURE_ACTIONS = ("rollback", "pause", "continue")
# Swarm's default window is 5s, docker-compose has none: unset, orch waits for no window
# (the replaced replicas are still checked once when the last batch is through); a
# window the user sets is waited for, as in Swarm.
DEFAULT_MONITOR = 0.0
# x-orch keys orch reads, per service (anything else under x-orch is warned about).
X_ORCH_KEYS = ("ingress", "min_healthy_time", "healthy_deadline")
HEALTH_KEYS = ("path", "interval", "timeout", "rise", "fall", "host")
_PATH_RE = re.compile(r"^/[^\s\"'#$\\]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


@dataclass(frozen=True)
class UpdatePolicy:
    parallelism: int = 1
    delay: float = 0.0
    order: str = "stop-first"
    failure_action: str = "rollback"
    monitor: float = DEFAULT_MONITOR
    max_failure_ratio: float = 0.0
    min_healthy_time: float | None = None  # None: unset (see readiness)
    healthy_deadline: float | None = None

    def to_json(self) -> dict:
        return {"parallelism": self.parallelism, "delay": self.delay, "order": self.order,
                "failure_action": self.failure_action, "monitor": self.monitor,
                "max_failure_ratio": self.max_failure_ratio, "min_healthy_time": self.min_healthy_time,
                "healthy_deadline": self.healthy_deadline}


@dataclass(frozen=True)
class IngressSpec:
    """x-orch.ingress of a service, resolved against its ports."""

    published: int
    target: int
    host_ip: str = "0.0.0.0"
    protocol: str = "http"
    health: Mapping[str, Any] = field(default_factory=dict)  # agent.ingress.Health fields
    drain_timeout: float = 10.0
    # Host routing (orchestrator.core.edge): published is 0 when the service has only host routes.
    route: Any = None  # agent.wire.tls.Route, None: no host names
    tls_source: Any = None  # orchestrator.core.edge.TlsSource (tls: {cert, key})
    cert: Any = None  # orchestrator.core.certs.FileCert, read and checked at compile time

    def agent_args(self) -> dict:
        """The `ingress` argument of the agent's rollout/restore/retire."""
        out = {"port": {"published": self.published, "target": self.target, "protocol": self.protocol,
                        "host_ip": self.host_ip},
               "health": dict(self.health), "drain_timeout": self.drain_timeout}
        if self.route is not None and self.route.routed:
            out["route"] = self.route.to_dict()
        return out


# --------------------------------------------------------------------------- reading


def _seconds(value: Any) -> float:
    from orchestrator.core.compose.units import parse_duration

    if isinstance(value, bool):
        raise ValueError("a duration is written like 10s, 1m30s or 500ms")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("it must not be negative")
        return float(value)
    return parse_duration(str(value))


# Unset min_healthy_time: a container without a healthcheck must have run this long to
# count as started, so a crash at start fails its batch (Kamal waits 7s, Swarm monitors
# 5s); `min_healthy_time: 0s` counts it once it runs, as `docker compose up --wait`.
DEFAULT_MIN_RUNNING = 1.0


def readiness(policy: UpdatePolicy) -> tuple[float, float]:
    """(min_running, min_healthy) of the agent's rollout: how long a new container without
    a healthcheck must have run to be ready, then how long every new one must stay so."""
    if policy.min_healthy_time is None:
        return DEFAULT_MIN_RUNNING, 0.0
    return 0.0, policy.min_healthy_time


def read_policy(service: Any, has_ingress: bool, problem: Any) -> UpdatePolicy:
    """The service's UpdatePolicy; problem(key, message, fix) reports bad values."""
    uc = service.deploy.update_config if service.deploy is not None else None
    x = service.extensions.get("x-orch") if isinstance(service.extensions.get("x-orch"), dict) else {}
    kw: dict[str, Any] = {"order": "start-first" if has_ingress else "stop-first"}
    if uc is not None:
        if uc.parallelism is not None:
            kw["parallelism"] = int(uc.parallelism)
        if uc.delay is not None:
            kw["delay"] = float(uc.delay)
        if uc.order is not None:
            kw["order"] = uc.order
        if uc.failure_action is not None:
            kw["failure_action"] = uc.failure_action
        if uc.monitor is not None:
            kw["monitor"] = float(uc.monitor)
        if uc.max_failure_ratio is not None:
            ratio = float(uc.max_failure_ratio)
            if not 0 <= ratio <= 1:
                problem("deploy.update_config.max_failure_ratio",
                        f"max_failure_ratio {uc.max_failure_ratio} must be between 0 and 1",
                        "write a fraction of the replicas, e.g. 0.25")
            kw["max_failure_ratio"] = ratio
    for key in ("min_healthy_time", "healthy_deadline"):
        if key in x:
            try:
                kw[key] = _seconds(x[key])
            except ValueError as err:
                problem(f"x-orch.{key}", f"x-orch.{key} {x[key]!r} is not a duration: {err}",
                        "write it like 10s, 1m30s or 500ms")
    if kw.get("healthy_deadline") is not None and kw["healthy_deadline"] <= 0:
        problem("x-orch.healthy_deadline", "x-orch.healthy_deadline must be more than 0s",
                "write how long a new container may take to become healthy, e.g. 2m")
    return UpdatePolicy(**kw)


def read_ingress(service: Any, published: Sequence[tuple[str, int, str, int]], problem: Any) -> IngressSpec | None:
    """x-orch.ingress of the service (None: it has none). `published` is the service's
    (host_ip, published, protocol, target) list. Shorthand: `ingress: true` for the only
    published port with health path /; `ingress: 8080` for that port."""
    x = service.extensions.get("x-orch")
    if not isinstance(x, dict) or "ingress" not in x or x["ingress"] in (None, False):
        return None
    value = x["ingress"]
    key = "x-orch.ingress"
    if isinstance(value, str) and value.strip().isdigit():  # `ingress: ${WEB_PORT}` after interpolation
        value = int(value)
    if value is True or isinstance(value, int) and not isinstance(value, bool):
        value = {} if value is True else {"port": value}
    if not isinstance(value, dict):
        problem(key, f"{key} must be a mapping {{port, protocol, health}} (or true)",
                "write e.g. ingress: {port: 8080, health: /healthz}")
        return None
    from orchestrator.core.edge import ROUTE_KEYS, read_route

    unknown = sorted(str(k) for k in value if k not in ("port", "protocol", "health", "drain_timeout") + ROUTE_KEYS)
    if unknown:
        problem(f"{key}.{unknown[0]}", f"{key} has no setting {unknown[0]!r}",
                "use port, protocol, health, drain_timeout, and for host routing hosts, tls, redirect, hsts, target")
        return None
    routing = read_route(value, key, problem)
    if routing is None:
        return None
    tcp = [p for p in published if p[2] == "tcp"]
    port = value.get("port")
    if port is None and routing.route.routed:
        if routing.target is None:
            problem(f"{key}.target", f"{key} has hosts but no port and no target: orch cannot tell which container "
                    "port the host names reach", "add target: <container port> (e.g. target: 8080), or name a "
                    "published port with port: (the service then keeps that port too)")
            return None
        chosen = ("0.0.0.0", 0, "tcp", routing.target)
    elif port is None:
        if len(tcp) != 1:
            problem(key, f"{key} needs port: the service publishes {len(tcp)} TCP ports"
                    + (f" ({', '.join(str(p[1]) for p in tcp)})" if tcp else ""),
                    "add a published port to ports: and name it, e.g. ingress: {port: 8080}")
            return None
        chosen = tcp[0]
    else:
        try:
            port_no = int(port)
        except (TypeError, ValueError):
            problem(f"{key}.port", f"{key}.port {port!r} is not a port number", "write the published port, e.g. 8080")
            return None
        matches = [p for p in tcp if p[1] == port_no]
        if not matches:
            problem(f"{key}.port", f"{key}.port {port_no} is not a published TCP port of the service "
                    f"(it publishes: {', '.join(str(p[1]) for p in tcp) or 'none'})",
                    f"add \"{port_no}:<container port>\" to ports:, or name one of the published ports")
            return None
        chosen = matches[0]
    protocol = value.get("protocol", "http")
    if protocol != "http":
        problem(f"{key}.protocol", f"{key}.protocol {protocol!r} is not supported (only http; plain TCP services "
                "keep their published ports)", "write protocol: http, or drop x-orch.ingress for a TCP service")
        return None
    host_ip = chosen[0] or "0.0.0.0"
    if not re.match(r"^\d{1,3}(\.\d{1,3}){3}$", host_ip):
        problem("ports", f"the ingress port {chosen[1]} is bound to {host_ip}, which is not an IPv4 address",
                "bind it to an IPv4 address, or to none (all addresses)")
        return None
    health = _read_health(value.get("health", "/"), f"{key}.health", problem)
    if health is None:
        return None
    from agent.wire.protocol import AgentError

    try:  # the agent's own limits (e.g. interval 0.1s..300s), so a node never refuses it
        from agent.wire.ingress import Health

        Health.from_dict(health, f"{key}.health")
    except AgentError as err:
        problem(f"{key}.health", err.message, "see docs/reference/x-orch.md for the allowed values")
        return None
    drain = 10.0
    if "drain_timeout" in value:
        try:
            drain = _seconds(value["drain_timeout"])
        except ValueError as err:
            problem(f"{key}.drain_timeout", f"{key}.drain_timeout is not a duration: {err}", "write e.g. 10s")
            return None
    if routing.target is not None and chosen[1] and routing.target != chosen[3]:
        problem(f"{key}.target", f"{key}.target {routing.target} differs from the container port {chosen[3]} of the "
                f"ingress port {chosen[1]}", "drop target: (the ingress port's container port is used)")
        return None
    return IngressSpec(published=chosen[1], target=chosen[3], host_ip=host_ip, health=health, drain_timeout=drain,
                       route=routing.route if routing.route.routed else None, tls_source=routing.source)


def _read_health(value: Any, key: str, problem: Any) -> dict | None:
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        problem(key, f"{key} must be a path (/healthz) or a mapping {{path, interval, timeout, rise, fall, host}}",
                "write e.g. health: /healthz")
        return None
    unknown = sorted(str(k) for k in value if k not in HEALTH_KEYS)
    if unknown:
        problem(f"{key}.{unknown[0]}", f"{key} has no setting {unknown[0]!r}", f"use {', '.join(HEALTH_KEYS)}")
        return None
    out: dict[str, Any] = {}
    path = value.get("path", "/")
    if not isinstance(path, str) or not _PATH_RE.match(path):
        problem(f"{key}.path", f"{key}.path {path!r} must start with / and contain no spaces, quotes, #, $ or \\",
                "write e.g. /healthz")
        return None
    out["path"] = path
    for name in ("interval", "timeout"):
        if name in value:
            try:
                out[name] = _seconds(value[name])
            except ValueError as err:
                problem(f"{key}.{name}", f"{key}.{name} is not a duration: {err}", "write e.g. 1s")
                return None
            if out[name] <= 0:
                problem(f"{key}.{name}", f"{key}.{name} must be more than 0s", "write e.g. 1s")
                return None
    for name in ("rise", "fall"):
        if name in value:
            v = value[name]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100:
                problem(f"{key}.{name}", f"{key}.{name} {v!r} must be a whole number from 1 to 100", "write e.g. 2")
                return None
            out[name] = v
    if "host" in value:
        if not isinstance(value["host"], str) or not _HOST_RE.match(value["host"]):
            problem(f"{key}.host", f"{key}.host {value['host']!r} is not a host name", "write e.g. web.local")
            return None
        out["host"] = value["host"]
    return out


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Slot:
    node: str
    replica: int
    kind: str  # create | recreate


def batches(slots: Iterable[Slot], parallelism: int) -> list[list[Slot]]:
    """Replicas to replace, in batches of `parallelism` (0: one batch), in replica order
    across nodes. A service none of whose replicas exists yet is one batch: there is
    nothing to keep serving while it starts."""
    ordered = sorted(slots, key=lambda s: (s.replica, s.node))
    if not ordered:
        return []
    if parallelism <= 0 or all(s.kind == "create" for s in ordered):
        return [ordered]
    return [ordered[i:i + parallelism] for i in range(0, len(ordered), parallelism)]


def too_many_failures(failed: int, replaced: int, ratio: float) -> bool:
    """Swarm's max_failure_ratio: more failed replicas than the ratio of those replaced so far."""
    if failed <= 0:
        return False
    return replaced <= 0 or failed / replaced > ratio


# --------------------------------------------------------------------------- the journal


@dataclass(frozen=True)
class Replaced:
    """One replica a release changed on a node: what a rollback puts back."""

    service: str
    node: str
    replica: int
    was_running: bool  # the kept container ran before (a rollback starts it again)
    had_old: bool  # False: the replica is new in this release (a rollback removes it)
    new_id: str = ""
    wave: int = 0
    seq: int = 0  # order of replacement


@dataclass
class Journal:
    entries: list[Replaced] = field(default_factory=list)

    def add(self, service: str, node: str, wave: int, records: Iterable[Mapping[str, Any]]) -> None:
        for rec in records:
            old = rec.get("old")
            new = rec.get("new") or {}
            self.entries.append(Replaced(service, node, int(rec["replica"]), bool(old and old.get("was_running")),
                                         old is not None, new.get("id", ""), wave, len(self.entries)))

    def services(self) -> list[str]:
        return sorted({e.service for e in self.entries})

    def undo_order(self) -> list[list[tuple[str, str, list[Replaced]]]]:
        """Groups to restore, latest wave first (dependents before what they depend on);
        within a group, (service, node, entries) restored in parallel."""
        waves: dict[int, dict[tuple[str, str], list[Replaced]]] = {}
        for e in self.entries:
            waves.setdefault(e.wave, {}).setdefault((e.service, e.node), []).append(e)
        out = []
        for wave in sorted(waves, reverse=True):
            out.append([(s, n, sorted(es, key=lambda e: e.replica)) for (s, n), es in sorted(waves[wave].items())])
        return out

    def __bool__(self) -> bool:
        return bool(self.entries)

"""HTTPS at the edge, the Compose side (pure): the host-routing keys of `x-orch.ingress`
(`hosts`, `tls`, `redirect`, `hsts`, `target`) read into an agent.wire.tls.Route, where a
TLS_FILES certificate comes from, and the checks a project makes against its environment
before anything is touched (a host name claimed twice, `tls: auto` without `ingress.acme`
or without the mesh). The contract with the nodes is agent.wire.tls; the plan of the
certificate steps is orchestrator.core.edge_plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.wire.tls import DEFAULT_HSTS, TLS_AUTO, TLS_FILES, TLS_OFF, EdgePorts, Route, host_name_problem
from orchestrator.errors import InputError, Problem

INGRESS_KEYS = {"http_port", "https_port", "acme"}  # the environment file's `ingress:`
ACME_KEYS = {"directory", "email", "ca_file", "renew_before"}  # its `ingress.acme:`
ROUTE_KEYS = ("hosts", "tls", "redirect", "hsts", "target")
_MAX_HSTS = 10 * 366 * 86400


@dataclass(frozen=True)
class TlsSource:
    """Where a TLS_FILES certificate and key come from: a path (relative to the Compose
    file's directory) or a top-level Compose secret, each."""

    cert_path: str = ""
    cert_secret: str = ""
    key_path: str = ""
    key_secret: str = ""

    def describe(self, which: str) -> str:
        path, secret = (self.cert_path, self.cert_secret) if which == "cert" else (self.key_path, self.key_secret)
        return f"secret {secret}" if secret else path


@dataclass(frozen=True)
class AcmeEnv:
    """The environment file's `ingress.acme` (the CA file is read when certd is configured)."""

    directory: str
    email: str = field(default="", repr=False)  # never shown: it is personal data
    ca_file: Path | None = None
    renew_before: float = 0.0  # seconds; 0: agent.wire.tls.RENEW_FRACTION of the lifetime
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class EdgeSettings:
    """The environment file's `ingress:` section."""

    ports: EdgePorts = field(default_factory=EdgePorts)
    acme: AcmeEnv | None = None


@dataclass(frozen=True)
class RouteRead:
    route: Route
    target: int | None = None  # `target:`, the container port the host routes reach
    source: TlsSource | None = None  # TLS_FILES only


def read_route(value: Mapping[str, Any], key: str, problem: Any) -> RouteRead | None:
    """The route keys of one `x-orch.ingress` mapping; None after a problem. A service
    without `hosts` gets Route() (no host routing), and the other route keys are refused."""
    hosts_raw = value.get("hosts")
    if hosts_raw is None:
        extra = [k for k in ROUTE_KEYS if k in value and k != "hosts"]
        if extra:
            problem(f"{key}.{extra[0]}", f"{key}.{extra[0]} needs host names: it applies to the service's host routes",
                    "add hosts: [NAME, ...], or drop " + extra[0])
            return None
        return RouteRead(Route())
    if isinstance(hosts_raw, str):
        hosts_raw = [hosts_raw]
    if not isinstance(hosts_raw, list) or not hosts_raw:
        problem(f"{key}.hosts", f"{key}.hosts must be a non-empty list of host names",
                "write e.g. hosts: [shop.example.com, www.shop.example.com]")
        return None
    hosts: list[str] = []
    for i, h in enumerate(hosts_raw):
        why = host_name_problem(h)
        if why:
            problem(f"{key}.hosts[{i}]", f"{key}.hosts[{i}] {h!r} is not a host name: {why}",
                    "write a DNS name such as shop.example.com (per environment: in the environment file's overlay, "
                    "or with ${VARIABLE})")
            return None
        if h in hosts:
            problem(f"{key}.hosts[{i}]", f"{key}.hosts names {h} twice", "list each host name once")
            return None
        hosts.append(h)
    tls, source = _read_tls(value.get("tls", "off"), f"{key}.tls", problem)
    if tls is None:
        return None
    redirect = value.get("redirect", True)
    if not isinstance(redirect, bool):
        problem(f"{key}.redirect", f"{key}.redirect {redirect!r} must be true or false",
                "write redirect: false to serve plain HTTP beside HTTPS (default true: HTTP redirects to HTTPS)")
        return None
    hsts = _read_hsts(value.get("hsts", True), f"{key}.hsts", problem)
    if hsts is None:
        return None
    target = None
    if "target" in value:
        t = value["target"]
        if isinstance(t, str) and t.strip().isdigit():
            t = int(t)
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 65535:
            problem(f"{key}.target", f"{key}.target {t!r} is not a port number",
                    "write the container port the application listens on, e.g. target: 8080")
            return None
        target = t
    return RouteRead(Route(hosts=tuple(hosts), tls=tls, redirect=redirect, hsts=hsts if tls else 0), target, source)


def _read_tls(value: Any, key: str, problem: Any) -> tuple[str | None, TlsSource | None]:
    if value in (False, None, "off", ""):
        return TLS_OFF, None
    if value == "auto":
        return TLS_AUTO, None
    fix = "write tls: auto (ACME), tls: off, or tls: {cert: PATH, key: PATH} (or {cert: {secret: NAME}, key: ...})"
    if not isinstance(value, dict):
        problem(key, f"{key} {value!r} is not auto, off or a {{cert, key}} mapping", fix)
        return None, None
    unknown = sorted(str(k) for k in value if k not in ("cert", "key"))
    if unknown:
        problem(f"{key}.{unknown[0]}", f"{key} has no setting {unknown[0]!r}", fix)
        return None, None
    refs: dict[str, tuple[str, str]] = {}
    for which in ("cert", "key"):
        v = value.get(which)
        if isinstance(v, str) and v.strip():
            refs[which] = (v, "")
        elif isinstance(v, dict) and set(v) == {"secret"} and isinstance(v["secret"], str) and v["secret"]:
            refs[which] = ("", v["secret"])
        else:
            problem(f"{key}.{which}", f"{key}.{which} must be a file path or {{secret: NAME}}"
                    + ("" if v is not None else " (it is missing)"), fix)
            return None, None
    return TLS_FILES, TlsSource(cert_path=refs["cert"][0], cert_secret=refs["cert"][1], key_path=refs["key"][0],
                                key_secret=refs["key"][1])


def tls_secrets(x_orch: Any) -> list[str]:
    """The Compose secrets a service's `x-orch.ingress.tls` names (kept by the loader)."""
    ingress = x_orch.get("ingress") if isinstance(x_orch, Mapping) else None
    tls = ingress.get("tls") if isinstance(ingress, Mapping) else None
    if not isinstance(tls, Mapping):
        return []
    return [v["secret"] for v in tls.values() if isinstance(v, Mapping) and isinstance(v.get("secret"), str)]


def _read_hsts(value: Any, key: str, problem: Any) -> int | None:
    if value is True:
        return DEFAULT_HSTS
    if value is False:
        return 0
    try:
        seconds = int(long_seconds(value))
    except ValueError as err:
        problem(key, f"{key} {value!r} is not true, false or a duration: {err}",
                "write hsts: true (one year), hsts: false, or a duration such as hsts: 30d")
        return None
    if seconds > _MAX_HSTS:
        problem(key, f"{key} {value!r} is longer than 10 years", "write at most 3650d (true means one year)")
        return None
    return seconds


def long_seconds(value: Any) -> float:
    """A duration like Compose's (90s, 720h) or in days (30d), in seconds."""
    from orchestrator.core.compose.units import parse_duration

    if isinstance(value, bool):
        raise ValueError("a duration is written like 30d, 720h or 90s")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("it must not be negative")
        return float(value)
    if isinstance(value, str) and value.strip().endswith("d") and value.strip()[:-1].isdigit():
        return int(value.strip()[:-1]) * 86400.0
    return parse_duration(str(value))


# --------------------------------------------------------------------------- project and environment checks


def with_edge_ports(route: Route, ports: EdgePorts) -> Route:
    return replace(route, ports=ports) if route.routed else route


def routed_services(blueprint: Any) -> dict[str, Route]:
    """service -> its Route, for the services with host names."""
    out = {}
    for name, bp in sorted(blueprint.services.items()):
        route = getattr(getattr(bp, "ingress", None), "route", None)
        if route is not None and route.routed:
            out[name] = route
    return out


def check_project_routes(project: Any, blueprint: Any, environment: Any) -> None:
    """Exit 2 before anything is touched: a host name claimed by two services of the
    project; `tls: auto` in an environment without `ingress.acme`, or of 2+ nodes without
    the service mesh (followers reach the issuer over it)."""
    problems: list[Problem] = []
    claimed: dict[str, str] = {}
    auto: list[str] = []
    for name, route in routed_services(blueprint).items():
        key = f"services.{name}.x-orch.ingress.hosts"
        for host in route.hosts:
            if host in claimed:
                problems.append(project.problem(
                    f"services {claimed[host]} and {name} both claim the host name {host}", key,
                    fix=f"keep {host} in one service's hosts (a host name is served by one service)"))
            claimed.setdefault(host, name)
        if route.tls == TLS_AUTO:
            auto.append(name)
    if auto and environment is not None:
        settings = getattr(environment, "ingress", None)
        env_file = str(getattr(environment, "file", ""))
        key = f"services.{auto[0]}.x-orch.ingress.tls"
        if settings is None or settings.acme is None:
            loc = project.problem("", key)
            problems.append(Problem(
                f"service {', '.join(auto)} asks for tls: auto ({loc.file or 'the Compose file'}"
                f"{':' + str(loc.line) if loc.line else ''}), but the environment {environment.name} has no "
                f"ingress.acme settings (its file: {env_file})",
                file=env_file, key="ingress.acme",
                fix="add `ingress: {acme: {directory: https://acme-v02.api.letsencrypt.org/directory, email: "
                    "you@example.com}}` to the environment file, or give a certificate (tls: {cert, key})"))
        elif len(environment.nodes) > 1 and not environment.mesh_enabled:
            problems.append(Problem(
                f"service {', '.join(auto)} asks for tls: auto, but the environment {environment.name} has "
                f"{len(environment.nodes)} nodes and its service mesh is off: the nodes that do not obtain the "
                "certificates fetch them from the one that does over the mesh",
                file=env_file, key="mesh.mode",
                fix="turn the mesh on (mesh: {mode: auto}, the default, with WireGuard on the nodes), or give a "
                    "certificate from files (tls: {cert, key})"))
    if problems:
        raise InputError(problems)

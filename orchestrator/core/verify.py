"""Verification: an environment's checks, run against what is live, results recorded.

Checks come from the environment file (`verify: checks:`), two kinds:

- http: a URL template (Jinja2, strict) rendered per node when it uses `node`, else
  once. Context: node {name, host, port, labels}, service {name, port, ports} (when the
  check names a service), env {name, promote_from, registry}, vars, nodes, project
  {name}, release {id}. A check naming a service runs against the nodes where that
  service has containers (the placement), else against every node of the environment.
  It passes on the expected status and, if given, a body containing `contains`; each
  attempt has `timeout` seconds, and a failing one is retried `retries` more times, a
  second apart.
- command: an argv run on the controller, in the project's folder, with the
  environment's URLs exported: ORCH_ENV, ORCH_PROJECT, ORCH_RELEASE, ORCH_NODES (hosts,
  space-separated), ORCH_NODE_<NODE>=host, and per service with a published port
  ORCH_URL_<SERVICE> (http://host:port/ on the first node running it) and
  ORCH_URLS_<SERVICE> (every such node). It passes on exit code 0 within `timeout`
  seconds; `retries` applies too.

    targets = plan_checks(env, project, placement, release_id)     # pure (this module)
    report = run_checks(targets, environ=..., cwd=project.working_dir)  # orchestrator.io.checks
    record_verification(ledger, release, report)                  # on the live release
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.errors import InputError, Problem



@dataclass(frozen=True)
class CheckTarget:
    """One thing to run: a check rendered for one node (http) or the command."""

    name: str
    kind: str  # http | command
    status: int = 200
    contains: str | None = None
    timeout: float = 5.0
    retries: int = 3
    url: str | None = None
    argv: tuple[str, ...] = ()
    node: str | None = None
    service: str | None = None
    environ: dict[str, str] = field(default_factory=dict)  # exported to commands

    @property
    def target(self) -> str:
        return self.url if self.kind == "http" else " ".join(self.argv)


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    target: str  # the URL, or the command line
    ok: bool
    attempts: int
    seconds: float
    node: str | None = None
    service: str | None = None
    status: int | None = None  # HTTP status, or the command's exit code
    error: str = ""
    output: list[str] = field(default_factory=list)  # last lines of a command's output

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", [])} | {"ok": self.ok}


@dataclass
class VerifyReport:
    env: str
    project: str
    release: int | None
    results: list[CheckResult]
    started: str
    finished: str
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def to_json(self) -> dict:
        return {"env": self.env, "project": self.project, "release": self.release, "ok": self.ok,
                "started": self.started, "finished": self.finished, "seconds": self.seconds,
                "passed": sum(r.ok for r in self.results), "total": len(self.results),
                "results": [r.to_json() for r in self.results]}

    def summary(self) -> str:
        n, bad = len(self.results), len(self.failed)
        if not n:
            return f"{self.env}: no checks configured."
        if not bad:
            return f"{self.env}: all {n} check(s) passed."
        return f"{self.env}: {bad} of {n} check(s) failed: " + ", ".join(
            f"{r.name}" + (f"@{r.node}" if r.node else "") for r in self.failed)


# --------------------------------------------------------------------------- nothing to verify


def gated_on(env: Any) -> list[Any]:
    """The environments beside ENV's file that promote from ENV behind the `verified`
    gate (gates.verification), by name; a file that does not load is left out (commands
    on that environment report it)."""
    from orchestrator.core.environments import list_environments, load_environment
    from orchestrator.errors import OrchError

    out = []
    directory = env.file.parent
    for name in list_environments(directory):
        if name == env.name:
            continue
        try:
            other = load_environment(name, directory)
        except OrchError:
            continue
        if other.promote_from == env.name and other.gates.verification:
            out.append(other)
    return out


def nothing_to_verify(env: Any, gated: Iterable[Any] = ()) -> InputError:
    """`orch verify` on an environment without checks: bad input (exit 2), not a pass,
    since a pass with no check would record nothing and verify nothing; the way out
    names both fixes for each environment whose `verified` gate waits on ENV."""
    from orchestrator.core.yamlsrc import load_yaml_file, locate

    file = str(env.file)
    try:
        doc = load_yaml_file(env.file)
        loc = locate(doc, "verify.checks") if isinstance(doc, dict) and "verify" in doc else None
    except Exception:  # the file loaded a moment ago; a location is a nicety
        loc = None
    gated = list(gated)
    message = f"nothing to verify: {env.name} has no verify checks, so `orch verify --env {env.name}` can " \
              "neither pass nor record anything"
    fix = f"add checks under `verify: checks:` in {file} (an `http:` URL per service, or a `command:`; see " \
          f"docs/reference/environment-file.md), then run `orch verify --env {env.name}` again"
    if gated:
        names = ", ".join(g.name for g in gated)
        message += f"; {names} promote{'s' if len(gated) == 1 else ''} only verified releases of {env.name}"
        fix += "; or, if " + ("it" if len(gated) == 1 else "they") + " should take unverified releases, remove " \
            "the `verified` gate (`gates.verification: false`) from " + \
            ", ".join(f"{g.name}'s environment file ({g.file})" for g in gated)
    return InputError(Problem(message + ".", file=file, line=loc.line if loc else None,
                              column=loc.column if loc else None, key="verify.checks", fix=fix + "."))


# --------------------------------------------------------------------------- planning (pure)


def env_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def published_port(svc: Any) -> int | None:
    """The service's first published TCP port (a range: its first port)."""
    for p in getattr(svc, "ports", None) or []:
        if p.published and (p.protocol or "tcp") == "tcp":
            try:
                return int(str(p.published).split("-")[0])
            except ValueError:
                continue
    return None


def service_urls(project: Any, env: Any, placement: Mapping[str, list[str]] | None) -> dict[str, list[str]]:
    """{service: ["http://host:port/", ...]} for services with a published port."""
    out: dict[str, list[str]] = {}
    if project is None:
        return out
    hosts = {n.name: n.host for n in env.nodes}
    for name in sorted(project.services):
        port = published_port(project.services[name])
        if port is None:
            continue
        nodes = (placement or {}).get(name) or ([] if placement else [n.name for n in env.nodes])
        out[name] = [f"http://{hosts[n]}:{port}/" for n in nodes if n in hosts]
    return out


def command_environment(env: Any, project: Any, release: int | None,
                        placement: Mapping[str, list[str]] | None) -> dict[str, str]:
    exports = {"ORCH_ENV": env.name, "ORCH_NODES": " ".join(n.host for n in env.nodes)}
    if project is not None:
        exports["ORCH_PROJECT"] = project.name
    if release is not None:
        exports["ORCH_RELEASE"] = str(release)
    for n in env.nodes:
        exports[f"ORCH_NODE_{env_key(n.name)}"] = n.host
    for name, urls in service_urls(project, env, placement).items():
        if urls:
            exports[f"ORCH_URL_{env_key(name)}"] = urls[0]
            exports[f"ORCH_URLS_{env_key(name)}"] = " ".join(urls)
    return exports


def plan_checks(env: Any, project: Any = None, placement: Mapping[str, list[str]] | None = None,
                release: int | None = None) -> list[CheckTarget]:
    """Every check of the environment rendered into targets (see the module docstring).

    placement: {service: [node names running it]}; None when unknown (every node).
    """
    import jinja2
    from jinja2 import meta

    from orchestrator.core import templates

    jenv = templates.environment()
    base = env.template_context()
    base["project"] = {"name": project.name if project is not None else ""}
    base["release"] = {"id": release}
    exports = command_environment(env, project, release, placement)
    nodes = {n.name: n for n in env.nodes}
    targets: list[CheckTarget] = []
    problems: list[Problem] = []
    for check in env.verify.checks:
        common = dict(name=check.name, status=check.status, contains=check.contains, timeout=check.timeout,
                      retries=max(0, check.retries), service=check.service)
        if check.command is not None:
            targets.append(CheckTarget(kind="command", argv=tuple(check.command), environ=exports, **common))
            continue
        ctx = dict(base)
        if check.service:
            svc = project.services.get(check.service) if project is not None else None
            if project is not None and svc is None:
                line, column = _location(check, "service")
                problems.append(Problem(f"check {check.name} names service '{check.service}', which the project "
                                        f"{project.name} does not have", file=str(env.file), line=line,
                                        column=column, key=_key(check, "service"),
                                        fix=f"use one of: {', '.join(sorted(project.services))}."))
                continue
            port = published_port(svc) if svc is not None else None
            ports = [p.published for p in (svc.ports if svc is not None else [])]
            ctx["service"] = {"name": check.service, "port": port, "ports": ports}
        try:
            template = jenv.from_string(check.http)
            per_node = "node" in meta.find_undeclared_variables(jenv.parse(check.http))
        except jinja2.TemplateSyntaxError as err:
            line, column = _location(check, "http")
            problems.append(Problem(f"check {check.name}: template syntax error: {err.message}", file=str(env.file),
                                    line=line, column=column, key=_key(check, "http"),
                                    fix="close every {{ ... }} and {% ... %}."))
            continue
        if per_node:
            if check.service and placement is not None:
                names = list(placement.get(check.service) or [])
                if not names:
                    targets.append(CheckTarget(kind="http", url="", node=None, **common))  # fails: not running
                    continue
            else:
                names = list(nodes)
            for name in names:
                n = nodes.get(name)
                if n is None:
                    continue
                c = dict(ctx, node={"name": n.name, "host": n.host, "port": n.port, "labels": dict(n.labels)})
                url = _render(template, c, check, env, problems)
                if url is not None:
                    targets.append(CheckTarget(kind="http", url=url, node=n.name, **common))
        else:
            url = _render(template, ctx, check, env, problems)
            if url is not None:
                targets.append(CheckTarget(kind="http", url=url, **common))
    if problems:
        raise InputError(problems)
    return targets


def _key(check: Any, key: str) -> str:
    """verify.checks[INDEX].KEY, the form the environment parser uses."""
    return f"verify.checks[{getattr(check, 'index', 0)}].{key}"


def _location(check: Any, key: str) -> tuple[int | None, int | None]:
    return (getattr(check, "locations", None) or {}).get(key, (None, None))


def _render(template: Any, ctx: dict, check: Any, env: Any, problems: list[Problem]) -> str | None:
    import jinja2

    from orchestrator.core import templates

    try:
        return templates.render(template, ctx).strip()
    except templates.TemplateFailed as err:
        line, column = _location(check, "http")
        problem = Problem(f"check {check.name}: {err.message}", file=str(env.file), line=line, column=column,
                          key=_key(check, "http"), fix=err.fix)
        if problem not in problems:
            problems.append(problem)
        return None
    except jinja2.UndefinedError as err:
        line, column = _location(check, "http")
        problem = Problem(f"check {check.name}: template error: {err.message}", file=str(env.file), line=line,
                          column=column, key=_key(check, "http"),
                          fix="use node.host, node.name, service.port, env.name, vars.*, release.id.")
        if problem not in problems:  # a per-node template fails the same way on every node
            problems.append(problem)
        return None


def placement_from_state(containers: Mapping[str, list[Mapping[str, Any]]], project: str) -> dict[str, list[str]]:
    """{service: [nodes with a running container]} from each node's agent `state` answer."""
    out: dict[str, list[str]] = {}
    for node in sorted(containers):
        for c in containers[node]:
            if c.get("project") == project and c.get("state") == "running":
                nodes = out.setdefault(c["service"], [])
                if node not in nodes:
                    nodes.append(node)
    return out


def record_verification(ledger: Any, history: Any, report: VerifyReport) -> Any:
    """Store the report on the release it ran against (releases.with_verification)."""
    from orchestrator.core.releases import with_verification

    release = history.get(report.release) if report.release is not None else None
    if release is None:
        return None
    return ledger.write(with_verification(release, report.to_json()))

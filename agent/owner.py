"""Which environment a project belongs to on this engine, and the guard that keeps
environments apart.

Container, network and volume names carry the project, not the environment, so two
environments deploying one project to one node would share them: one's `up` would
replace the other's containers and mount its volumes, one's `down` would remove them.
Every object the agent makes carries io.orch.env; an operation acts for one environment
(its spec's or its args' `env`, "" when none is given) and never changes or removes an
object labelled with another one:
  - operations that create or replace (apply, rollout, restore, retire, discard,
    prune_images) are refused before they touch anything when the project has any
    object of another environment on this engine (`refuse_foreign`);
  - operations that only remove (remove, prune, networks/volumes remove) skip such
    objects (agent.wire.labels.other_env).
The controller reads `owners` from `state` and refuses the deploy up front (exit 2);
this is the defence in depth whatever a controller asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from agent.wire import labels as L
from agent.wire.protocol import CONFLICT, AgentError


@dataclass(frozen=True)
class Owned:
    kind: str  # container | network | volume | ingress
    name: str
    env: str


def owned(ctx: Any, project: str, reads: bool = False) -> List[Owned]:
    """Every object of `project` on this engine that carries an environment label.
    reads: list through ctx.reads (no docker SDK), for `state`."""
    from agent.ingress import ingress_state

    engine = ctx.reads if reads else ctx.engine
    sel = L.filters(project)
    out = [Owned("container", name, L.env_of(labels)) for name, labels in engine.listed(sel)]
    out += [Owned("network", n["name"], L.env_of(n["labels"])) for n in engine.networks(sel)]
    out += [Owned("volume", v["name"], L.env_of(v["labels"])) for v in engine.volumes(sel)]
    out += [Owned("ingress", "%s port %s" % (svc, (f.get("port") or {}).get("published")), f.get("env") or "")
            for svc, f in sorted(ingress_state(ctx, project).items())]
    return [o for o in out if o.env]


def owners(ctx: Any, project: str, reads: bool = False) -> Dict[str, List[str]]:
    """{env: ["container web-1", ...]} for `state`: who owns the project on this engine."""
    out: Dict[str, List[str]] = {}
    for o in owned(ctx, project, reads):
        out.setdefault(o.env, []).append("%s %s" % (o.kind, o.name))
    return out


def refuse_foreign(ctx: Any, project: str, env: str, op: str) -> None:
    """Raise (kind conflict) if `project` has objects of an environment other than `env`
    on this engine; called before an operation changes anything."""
    foreign = [o for o in owned(ctx, project) if o.env != (env or "")]
    if not foreign:
        return
    other = sorted(set(o.env for o in foreign))
    raise AgentError(
        CONFLICT,
        "%s refused: project %s on this node belongs to environment %s, not %s (%s); two environments "
        "of one project on one node would share its containers, networks and volumes"
        % (op, project, " and ".join(other), env or "(none)",
           ", ".join("%s %s" % (o.kind, o.name) for o in foreign[:5]) + (" ..." if len(foreign) > 5 else "")),
        {"project": project, "env": env, "owners": other,
         "fix": "deploy %s to other nodes, give it its own project name, or remove %s's deployment of %s "
                "from this node first (orch down --env %s --volumes)" % (env or "it", other[0], project, other[0])},
    )


# A container holds its published ports in these states (a kept, stopped one does not).
HOLDING = ("running", "restarting", "paused")


def ports_elsewhere(ctx: Any, project: str, reads: bool = False) -> List[Dict[str, Any]]:
    """Host ports published on this engine by what orch runs for other projects (their
    running containers and ingress frontends), for `state`: the controller refuses a
    deploy that needs one of them (exit 2) instead of failing when a container starts."""
    from agent.ingress import _paths
    from agent.ingress_files import load_state

    engine = ctx.reads if reads else ctx.engine
    out = []
    for c in engine.containers([L.PROJECT]):
        if c.project == project or c.state not in HOLDING:
            continue
        for p in c.ports:
            if p.get("published"):
                out.append({"published": p["published"], "protocol": p.get("protocol") or "tcp",
                            "host_ip": p.get("host_ip") or "", "project": c.project, "env": L.env_of(c.labels),
                            "by": "container %s" % c.name})
    try:
        frontends = list(load_state(_paths(ctx)).values())
    except (OSError, ValueError, AgentError):
        frontends = []
    for s in frontends:
        if s.project == project:
            continue
        if s.published:  # 0: reached by host name only (no port of its own)
            out.append({"published": s.published, "protocol": "tcp", "host_ip": s.host_ip, "project": s.project,
                        "env": s.env, "by": "the ingress of %s" % s.service})
        if s.route.routed:  # the node's shared host-name ports (agent.edge)
            out += [{"published": port, "protocol": "tcp", "host_ip": "0.0.0.0", "project": s.project,
                     "env": s.env, "by": "the ingress's host names (%s)" % s.service}
                    for port in (s.route.ports.http, s.route.ports.https)]
    return sorted(out, key=lambda p: (p["published"], p["protocol"], p["by"]))

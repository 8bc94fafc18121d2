"""Nodes shared by environments and projects: what a deploy may not take over (pure,
over the agents' `state` answers; agent/owner.py is the agent's side).

Engine names carry the project, not the environment, so one project deployed by two
environments to one node would share its containers, networks and volumes: the second
environment is bad input before anything changes. Another project (the same app under
another project name, say) coexists, but not on a host port already published there.
"""

from __future__ import annotations

from typing import Any, Mapping

from orchestrator.errors import InputError, Problem


def of_env(state: Mapping[str, Any], env: str) -> dict:
    """A node's `state` without what another environment made ("" env: made before env labels)."""
    def mine(x: Mapping[str, Any]) -> bool:
        return not x.get("env") or x.get("env") == env

    return dict(state, containers=[c for c in state.get("containers") or [] if mine(c)],
                ingress={s: f for s, f in (state.get("ingress") or {}).items() if mine(f)})


def refuse_taken_ports(project: Any, blueprint: Any, units: Mapping[tuple[str, str], Any],
                       taken: Mapping[str, list]) -> None:
    """Bad input (exit 2, before anything changes) when a service placed on a node needs a
    host port that another project (or another environment's copy of this one, under its
    own project name) already publishes there: its container could not start."""
    problems = []
    for (service, node), _unit in sorted(units.items()):
        bp = blueprint.services.get(service)
        if bp is None or not taken.get(node):
            continue
        wanted = [(ip, port, proto) for ip, port, proto, _ in bp.published]
        if bp.ingress is not None and bp.ingress.published:  # 0: host routes only (core/edge_plan checks those)
            wanted.append((bp.ingress.host_ip, bp.ingress.published, "tcp"))
        for ip, port, proto in wanted:
            for held in taken[node]:
                if not held.get("published"):
                    continue  # another project's host routes: no port of its own
                same_ip = not ip or ip == "0.0.0.0" or not held.get("host_ip") or held["host_ip"] in (ip, "0.0.0.0")
                if held.get("published") == port and held.get("protocol", "tcp") == proto and same_ip:
                    owner = f"project {held.get('project')}" + (f", environment {held['env']}" if held.get("env") else "")
                    loc = getattr(project.services.get(service), "loc", None)
                    problems.append(Problem(
                        f"service {service} publishes host port {port}/{proto} on node {node}, but {held.get('by')} "
                        f"({owner}) already publishes it there",
                        file=getattr(loc, "file", None), line=getattr(loc, "line", None), key=f"services.{service}.ports",
                        fix=f"publish another host port for {service} (in the Compose file, or with `ports: !override` "
                            f"in this environment's overlay), or deploy it to other nodes."))
                    break
    if problems:
        raise InputError(problems)


def refuse_other_envs(environment: Any, project: str, owners: Mapping[str, Mapping[str, list]]) -> None:
    """Bad input (exit 2, before anything changes) when a node of `environment` holds the
    project for another environment: both would use the same container, network and
    volume names (agent.owner; the agent refuses too, whatever it is asked)."""
    problems = []
    for i, node in enumerate(environment.nodes):
        others = {e: objs for e, objs in (owners.get(node.name) or {}).items() if e != environment.name}
        for other, objs in sorted(others.items()):
            shown = ", ".join(objs[:4]) + (" ..." if len(objs) > 4 else "")
            problems.append(Problem(
                f"node {node.name} already runs project {project} for environment {other} ({shown}); "
                f"environment {environment.name} cannot deploy {project} there too: the two would share its "
                f"containers, networks and volumes, and one's up or down would replace or remove the other's.",
                file=str(environment.file), line=node.line, key=f"nodes[{i}]",
                fix=f"give {environment.name} nodes of its own, or deploy it under its own project name "
                    f"(orch up --env {environment.name} -p {project}-{environment.name}), or remove {other}'s "
                    f"deployment first (orch down --env {other} --volumes)."))
    if problems:
        raise InputError(problems)

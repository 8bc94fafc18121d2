"""The mesh step of `orch up` (read -> core.mesh plans -> nodes apply). `orch down`'s
part is in app/operate.py (`mesh_leave`), `orch nodes check`'s in app/nodes.py.

Before any container changes, every node whose mesh differs from the plan is brought to
it: nodes without a key make one (`mesh_join`, the private key stays there), then each
such node gets its MeshConfig (`mesh_apply`). When a node joins, every other node gets
the new peer too. Nothing here runs for an environment whose mesh is off.
"""
from __future__ import annotations

from typing import Any

from orchestrator.errors import OrchError
from orchestrator.core.mesh import MeshLayout, MeshSettings, mesh_actions, node_configs, plan_layout
from orchestrator.io import transport as T


def project_networks(blueprint: Any) -> set[str]:
    """The project's own Compose networks (external ones are not the mesh's to address)."""
    return {name for svc in blueprint.services.values() for name, decl in svc.networks.items()
            if not decl.get("external")}


def layout(environment: Any, project: str, blueprint: Any, observed: dict) -> MeshLayout:
    return plan_layout(environment.mesh or MeshSettings(), [n.name for n in environment.nodes], project,
                       project_networks(blueprint), observed, where=str(environment.file))


def apply_mesh(environment: Any, nodes: dict[str, Any], lay: MeshLayout, observed: dict, actions: list) -> dict:
    """Join and configure the nodes the plan names; returns node -> the node's new state."""
    if not actions:
        return {}
    keys = {name: (s or {}).get("public_key") or "" for name, s in observed.items()}
    joining = [a.node for a in actions if a.join]
    if joining:
        joined, errors = T.parallel([nodes[n] for n in joining],
                                    lambda n: n.call("mesh_join", {"env": environment.name}))
        if errors:
            raise _mesh_error("join the mesh", errors)
        keys.update({n: r["public_key"] for n, r in joined.items()})
    configs = node_configs(environment.name, lay, environment.nodes, keys)
    # A node that joined is a new peer for every other node: all of them get the new list.
    targets = [n.name for n in environment.nodes] if joining else [a.node for a in actions]
    done, errors = T.parallel([nodes[n] for n in targets],
                              lambda n: n.call("mesh_apply", {"config": configs[n.name].to_dict()}))
    if errors:
        raise _mesh_error("set up the mesh", errors)
    return done


def _mesh_error(what: str, errors: dict[str, BaseException]) -> OrchError:
    """One error naming every node that failed, each with its own fix; no container was
    changed yet (the mesh step runs first), so the previous release still serves."""
    lines = [f"could not {what} on {len(errors)} node(s); no container was changed:"]
    fixes = []
    for name, err in sorted(errors.items()):
        text = err.render() if isinstance(err, OrchError) else str(err)
        lines.append(f"  - {name}: {text}")
        fix = getattr(err, "fix", None) or (getattr(err, "details", {}) or {}).get("fix")
        if fix and fix not in fixes:
            fixes.append(fix)
    return OrchError("\n".join(lines), fix="; ".join(fixes) or "fix what each node reports, then run orch up again")


def refresh_names(env: str, nodes: dict[str, Any], steps: list, units: dict) -> list[str]:
    """Before a wave starts dependents on nodes where a dependency does not run: those
    nodes' names are brought up to date first (`mesh_refresh`), waiting (bounded) until each
    has heard from the nodes its dependents' dependencies run on, so the dependency, ready
    on its own node a moment ago, resolves and answers at once. Returns a warning for each
    node still not there (the wave goes on: a dependency's node may be down, and the
    daemon keeps trying)."""
    need: dict[str, set[str]] = {}
    for st in steps:
        for _dep, on in getattr(units.get((st.service, st.node)), "cross_node", ()):
            need.setdefault(st.node, set()).update(on)
    targets = [n for n in sorted(need) if n in nodes]
    answers, _errors = T.parallel([nodes[n] for n in targets],  # an error shows in the rollout that follows
                                  lambda n: n.call("mesh_refresh", {"env": env, "peers": sorted(need[n.name])}))
    warnings = []
    for node in targets:
        missing = list((answers.get(node) or {}).get("missing") or [])
        if "daemon" in missing:
            warnings.append(f"{node}: the service mesh's name daemon is not running or did not answer in time; "
                            f"dependents there may not resolve their dependencies yet (orch nodes check --env {env})")
        elif missing:
            warnings.append(f"{node} has not heard from {', '.join(missing)} over the service mesh: dependents "
                            f"there may not reach their dependencies yet (orch nodes check --env {env})")
    return warnings


__all__ = ["refresh_names", "layout", "apply_mesh", "mesh_actions", "project_networks"]

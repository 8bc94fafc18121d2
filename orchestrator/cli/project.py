"""Commands that only read: config, graph, envs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import (
    EnvFiles, EnvironmentsDir, EnvName, Files, Json, Profiles, ProjectName, project_options,
)
from orchestrator.cli.output import final, masked_project, print_final, protect, protect_environment, warn

Services = Annotated[Optional[list[str]], typer.Argument(metavar="[SERVICE]...", help="Services (and their dependencies); default: all.")]


def _print_warnings(project) -> None:
    for problem in getattr(project, "warnings", []):
        warn(problem.render())


@app.command("config")
def config(
    services: Services = None,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    env: EnvName = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Print the resolved project, like `docker compose config` (--json: canonical form).

    JSON: {"version": 1, "status": "ok", "command": "config", "project": {...}}; secret
    values are masked (***) in both forms.
    """
    from orchestrator.app.workspace import load_workspace

    ws = protect(load_workspace(project_options(file, project_name, env_file, profile, env, environments, services)))
    _print_warnings(ws.project)
    from orchestrator.core.compose.render import dict_to_yaml

    shown = masked_project(ws.project)  # not only the filter: short secrets are masked too
    if json:
        print_final(final("ok", "config", environment=ws.environment.name if ws.environment else None,
                          project=shown, warnings=[p.render() for p in getattr(ws.project, "warnings", [])]))
    else:
        typer.echo(dict_to_yaml(shown), nl=False)


@app.command("graph")
def graph(
    services: Services = None,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    env: EnvName = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Print the dependency waves: services of one wave start in parallel."""
    from orchestrator.core import graph as graphs
    from orchestrator.app.workspace import load_workspace

    ws = protect(load_workspace(project_options(file, project_name, env_file, profile, env, environments, services)))
    _print_warnings(ws.project)
    g = graphs.build_graph(ws.project)
    if services:
        g = graphs.subgraph(g, graphs.with_dependencies(g, services))
    result = graphs.waves(g)
    if json:
        edges = sorted([list(edge) for edge in g.edges])
        print_final(final("ok", "graph", project=ws.project.name, waves=result, edges=edges))
        return
    for i, wave in enumerate(result, 1):
        typer.echo(f"wave {i}: {', '.join(wave)}")
    for name in sorted(g):
        deps = sorted(g.predecessors(name))
        if deps:
            typer.echo(f"  {name} <- {', '.join(deps)}")


@app.command("envs")
def envs(
    file: Files = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """List the environments and the promotion pipeline (dev -> test -> prod)."""
    from orchestrator.core import environments as envmod
    from orchestrator.app.workspace import ProjectOptions

    directory = envmod.environments_dir(ProjectOptions(files=list(file or [])).project_dir(), environments)
    loaded = envmod.load_all(directory)
    for e in loaded.values():
        protect_environment(e)
    order = envmod.pipeline_order(loaded)
    rows = []
    for name in order:
        e = loaded[name]
        rows.append({
            "name": name,
            "file": str(e.file),
            "promote_from": e.promote_from,
            "nodes": [{"name": n.name, "host": n.host, "labels": n.labels} for n in e.nodes],
            "registry": e.registry.address,
            "gates": {"approval": e.gates.approval, "verification": e.gates.verification},
            "verify_on_deploy": e.verify.on_deploy,
        })
    if json:
        print_final(final("ok", "envs", directory=str(directory), pipeline=order, environments=rows))
        return
    if not rows:
        typer.echo(f"no environments in {directory} (create environments/ENV.yaml)")
        return
    typer.echo("pipeline: " + " -> ".join(order))
    for r in rows:
        gates = [g for g, on in r["gates"].items() if on]
        src = f" <- {r['promote_from']}" if r["promote_from"] else ""
        nodes = ", ".join(f"{n['name']}({n['host']})" for n in r["nodes"])
        typer.echo(f"  {r['name']}{src}: {nodes}" + (f"; gates: {', '.join(gates)}" if gates else ""))

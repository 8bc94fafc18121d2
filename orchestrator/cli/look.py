"""`orch stats | top | inspect | port`: looking at what runs (orchestrator.app.look).

Thin: parse the arguments, call the use case, render (orchestrator.cli.render); heavy
imports stay inside the functions so `orch --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import EnvFiles, EnvironmentsDir, EnvRequired, Files, Json, Profiles, ProjectName, \
    project_options

Target = Annotated[str, typer.Argument(metavar="SERVICE[/REPLICA]", help="The service, or one replica of it (web/2).")]


def _workspace(file, project_name, env_file, profile, env, environments):
    from orchestrator.app.workspace import load_workspace
    from orchestrator.cli.output import protect

    return protect(load_workspace(project_options(file, project_name, env_file, profile, env, environments)))


def _show(command: str, ws: Any, rows: list[dict], render: Any, json: bool) -> None:
    """One command's rows: the final JSON object, or the rendered text."""
    from orchestrator.cli.output import final, print_final

    if json:
        print_final(final("ok", command, environment=ws.environment.name, project=ws.project.name, containers=rows))
    else:
        typer.echo(render(rows))


@app.command("stats")
def stats(
    services: Annotated[Optional[list[str]], typer.Argument(metavar="[SERVICE]...", help="Only these services.")] = None,
    env: EnvRequired = ...,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="One sample, then exit.")] = False,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """CPU, memory, network and block I/O of every container of the project on every node.

    Refreshed live until Ctrl-C, like `docker stats` (each sample takes the engines about
    a second); --no-stream: one sample. CPU % is of one CPU (200% is two busy CPUs);
    memory without the page cache. JSON: one {"event": "stats", "containers": [...]} per
    sample, then the final object with the last sample (with --no-stream only the final
    object).
    """
    from orchestrator.app.look import watch_stats
    from orchestrator.cli.output import print_event
    from orchestrator.cli.render import stats_table

    ws = _workspace(file, project_name, env_file, profile, env, environments)
    last: list[dict] = []

    def done() -> None:
        if json:
            _show("stats", ws, last, None, True)
        elif not last:
            typer.echo(f"no containers of {ws.project.name} on {ws.environment.name}")

    if no_stream or json or not sys.stdout.isatty():
        def show(rows: list[dict]) -> bool:
            last[:] = rows
            if json and not no_stream:
                print_event("stats", containers=rows)
            elif not json and rows:
                typer.echo(stats_table(rows) + ("" if no_stream else "\n"))
            return True

        try:
            watch_stats(ws, list(services or []), show, stream=not no_stream)
        except KeyboardInterrupt:
            done()
            raise typer.Exit(0)
        done()
        return

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    with Live(Text("sampling..."), console=console, auto_refresh=False, transient=False) as live:
        def redraw(rows: list[dict]) -> bool:
            last[:] = rows
            live.update(Text(stats_table(rows) if rows else
                             f"no containers of {ws.project.name} on {ws.environment.name}"), refresh=True)
            return True

        try:
            watch_stats(ws, list(services or []), redraw)
        except KeyboardInterrupt:
            pass
    raise typer.Exit(0)


@app.command("top")
def top(
    target: Target,
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """The processes running in each replica of a service (or in one: SERVICE/REPLICA), on every node."""
    from orchestrator.app import look
    from orchestrator.cli.render import top_text

    ws = _workspace(file, project_name, env_file, profile, env, environments)
    rows = look.top(ws, target)
    _show("top", ws, rows, top_text, json)


@app.command("inspect")
def inspect(
    target: Target,
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """A service's containers (or one replica's: SERVICE/REPLICA) as the engine sees them, with orch's view.

    Per container: node, release, config hash, image, and the Docker Engine's inspect
    document. Secrets are masked (***): environment values under secret names, passwords
    in URLs and NAME=VALUE pairs, and the project's known secret values.
    """
    from orchestrator.app import look
    from orchestrator.app.pipeline import secret_values
    from orchestrator.cli.render import inspect_text

    ws = _workspace(file, project_name, env_file, profile, env, environments)
    rows = look.inspect(ws, target, secret_values(ws.project))
    _show("inspect", ws, rows, inspect_text, json)


@app.command("port")
def port(
    target: Target,
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """The published ports of each replica of a service (or of SERVICE/REPLICA), per node, and where to reach them."""
    from orchestrator.app import look
    from orchestrator.cli.render import ports_table

    ws = _workspace(file, project_name, env_file, profile, env, environments)
    rows = look.ports(ws, target)
    _show("port", ws, rows, ports_table, json)

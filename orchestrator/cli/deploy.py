"""`orch up | plan | down | ps | logs | exec`: deploy to an environment and operate it.

Thin: everything happens in orchestrator.deploy; heavy imports stay inside the
functions so `orch --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli import app
from orchestrator.cli.options import (
    EnvFiles, EnvironmentsDir, EnvRequired, Files, Json, LockWait, Profiles, ProjectName, command_line,
    project_options,
)

Services = Annotated[Optional[list[str]], typer.Argument(metavar="SERVICE", help="Services (and their dependencies); default: all.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Connect, observe and print the plan; change nothing.")]
# `orch logs -f` follows (as docker compose logs -f); there the Compose file is --file only.
LogsFiles = Annotated[Optional[list[Path]], typer.Option("--file", metavar="FILE", help="Compose file (repeatable).")]
RemoveOrphans = Annotated[bool, typer.Option(
    "--remove-orphans", help="Also remove containers of services that are no longer in the Compose file.")]
NoBuild = Annotated[bool, typer.Option(
    "--no-build", help="Do not build or push: deploy the images of this version already in the registry.")]
Version = Annotated[Optional[str], typer.Option(
    "--version", metavar="TAG", help="Image tag to build and deploy instead of the git short hash (+ -dirty-<hash>).")]


def _workspace(file, project_name, env_file, profile, env, environments, services=None):
    from orchestrator.workspace import load_workspace

    return load_workspace(project_options(file, project_name, env_file, profile, env, environments, services))


def _fail(progress, err, command: str, ws, t0: float, plan=None):
    """Final JSON object for a failed command (JSON output), the error on stderr, exit code."""
    import time

    from orchestrator.deploy import failure_json

    if progress is not None and progress.json:
        project = getattr(getattr(ws, "project", None), "name", None)
        environment = getattr(getattr(ws, "environment", None), "name", None)
        progress.finish(failure_json(err, command, project, environment, time.monotonic() - t0, plan))
        print(f"orch: error: {err.render()}", file=sys.stderr, flush=True)
        raise typer.Exit(err.exit_code)
    if progress is not None:
        progress.finish({"status": "failed"})
    raise err


@app.command("up")
def up(
    services: Services = None,
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    dry_run: DryRun = False,
    remove_orphans: RemoveOrphans = False,
    no_build: NoBuild = False,
    version: Version = None,
    lock_wait: LockWait = 0.0,
    json: Json = False,
) -> None:
    """Build, push and deploy the project to an environment as a new release.

    In order: validate (bad input exits 2, nothing touched); check the registry, build
    and push the services with build: and pin every image to its digest (a failed build
    or an unreachable registry exits 1 before any node is touched); connect to every
    node; take the environment's deploy lock (held by another: exit 4, or wait with
    --lock-wait); plan; record the release as deploying; apply wave by wave; mark it
    live (or failed); run the environment's verify checks when it says on_deploy (a
    failing check exits 1, the release stays live but unverified); remove the project's
    images older than the last 5 releases ($ORCH_KEEP_IMAGES) from the nodes. Nothing
    changed: no new release ("already live as dev #N").

    Output: a live table on a terminal; JSON lines with --json or when stdout is not a
    terminal (then one final object with "status", "release_id", "images", ...).
    """
    import time

    from orchestrator import pipeline
    from orchestrator.errors import OrchError
    from orchestrator.progress import make_progress
    from orchestrator.workspace import load_workspace

    t0 = time.monotonic()
    progress = make_progress(json)
    ws = None
    try:
        opts = project_options(file, project_name, env_file, profile, env, environments, services)
        ws = load_workspace(opts)
        opts.env_name = None
        base = load_workspace(opts).project
        result = pipeline.up(ws, base, pipeline.PipelineOptions(
            services=list(services or []), dry_run=dry_run, remove_orphans=remove_orphans, lock_wait=lock_wait,
            version=version, build=not no_build, keep_images=pipeline.keep_images_default(),
            command_line=command_line()), progress)
    except OrchError as err:
        _fail(progress, err, "up", ws, t0)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    finish(progress, result)


def finish(progress, result) -> None:
    """The final object / summary of a pipeline result; exit 1 when verification failed."""
    from orchestrator.pipeline import release_summary

    progress.finish(result.to_json(), release_summary(result))
    if result.error is not None:
        print(f"orch: error: {result.error.render()}", file=sys.stderr, flush=True)
        raise typer.Exit(result.exit_code)


@app.command("plan")
def plan(
    services: Services = None,
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    remove_orphans: RemoveOrphans = False,
    json: Json = False,
) -> None:
    """Show what `orch up` would change on each node (connects and reads state; changes nothing).

    Images are compared by digest: those of this version already in the registry (nothing
    is built or pushed; a version not pushed yet shows its services as changing).
    """
    from orchestrator import pipeline
    from orchestrator.cli.output import print_json, warn
    from orchestrator.deploy import JSON_VERSION
    from orchestrator.progress import Progress
    from orchestrator.workspace import load_workspace

    class _Warn(Progress):
        def warning(self, text: str) -> None:
            warn(text)

    opts = project_options(file, project_name, env_file, profile, env, environments, services)
    ws = load_workspace(opts)
    opts.env_name = None
    base = load_workspace(opts).project
    result = pipeline.up(ws, base, pipeline.PipelineOptions(services=list(services or []), dry_run=True,
                                                            remove_orphans=remove_orphans), _Warn()).deploy
    if json:
        print_json({"version": JSON_VERSION, "status": "ok", "command": "plan", "environment": result.environment,
                    "project": result.project, "plan": result.plan.to_json(),
                    "containers": [r.to_json() for r in result.containers]})
    else:
        typer.echo(result.plan.render_text())


@app.command("down")
def down(
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    volumes: Annotated[bool, typer.Option("--volumes", "-v", help="Also remove the project's named volumes (data!).")] = False,
    lock_wait: LockWait = 0.0,
    json: Json = False,
) -> None:
    """Remove the project from an environment: containers (dependents first) and networks on every node.

    Takes the environment's deploy lock first (held by another: exit 4). The release
    history stays on the nodes.
    """
    import time

    from orchestrator import pipeline
    from orchestrator.errors import OrchError
    from orchestrator.progress import make_progress

    t0 = time.monotonic()
    progress = make_progress(json)
    ws = None
    try:
        ws = _workspace(file, project_name, env_file, profile, env, environments)
        result = pipeline.down(ws, pipeline.PipelineOptions(lock_wait=lock_wait, command_line=command_line()),
                               volumes, progress)
    except OrchError as err:
        _fail(progress, err, "down", ws, t0)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    nodes = sorted({r["node"] for r in result.removed})
    text = (f"Removed {len(result.removed)} container(s) of {result.project} from {result.environment}"
            + (f" ({', '.join(nodes)})" if nodes else "") + f" in {result.duration_s:.1f}s.")
    nets = sorted({n for ns in result.networks.values() for n in ns})
    if nets:
        text += f"\nNetworks removed: {', '.join(nets)}."
    vols = sorted({v for vs in result.volumes.values() for v in vs})
    if vols:
        text += f"\nVolumes removed: {', '.join(vols)}."
    elif not volumes:
        text += "\nVolumes kept (orch down --volumes removes them)."
    progress.finish(result.to_json(), text)


@app.command("ps")
def ps(
    services: Annotated[Optional[list[str]], typer.Argument(metavar="SERVICE", help="Only these services.")] = None,
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """One row per container across the environment's nodes: service, replica, node, state,
    health, image (pinned: repo@sha256:digest; --json has the full digest), ports, uptime."""
    from orchestrator.cli.output import print_json
    from orchestrator.deploy import JSON_VERSION, list_containers
    from orchestrator.progress import container_table

    ws = _workspace(file, project_name, env_file, profile, env, environments)
    rows = list_containers(ws)
    if services:
        rows = [r for r in rows if r.service in set(services)]
    if json:
        print_json({"version": JSON_VERSION, "status": "ok", "command": "ps", "environment": ws.environment.name,
                    "project": ws.project.name, "containers": [r.to_json() for r in rows]})
        return
    if not rows:
        typer.echo(f"no containers of {ws.project.name} on {ws.environment.name}")
        return
    typer.echo(container_table(rows))


@app.command("logs")
def logs(
    services: Annotated[Optional[list[str]], typer.Argument(metavar="SERVICE", help="Services; default: all.")] = None,
    env: EnvRequired = ...,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new lines until Ctrl-C.")] = False,
    tail: Annotated[str, typer.Option("--tail", "-n", metavar="N", help="Lines from the end of each container's log, or 'all'.")] = "all",
    since: Annotated[Optional[str], typer.Option("--since", metavar="SINCE", help="Only lines since: 10m, 2h, or a time (2024-05-01T12:00).")] = None,
    file: LogsFiles = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Logs of every replica of the services, each line prefixed SERVICE-REPLICA@NODE."""
    from orchestrator.cli.output import print_json
    from orchestrator.deploy import parse_since, stream_logs
    from orchestrator.errors import InputError, Problem

    if tail != "all" and not tail.isdigit():
        raise InputError(Problem(f"--tail {tail!r} must be a number or 'all'"))
    ws = _workspace(file, project_name, env_file, profile, env, environments)
    unknown = [s for s in services or [] if s not in ws.project.services]
    if unknown:
        raise InputError(Problem(f"no such service: {', '.join(unknown)}",
                                 fix=f"name one of: {', '.join(sorted(ws.project.services))}"))
    since_ts = parse_since(since)

    def write(line: dict) -> None:
        if json:
            print_json(line)
        else:
            sys.stdout.write(f"{line['service']}-{line['replica']}@{line['node']} | {line['line']}\n")
            sys.stdout.flush()

    try:
        stream_logs(ws, list(services or []), follow, tail if tail == "all" else int(tail), since_ts, write)
    except KeyboardInterrupt:
        raise typer.Exit(0 if follow else 130)


@app.command("exec")
def exec_(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service.")],
    command: Annotated[list[str], typer.Argument(metavar="CMD", help="The command and its arguments (after --).")],
    env: EnvRequired = ...,
    replica: Annotated[Optional[int], typer.Option("--replica", metavar="N", help="Which replica (default: the first running).")] = None,
    user: Annotated[str, typer.Option("--user", "-u", metavar="USER", help="Run as this user.")] = "",
    workdir: Annotated[str, typer.Option("--workdir", "-w", metavar="DIR", help="Working directory in the container.")] = "",
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
) -> None:
    """Run a command in a service's container (orch exec --env ENV SERVICE -- CMD...); exits with its code."""
    from orchestrator.deploy import run_exec
    from orchestrator.errors import InputError, Problem

    ws = _workspace(file, project_name, env_file, profile, env, environments)
    if service not in ws.project.services:
        raise InputError(Problem(f"no such service: {service}",
                                 fix=f"name one of: {', '.join(sorted(ws.project.services))}"))
    code = run_exec(ws, service, replica, list(command), user, workdir)
    raise typer.Exit(code)

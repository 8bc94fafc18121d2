"""`orch up | plan | down | ps | logs | exec`: deploy to an environment and operate it.

Thin: everything happens in orchestrator.app.deploy; heavy imports stay inside the
functions so `orch --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.clock import whole
from orchestrator.cli.root import app
from orchestrator.cli.options import (
    EnvFiles, EnvironmentsDir, EnvRequired, Files, Json, LockWait, Profiles, ProjectName, command_line,
    project_options,
)

Services = Annotated[Optional[list[str]], typer.Argument(metavar="[SERVICE]...", help="Services (and their dependencies); default: all.")]
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
    from orchestrator.cli.output import protect
    from orchestrator.app.workspace import load_workspace

    return protect(load_workspace(project_options(file, project_name, env_file, profile, env, environments, services)))


def _fail(progress, err, command: str, ws, t0: float, plan=None, environment: str | None = None,
          project: str | None = None):
    """Final JSON object for a failed command (JSON output), the error on stderr, exit code.
    environment / project: the names given on the command line, for when no Workspace
    was loaded yet."""
    import time

    from orchestrator.cli.output import verbose
    from orchestrator.cli.render import failure_json

    if progress is not None and progress.json:
        project = getattr(getattr(ws, "project", None), "name", None) or project
        environment = getattr(getattr(ws, "environment", None), "name", None) or environment
        progress.finish(failure_json(err, command, project, environment, time.monotonic() - t0, plan))
        print(f"orch: error: {err.render()}", file=sys.stderr, flush=True)
        if verbose():
            import traceback

            traceback.print_exception(err, file=sys.stderr)
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
    watch: Annotated[bool, typer.Option(
        "--watch", help="Block until the release is live (exit 0) or rolled back (exit 1). Always so: the "
        "controller drives the rolling update; the flag is for scripts that say it (Swarm, Nomad).")] = False,
    json: Json = False,
) -> None:
    """Build, push and deploy the project to an environment as a new release.

    In order: validate (bad input exits 2, nothing touched); check the registry, build
    and push the services with build: and pin every image to its digest (a failed build
    or an unreachable registry exits 1 before any node is touched); connect to every
    node; take the environment's deploy lock (held by another: exit 4, or wait with
    --lock-wait); plan; record the release as deploying; apply wave by wave, each
    service's changed replicas in batches (deploy.update_config: parallelism, order,
    monitor; x-orch health gate), keeping the replaced containers; mark it live and drop
    them. A failure the service's update_config does not tolerate puts every replaced
    replica back (failure_action rollback, the default), marks the release failed and
    exits 1. Then run the environment's verify checks when it says on_deploy (a
    failing check exits 1, the release stays live but unverified); remove the project's
    images older than the last 5 releases ($ORCH_KEEP_IMAGES) from the nodes. Nothing
    changed: no new release ("already live as dev #N").

    Output: a live table on a terminal; JSON lines with --json or when stdout is not a
    terminal (then one final object with "status", "release_id", "images", ...).
    """
    import time

    from orchestrator.app import pipeline
    from orchestrator.app import up as U
    from orchestrator.cli.output import make_progress, protect, protect_project
    from orchestrator.errors import OrchError
    from orchestrator.app.workspace import load_with_base

    t0 = time.monotonic()
    progress = make_progress(json)
    ws = None
    try:
        ws, base = load_with_base(project_options(file, project_name, env_file, profile, env, environments, services))
        protect(ws)
        protect_project(base)
        result = U.up(ws, base, pipeline.PipelineOptions(
            services=list(services or []), dry_run=dry_run, remove_orphans=remove_orphans, lock_wait=lock_wait,
            version=version, build=not no_build, keep_images=pipeline.keep_images_default(),
            command_line=command_line()), progress)
    except OrchError as err:
        _fail(progress, err, "up", ws, t0, environment=env, project=project_name)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    finish(progress, result)


def finish(progress, result) -> None:
    """The final object / summary of a pipeline result; exit 1 when verification failed."""
    from orchestrator.cli.render import release_summary

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

    Each service's rolling update is listed as `orch up` runs it: its batches in order
    (stop-first or start-first per replica), what is retired, the monitor window, and
    what a failure puts back (`rollout` in --json).

    Images are compared by digest: those of this version already in the registry (nothing
    is built or pushed; a version not pushed yet shows its services as changing).
    """
    from orchestrator.app import pipeline
    from orchestrator.app import up as U
    from orchestrator.cli.output import final, print_final, protect, protect_project, warn
    from orchestrator.core.progress import Progress
    from orchestrator.app.workspace import load_with_base

    class _Warn(Progress):
        def warning(self, text: str) -> None:
            warn(text)

    ws, base = load_with_base(project_options(file, project_name, env_file, profile, env, environments, services))
    protect(ws)
    protect_project(base)
    result = U.up(ws, base, pipeline.PipelineOptions(services=list(services or []), dry_run=True,
                                                            remove_orphans=remove_orphans), _Warn()).deploy
    if json:
        print_final(final("ok", "plan", environment=result.environment, project=result.project,
                          plan=result.plan.to_json(), containers=[r.to_json() for r in result.containers]))
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

    from orchestrator.app import pipeline
    from orchestrator.cli.output import make_progress
    from orchestrator.errors import OrchError

    t0 = time.monotonic()
    progress = make_progress(json)
    ws = None
    try:
        ws = _workspace(file, project_name, env_file, profile, env, environments)
        result = pipeline.down(ws, pipeline.PipelineOptions(lock_wait=lock_wait, command_line=command_line()),
                               volumes, progress)
    except OrchError as err:
        _fail(progress, err, "down", ws, t0, environment=env, project=project_name)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    nodes = sorted({r["node"] for r in result.removed})
    text = (f"Removed {len(result.removed)} container(s) of {result.project} from {result.environment}"
            + (f" ({', '.join(nodes)})" if nodes else "") + f" in {whole(result.duration_s):.1f}s.")
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
    services: Annotated[Optional[list[str]], typer.Argument(metavar="[SERVICE]...", help="Only these services.")] = None,
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """One row per container across the environment's nodes: service, replica, node, state,
    health, image (pinned: repo@sha256:digest; --json has the full digest), ports, uptime;
    then, for services behind the ingress, each node's port and its servers' health."""
    from orchestrator.cli.output import final, print_final
    from orchestrator.app.operate import list_containers
    from orchestrator.cli.render import container_table

    ws = _workspace(file, project_name, env_file, profile, env, environments)
    ingress: list[dict] = []
    rows = list_containers(ws, ingress=ingress)
    if services:
        rows = [r for r in rows if r.service in set(services)]
        ingress = [r for r in ingress if r["service"] in set(services)]
    if json:
        print_final(final("ok", "ps", environment=ws.environment.name, project=ws.project.name,
                          containers=[r.to_json() for r in rows], ingress=ingress))
        return
    if not rows and not ingress:
        typer.echo(f"no containers of {ws.project.name} on {ws.environment.name}")
        return
    if rows:
        typer.echo(container_table(rows))
    if ingress:
        from orchestrator.cli.render import ingress_table

        typer.echo("\n" + ingress_table(ingress))


@app.command("logs")
def logs(
    services: Annotated[Optional[list[str]], typer.Argument(metavar="[SERVICE]...", help="Services; default: all.")] = None,
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
    """Logs of every replica of the services, each line prefixed SERVICE-REPLICA@NODE.

    JSON: one {"event": "log", "service", "replica", "node", "container", "line"} per
    line, then the final object with the number of lines (with -f: after Ctrl-C).
    """
    from orchestrator.cli.output import final, print_event, print_final
    from orchestrator.app.operate import parse_since, stream_logs
    from orchestrator.errors import InputError, Problem

    if tail != "all" and not tail.isdigit():
        raise InputError(Problem(f"--tail {tail!r} must be a number or 'all'"))
    ws = _workspace(file, project_name, env_file, profile, env, environments)
    unknown = [s for s in services or [] if s not in ws.project.services]
    if unknown:
        raise InputError(Problem(f"no such service: {', '.join(unknown)}",
                                 fix=f"name one of: {', '.join(sorted(ws.project.services))}"))
    since_ts = parse_since(since)

    count = 0

    def write(line: dict) -> None:
        nonlocal count
        count += 1
        if json:
            print_event("log", **line)
        else:
            sys.stdout.write(f"{line['service']}-{line['replica']}@{line['node']} | {line['line']}\n")
            sys.stdout.flush()

    def done(status: str = "ok") -> None:
        if json:
            print_final(final(status, "logs", environment=ws.environment.name, project=ws.project.name,
                              services=list(services or []), lines=count))

    try:
        stream_logs(ws, list(services or []), follow, tail if tail == "all" else int(tail), since_ts, write)
    except KeyboardInterrupt:
        if follow:
            done()
            raise typer.Exit(0)
        raise typer.Exit(130)
    done()


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
    from orchestrator.app.operate import run_exec
    from orchestrator.errors import InputError, Problem

    ws = _workspace(file, project_name, env_file, profile, env, environments)
    if service not in ws.project.services:
        raise InputError(Problem(f"no such service: {service}",
                                 fix=f"name one of: {', '.join(sorted(ws.project.services))}"))
    code = run_exec(ws, service, replica, list(command), user, workdir)
    raise typer.Exit(code)

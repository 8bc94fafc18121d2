"""`orch promote` and `orch rollback`: releases moved along the pipeline, or back.

Thin: everything happens in orchestrator.app.pipeline; heavy imports stay inside the
functions so `orch --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import (
    EnvFiles, EnvironmentsDir, EnvRequired, Files, Json, LockWait, Profiles, ProjectName, command_line,
    project_options,
)

DryRun = Annotated[bool, typer.Option("--dry-run", help="Check the gates, connect and print the plan; change nothing.")]


@app.command("promote")
def promote(
    app_name: Annotated[str, typer.Argument(
        metavar="APP", help="The project to promote (its name; with a Compose file at hand, like -p).")],
    to: Annotated[str, typer.Option("--to", metavar="ENV", help="The environment to promote into.")],
    from_env: Annotated[Optional[str], typer.Option(
        "--from", metavar="ENV", help="The environment to promote from (default: the target's promote_from).")] = None,
    from_archive: Annotated[Optional[str], typer.Option(
        "--from-archive", metavar="FILE", help="Promote the release saved in FILE by `orch image save` (its "
        "images loaded into ENV's registry with `orch image load`) instead of another environment's.")] = None,
    approve: Annotated[bool, typer.Option(
        "--approve", help="Approve the promotion (for a target that requires approval; in CI: ORCH_APPROVE=1). "
        "Recorded on the release with your name.")] = False,
    dry_run: DryRun = False,
    lock_wait: LockWait = 0.0,
    file: Files = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Deploy the live release of the previous environment to ENV: the same digests, ENV's overlay.

    The source is the live release of --from, default the environment ENV promotes from
    (promote_from). Gates, in order, each refusing with exit 3 and saying how to pass it:
    the source release is live and healthy; verified, when ENV requires verification;
    approved, when ENV requires approval. Then the source's project as recorded (before
    any environment's overlay) is deployed with ENV's overlay and exactly the source's
    digests; nothing is rebuilt. The new release records its source ("prod #7 <- test
    #12 <- dev #31"). A release already live in ENV is a no-op that says so. Takes ENV's
    deploy lock (exit 4 when held). With a Compose file at hand, secrets come from
    today's files and environment (the ledger keeps only their hashes). --from-archive
    FILE: the source is the release saved in FILE (an air-gapped site), same gates.
    """
    import time
    from pathlib import Path

    from orchestrator.app import pipeline
    from orchestrator.app import release as RE
    from orchestrator.cli.deploy import _fail, finish
    from orchestrator.core.environments import load_environment
    from orchestrator.cli.output import make_progress, protect_environment, protect_project
    from orchestrator.errors import InputError, OrchError, Problem
    from orchestrator.app.workspace import load_today

    t0 = time.monotonic()
    progress = make_progress(json)
    ws = _Named(app_name, to)
    try:
        opts = project_options(file, app_name, env_file, profile, None, environments)
        project_dir = opts.project_dir()
        target = load_environment(to, environments, project_dir)
        protect_environment(target)
        source = None
        if from_archive and from_env:
            raise InputError(Problem("--from and --from-archive name two sources", fix="pass one of them"))
        if not from_archive:
            source_name = from_env or target.promote_from
            if not source_name:
                raise InputError(Problem(f"environment {to} has no promote_from: it is the first stage",
                                         file=str(target.file), key="promote_from",
                                         fix=f"pass --from ENV, or deploy to {to} with `orch up --env {to}`"))
            source = load_environment(source_name, environments, project_dir)
            protect_environment(source)
        today = load_today(opts)
        protect_project(today)
        result = RE.promote(
            app_name, target, source,
            pipeline.PipelineOptions(dry_run=dry_run, lock_wait=lock_wait, approve=approve,
                                     keep_images=pipeline.keep_images_default(), command_line=command_line()),
            progress, today=today, working_dir=today.working_dir if today is not None else project_dir,
            archive=Path(from_archive) if from_archive else None)
    except OrchError as err:
        _fail(progress, err, "promote", ws, t0)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    finish(progress, result)


@app.command("rollback")
def rollback(
    env: EnvRequired = ...,
    to: Annotated[Optional[str], typer.Option(
        "--to", metavar="RELEASE", help="The release id to go back to (default: the one live before the current).")] = None,
    dry_run: DryRun = False,
    lock_wait: LockWait = 0.0,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Re-apply an earlier release of ENV: its recorded rendered project and digests, not today's files.

    The result is a new release, marked as a rollback of the one it replaces (which
    becomes "rolled back"). Default target: the release live before the current one.
    The nodes keep the images of the last 5 releases, so a rollback pulls nothing.
    Takes ENV's deploy lock (exit 4 when held). With a Compose file at hand, secrets
    come from today's files and environment (the ledger keeps only their hashes); -p
    NAME alone works without one.
    """
    import time

    from orchestrator.app import pipeline
    from orchestrator.app import release as RE
    from orchestrator.cli.deploy import _fail, finish
    from orchestrator.cli.output import make_progress, protect_environment, protect_project
    from orchestrator.errors import OrchError
    from orchestrator.app.workspace import resolve_project

    t0 = time.monotonic()
    progress = make_progress(json)
    ws = _Named(project_name, env)
    try:
        release_id = pipeline.parse_release_id(to)
        target = resolve_project(project_options(file, project_name, env_file, profile, env, environments),
                                 today=True)
        protect_project(target.project)
        protect_environment(target.environment)
        ws = _Named(target.name, target.environment.name)
        result = RE.rollback(
            target.name, target.environment,
            pipeline.PipelineOptions(dry_run=dry_run, lock_wait=lock_wait,
                                     keep_images=pipeline.keep_images_default(), command_line=command_line()),
            to=release_id, progress=progress, today=target.project, working_dir=target.working_dir)
    except OrchError as err:
        _fail(progress, err, "rollback", ws, t0)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    finish(progress, result)


class _Named:
    """Project and environment names for the failure JSON when no Workspace was loaded."""

    def __init__(self, project: str, environment: str):
        self.project = type("P", (), {"name": project})()
        self.environment = type("E", (), {"name": environment})()

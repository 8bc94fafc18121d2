"""`orch prune`: what orch left behind on an environment's nodes and in its registry.

Thin: orchestrator.app.prune plans (core/prune.py) and applies; render.prune_summary draws it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.options import (
    EnvFiles, EnvironmentsDir, EnvRequired, Files, Json, LockWait, Profiles, ProjectName, command_line,
)
from orchestrator.cli.root import app


@app.command("prune")
def prune(
    env: EnvRequired = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be removed; change nothing.")] = False,
    volumes: Annotated[bool, typer.Option(
        "--volumes", help="Also remove the project's volumes no container mounts and the live release does not "
        "declare (data!).")] = False,
    lock_wait: LockWait = 0.0,
    json: Json = False,
) -> None:
    """Remove what no kept release needs: on every node the project's images no kept release
    uses (the last 5 releases, $ORCH_KEEP_IMAGES), its stopped containers the live release
    does not count on, its secret/config files of services with no container (and half-written ones); with
    --volumes, its volumes no container mounts. In the environment's registry: the
    manifests of the project's releases no environment keeps (then the lab registry's
    garbage collection; for another registry the command to run); without a registry, each
    node's loopback registry the same way, then its garbage collection. Only objects with
    orch's labels for this project and environment, only the project's repositories.

    --dry-run prints exactly the plan `orch prune` then carries out. Takes the deploy
    lock (held by another: exit 4).
    """
    import time

    from orchestrator.app import pipeline
    from orchestrator.app.prune import prune as run_prune
    from orchestrator.cli.deploy import _fail, _workspace
    from orchestrator.cli.output import make_progress
    from orchestrator.cli.render import prune_summary
    from orchestrator.errors import OrchError

    t0 = time.monotonic()
    progress = make_progress(json)
    ws = None
    try:
        ws = _workspace(file, project_name, env_file, profile, env, environments)
        outcome = run_prune(ws, dry_run=dry_run, volumes=volumes, keep=pipeline.keep_images_default(),
                            lock_wait=lock_wait, command_line=command_line(), progress=progress)
    except OrchError as err:
        _fail(progress, err, "prune", ws, t0, environment=env, project=project_name)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    from orchestrator.core.progress import JSON_VERSION

    doc = {"version": JSON_VERSION, "status": "planned" if dry_run else "ok", "command": "prune",
           "project": outcome.plan.project, "environment": outcome.plan.env, **outcome.to_dict(),
           "duration_s": round(time.monotonic() - t0, 3)}
    progress.finish(doc, prune_summary(outcome))

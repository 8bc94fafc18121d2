"""`orch build` and `orch push`: the project's images, tagged <registry>/<project>/<service>:<version>."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import (
    EnvFiles, EnvironmentsDir, EnvRequired, Files, Json, Profiles, ProjectName, project_options,
)
from orchestrator.cli.output import final, print_final, protect, warn

Services = Annotated[Optional[list[str]], typer.Argument(metavar="[SERVICE]...", help="Services (default: every service with build:).")]
Version = Annotated[
    Optional[str],
    typer.Option("--version", help="Image tag to use instead of the git short hash (+ -dirty-<hash>)."),
]


def _load(file, project_name, env_file, profile, env, environments):
    from orchestrator.app.workspace import load_workspace

    ws = protect(load_workspace(project_options(file, project_name, env_file, profile, env, environments)))
    for problem in getattr(ws.project, "warnings", []):
        warn(problem.render())
    return ws.project, ws.environment


def _jobs(verb: str, key: str, services, version, file, project_name, env_file, profile, env, environments, json: bool):
    """Load the project, compute the image version and plan its builds (shared by build
    and push); None, after saying so, when no service has build:."""
    from orchestrator.app.images import plan_images

    project, environment = _load(file, project_name, env_file, profile, env, environments)
    info, jobs = plan_images(project, environment, services, version)
    if jobs:
        return project, environment, info, jobs
    if json:
        print_final(final("ok", verb, project=project.name, environment=environment.name, env=environment.name,
                          image_version=info.version, **{key: []}))
    else:
        typer.echo(f"{project.name}: no service has build:, nothing to {verb}.")
    return None


def _printer(json: bool):
    stream = sys.stderr if json else sys.stdout

    def out(service: str, line: str) -> None:
        stream.write(f"{service} | {line}\n")
        stream.flush()

    return out


@app.command("build")
def build(
    services: Services = None,
    env: EnvRequired = ...,
    version: Version = None,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Build the services with build: using this machine's Docker Engine, tagged for ENV's registry."""
    from orchestrator.app.images import build_images

    planned = _jobs("build", "built", services, version, file, project_name, env_file, profile, env, environments, json)
    if planned is None:
        return
    project, environment, info, jobs = planned
    results = build_images(jobs, _printer(json))
    if json:
        print_final(final("ok", "build", project=project.name, environment=environment.name, env=environment.name,
                          image_version=info.version, version_source=info.source, dirty=info.dirty,
                          built=[{"service": r.service, "tag": r.ref, "image_id": r.image_id, "seconds": r.seconds,
                                  "steps": r.steps, "cached_steps": r.cached_steps} for r in results]))
        return
    how = {"override": "--version", "git": "git, uncommitted changes" if info.dirty else "git", "content": "no git: "
           "content hash"}[info.source]
    typer.echo(f"\nbuilt {len(results)} image(s), version {info.version} ({how}):")
    for r in results:
        typer.echo(f"  {r.service:<12} {r.ref}  {r.image_id[7:19]}  {r.seconds:.1f}s "
                   f"({r.steps} steps, {r.cached_steps} cached)")


@app.command("push")
def push(
    services: Services = None,
    env: EnvRequired = ...,
    version: Version = None,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Push the built images to ENV's registry (with its credentials) and print their digests."""
    from orchestrator.app.images import push_images
    from orchestrator.cli.render import table
    from orchestrator.core.compose.units import human_size

    planned = _jobs("push", "pushed", services, version, file, project_name, env_file, profile, env, environments, json)
    if planned is None:
        return
    project, environment, info, jobs = planned
    results = push_images(environment, jobs, _printer(json))
    if json:
        print_final(final("ok", "push", project=project.name, environment=environment.name, env=environment.name,
                          registry=environment.registry.address, image_version=info.version,
                          pushed=[r.to_json() for r in results], images={r.service: r.pinned for r in results},
                          bytes_pushed=sum(r.bytes_pushed for r in results)))
        return
    typer.echo(f"\npushed {len(results)} image(s) to {environment.registry.address}, version {info.version}:")
    rows = [[r.service, r.pinned, human_size(r.bytes_pushed),
             f"{r.layers_pushed} pushed, {r.layers_mounted} mounted, {r.layers_reused} already there "
             f"(image {human_size(r.image_bytes)})"] for r in results]
    typer.echo(table(["SERVICE", "IMAGE", "SENT", "LAYERS"], rows))


# --------------------------------------------------------------------------- orch image save / load

image_app = typer.Typer(
    help="Carry a live release to an air-gapped site: `image save` writes its images and record into one "
    "archive, `image load` verifies one and pushes its images into an environment's registry (then "
    "`orch promote APP --to ENV --from-archive FILE`).",
    no_args_is_help=True,
)
app.add_typer(image_app, name="image")


@image_app.command("save")
def image_save(
    env: EnvRequired = ...,
    output: Annotated[str, typer.Option("-o", "--output", metavar="FILE", help="The archive to write (a tar).")] = ...,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Write ENV's live release of the project (its recorded digests, rendered and base project,
    lineage) and its images, fetched from ENV's registry by digest (without a registry: from a
    node's loopback registry), into one archive."""
    import time
    from pathlib import Path

    from orchestrator.app import archive as AR
    from orchestrator.app.workspace import resolve_project
    from orchestrator.cli.deploy import _fail
    from orchestrator.cli.output import make_progress, protect_environment
    from orchestrator.core.progress import JSON_VERSION
    from orchestrator.errors import OrchError

    t0 = time.monotonic()
    progress = make_progress(json)
    try:
        target = resolve_project(project_options(file, project_name, env_file, profile, env, environments))
        protect_environment(target.environment)
        res = AR.save(target.name, target.environment, Path(output), progress)
    except OrchError as err:
        _fail(progress, err, "image save", None, t0, environment=env, project=project_name)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    doc = {"version": JSON_VERSION, "status": "ok", "command": "image save", "environment": res.env, **res.to_json()}
    lines = [f"saved {res.release.ref} of {res.project} ({len(res.images)} image(s), "
             f"{doc['bytes']} bytes) into {res.path}:"]
    lines += [f"  {s:<12} {i['ref']}" for s, i in sorted(res.images.items())]
    progress.finish(doc, "\n".join(lines))


@image_app.command("load")
def image_load(
    archive: Annotated[str, typer.Argument(metavar="FILE", help="An archive written by `orch image save`.")],
    env: EnvRequired = ...,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Verify every image in FILE against its digest (a corrupt or truncated archive is bad input,
    exit 2, and nothing is touched), then push the images into ENV's registry by digest and read
    each digest back (an environment without a registry: into every node's loopback registry).
    Deploy them with `orch promote APP --to ENV --from-archive FILE`."""
    import time
    from pathlib import Path

    from orchestrator.app import archive as AR
    from orchestrator.cli.deploy import _fail
    from orchestrator.cli.output import make_progress, protect_environment
    from orchestrator.core.environments import load_environment
    from orchestrator.core.progress import JSON_VERSION
    from orchestrator.errors import OrchError

    t0 = time.monotonic()
    progress = make_progress(json)
    try:
        environment = load_environment(env, environments, Path.cwd())
        protect_environment(environment)
        res = AR.load(Path(archive), environment, progress)
    except OrchError as err:
        _fail(progress, err, "image load", None, t0, environment=env)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    doc = {"version": JSON_VERSION, "status": "ok", "command": "image load", **res.to_json()}
    rel = res.archive.release
    lines = [f"loaded {rel['env']} #{rel['id']} of {rel['project']} into {res.registry} ({len(res.loaded)} image(s)):"]
    lines += [f"  {x.service:<12} {x.ref}  ({x.blobs_pushed} blobs pushed, {x.blobs_present} already there)"
              for x in res.loaded]
    progress.finish(doc, "\n".join(lines))

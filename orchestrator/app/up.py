"""`orch up`: a new release of the project built, pinned, deployed and recorded under the
environment's lock (the flow: orchestrator.app.pipeline).

When nothing is to be built (the images are only pinned, as on most re-runs), the nodes
are connected in the background meanwhile, once the files are valid: connecting (SSH, the
agents' start and hello) changes nothing on a node, and when the images fail the
connections are closed unused (`_connect_early`)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from orchestrator.app.connection import EnvConnection
from orchestrator.app.pipeline import (
    PipelineOptions,
    PipelineResult,
    Seams,
    _Flow,
    _Prepared,
    release_services,
    secret_values,
    validate,
)
from orchestrator.core.progress import Progress
from orchestrator.core.releases import History, Release, new_release, redact_manifest, render_manifest
from orchestrator.errors import InputError, Problem


# --------------------------------------------------------------------------- up


def up(workspace: Any, base_project: Any, opts: PipelineOptions, progress: Progress | None = None,
       seams: Seams | None = None) -> PipelineResult:
    """`orch up`: see the module docstring. base_project: the same Compose project
    loaded without the environment (recorded so that a promotion can apply another
    environment's overlay); None records the rendered project as the base."""
    progress = progress or Progress()
    seams = seams or Seams()
    t0 = time.monotonic()
    project, env = workspace.project, workspace.environment
    if env is None:
        raise InputError(Problem("no environment given", fix="pass --env ENV"))
    validate(project, env, opts.services)
    building = _to_build(project, opts)
    conn = EnvConnection(env, project.name, progress, seams)
    connecting = None if building else _connect_early(conn, opts)
    t_img = time.monotonic()
    try:
        imageset = _prepare_images(project, env, opts, progress, seams, building)
    except BaseException:
        if connecting is not None:
            _abandon(conn, connecting)
        raise
    pins = dict(imageset.pins)
    image_seconds = time.monotonic() - t_img
    environ = seams.environ
    secrets = secret_values(project, environ)
    flow = _Flow("up", env, project.name, opts, progress, seams)
    # Without a registry the built images are pinned once moved to the nodes, under the lock
    # (pins is updated in place): the manifests are rendered from the pins then.
    flow.local_images = dict(getattr(imageset, "local", None) or {})

    def prepare(history: History) -> _Prepared:
        def make(h: History) -> Release:
            manifest = render_manifest(project, pins)
            base = redact_manifest(render_manifest(base_project if base_project is not None else project, pins),
                                   project.name, secrets)
            rel = new_release(h, services=release_services(h, project, pins, opts.services), manifest=manifest,
                              performer=flow.performer, command="up", version=imageset.version.version,
                              secret_values=secrets)
            return replace(rel, extra={"base": base})

        return _Prepared(workspace, pins, make)

    res = flow.run(prepare, noop_if_live=True, conn=conn, connecting=connecting)
    res.image_version = imageset.version.version
    res.pushed = [p.to_json() for p in imageset.pushes]
    res.timings["images"] = image_seconds
    res.duration_s = time.monotonic() - t0
    if res.status == "planned":
        res.images = pins
    return res


def _to_build(project: Any, opts: PipelineOptions) -> list[str]:
    """The services this command builds (none with --no-build or --dry-run)."""
    if not opts.build or opts.dry_run:
        return []
    return [n for n, s in sorted(project.services.items()) if s.build is not None
            and (not opts.services or n in opts.services)]


def _connect_early(conn: EnvConnection, opts: PipelineOptions) -> Future:
    """conn.connect() in a thread of its own, started before an images step that only pins:
    both mostly wait on the network, and connecting (SSH, the agents' start and hello; the
    agent bundle uploaded to a node that lacks it) changes nothing a deploy owns. Not before
    a build: connections idle through a long build would only be exposed to the network's
    hiccups, and its CPU would slow the handshakes. The state is read along with the hello
    only for a dry run; else under the lock, with it (EnvConnection.lock)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orch-connect")
    try:
        return pool.submit(conn.connect, read_state=opts.dry_run)
    finally:
        pool.shutdown(wait=False)


def _abandon(conn: EnvConnection, connecting: Future) -> None:
    """The images failed: the connections opened meanwhile are closed unused (their failure,
    if any, is not this command's error)."""
    try:
        connecting.result()
    except BaseException:
        pass
    conn.close()


def _prepare_images(project: Any, env: Any, opts: PipelineOptions, progress: Progress, seams: Seams,
                    building: list[str]) -> Any:
    from orchestrator.core.images import plan_builds
    from orchestrator.io import images as I

    prepare = seams.images or I.prepare_images
    if building:
        progress.phase("images", f"building and pushing {', '.join(building)}" if env.registry.address
                       else f"building {', '.join(building)} (no registry: moved to the nodes over SSH)")
    else:
        progress.phase("images", "pinning images to digests")

    def out(service: str, line: str) -> None:
        if progress.json:
            progress.event("build", service=service, line=line)
        else:
            progress.phase("images", f"{service}: {line.strip()[:100]}")

    kw = dict(version=opts.version, services=opts.services or None, on_output=out, environ=seams.environ)
    if not opts.dry_run:
        return prepare(project, env, build_images=opts.build, **kw)
    try:  # a dry run builds and pushes nothing: the version's images if they are pushed
        return prepare(project, env, build_images=False, **kw)
    except I.ImageNotFound as err:
        progress.warning(f"{err.message.split(':', 1)[0]}: not pushed yet; the plan assumes the built images change")
        info = I.compute_version(I.version_paths(project, opts.services or None), opts.version)
        jobs = plan_builds(project, env, info.version, opts.services or None, seams.environ)
        pins = {j.service: j.ref for j in jobs}
        pins.update(I.resolve_images(project, env, opts.services or None, environ=seams.environ))
        return I.ImageSet(info, pins, jobs=jobs)

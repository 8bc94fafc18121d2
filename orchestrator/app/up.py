"""`orch up`: a new release of the project built, pinned, deployed and recorded under the
environment's lock (the flow: orchestrator.app.pipeline)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

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
    t_img = time.monotonic()
    imageset = _prepare_images(project, env, opts, progress, seams)
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

    res = flow.run(prepare, noop_if_live=True)
    res.image_version = imageset.version.version
    res.pushed = [p.to_json() for p in imageset.pushes]
    res.timings["images"] = image_seconds
    res.duration_s = time.monotonic() - t0
    if res.status == "planned":
        res.images = pins
    return res


def _prepare_images(project: Any, env: Any, opts: PipelineOptions, progress: Progress, seams: Seams) -> Any:
    from orchestrator.core.images import plan_builds
    from orchestrator.io import images as I

    prepare = seams.images or I.prepare_images
    building = [n for n, s in sorted(project.services.items()) if s.build is not None
                and (not opts.services or n in opts.services)]
    if building and opts.build and not opts.dry_run:
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

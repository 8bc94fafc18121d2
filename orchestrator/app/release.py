"""`orch promote` and `orch rollback`: a release that ran elsewhere (the source environment)
or earlier (the ledger) deployed again under the lock, through the gates (the flow:
orchestrator.app.pipeline)."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.wire.messages import StateRequest, StateResult
from orchestrator.app.pipeline import (
    EnvConnection,
    PipelineOptions,
    PipelineResult,
    Seams,
    _Flow,
    _Prepared,
    project_from_manifest,
    secret_values,
    validate,
)
from orchestrator.core.progress import Progress
from orchestrator.core.releases import (
    History,
    Release,
    check_promotion,
    health_from_state,
    new_release,
    render_manifest,
    rollback_release,
    select_rollback,
)
from orchestrator.errors import InputError, Problem
from orchestrator.io.ledger import ReleaseLedger




# --------------------------------------------------------------------------- promote


def promote(project_name: str, target: Any, source: Any, opts: PipelineOptions, progress: Progress | None = None,
            seams: Seams | None = None, today: Any = None, working_dir: Path | None = None,
            archive: Path | None = None) -> PipelineResult:
    """`orch promote APP --to TARGET [--from SOURCE | --from-archive FILE]`: see the module docstring.

    today: the project loaded from today's files WITHOUT an environment (its secrets'
    values; None when no Compose file is at hand). archive: an `orch image save` file
    whose release is the source (source is then None; its images must have been loaded
    into the target's registry with `orch image load`).
    """
    progress = progress or Progress()
    seams = seams or Seams()
    flow = _Flow("promote", target, project_name, opts, progress, seams)
    flow.transfer_source = source  # without a registry: images the target lacks come from its nodes
    if archive is None and source.name == target.name:
        raise InputError(Problem(f"cannot promote {target.name} into itself", fix="name another --from environment"))

    # The target's connection opens while the source is read (connecting changes nothing).
    from concurrent.futures import ThreadPoolExecutor

    conn = EnvConnection(target, project_name, progress, seams)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orch-target")
    connecting = pool.submit(conn.connect)
    pool.shutdown(wait=False)
    try:
        # The source: its live release, and whether it is healthy there (read-only, no lock).
        if archive is not None:
            src_history, healthy, problems = _read_archive(project_name, target, archive, progress)
            live = src_history.live()
        else:
            src_history, states = _read_source(project_name, source, progress, seams)
            live = src_history.live()
            if live is None:
                check_promotion(src_history, History(project_name, target.name), target.gates)  # raises: gate 'live'
            healthy, problems = health_from_state(live, states)
        base = (live.extra or {}).get("base")
        if not base:
            raise InputError(Problem(
                f"{live.ref} records no base project (it was deployed by an older orch), so it cannot be promoted",
                fix=f"deploy {live.env} again (`orch up --env {live.env}`), then promote."))
        project, warnings = project_from_manifest(
            base, project_name, working_dir=working_dir, overlay=target.overlay(),
            current=today.to_dict() if today is not None else None, what=str(live.ref))
        for w in warnings:
            flow.warn(w)
        validate(project, target)
    except BaseException:
        try:
            connecting.result()
        except BaseException:
            pass
        conn.close()
        raise
    secrets = secret_values(project, seams.environ) + (secret_values(today, seams.environ) if today else [])
    from orchestrator.app.workspace import Workspace

    ws = Workspace(project=project, environment=target)

    def prepare(history: History) -> _Prepared:
        plan = check_promotion(src_history, history, target.gates, source_healthy=healthy, health_problems=problems,
                               approve=opts.approve, performer=flow.performer, environ=seams.environ,
                               source_env=source, target_env=target)
        if plan.noop:
            current = history.live()
            return _Prepared(ws, dict(live.services), None, message=plan.message, live=current, source=live.ref)
        if not opts.dry_run:
            progress.phase("images", f"checking that {target.name}'s registry has {live.ref}'s images")
            (seams.preflight or registry_preflight)(target, live.services)
        manifest = render_manifest(project, live.services)

        def make(h: History) -> Release:
            rel = new_release(h, services=live.services, manifest=manifest, performer=flow.performer,
                              command="promote", version=live.version, source=live, approval=plan.approval,
                              secret_values=secrets)
            return replace(rel, extra={"base": copy.deepcopy(base)})

        return _Prepared(ws, dict(live.services), make, source=live.ref)

    res = flow.run(prepare, conn=conn, connecting=connecting)
    if res.release is None or not res.new_release:
        res.source = live.ref
    res.image_version = live.version
    res.duration_s = time.monotonic() - flow.t0
    return res


def _read_archive(project: str, target: Any, path: Path, progress: Progress) -> tuple[History, bool | None, list]:
    """The archive's release as the source's history (one live release, healthy when saved)."""
    from orchestrator.app.archive import archived_source

    progress.phase("source", f"reading the release archived in {path}")
    _, live = archived_source(path, target)
    if live.project != project:
        raise InputError(Problem(f"{path} holds a release of {live.project}, not of {project}",
                                 fix=f"promote {live.project}, or name the archive of {project}"))
    return History(project, live.env, [live], max_id=live.id), None, []


def _read_source(project: str, source: Any, progress: Progress, seams: Seams) -> tuple[History, dict]:
    from orchestrator.io.nodes import close_nodes, ssh_connect
    from orchestrator.core.shared_nodes import of_env

    progress.phase("source", f"reading the live release of {project} in {source.name}")
    nodes = (seams.connector or ssh_connect)(source, progress, project)
    try:
        history = ReleaseLedger(nodes, project, source.name, on_warning=progress.warning).history(limit=200)

        def state(node: Any) -> list:
            pre = getattr(node, "prefetched_state", None)
            node.prefetched_state = None
            if pre is None or isinstance(pre, BaseException):
                pre = node.call("state", StateRequest(project).to_dict())
            return of_env(StateResult.from_dict(pre).to_dict(), source.name)["containers"]  # not another environment's on a shared node

        from orchestrator.io import transport as T

        states, errors = T.parallel(list(nodes.values()), state)
        for name, err in sorted(errors.items()):
            progress.warning(f"{name}: cannot read its containers ({getattr(err, 'message', err)})")
        return history, states
    finally:
        close_nodes(nodes)


def registry_preflight(environment: Any, services: Mapping[str, str]) -> None:
    """Before touching a node: the target's registry answers, takes the credentials, and
    holds every digest that lives on it (a promotion moves no bytes between registries)."""
    from orchestrator.io import images as I
    from orchestrator.io.registry_client import ImageNotFound, parse_reference

    address = environment.registry.address
    refs = {}
    for svc, ref in services.items():
        try:
            parsed = parse_reference(ref)
        except ValueError:
            continue
        if address and parsed.registry == address:
            refs[svc] = parsed
    if not refs:
        return
    client = I.registry_client(environment)
    I.check_registry(environment, client=client)
    for svc, parsed in sorted(refs.items()):
        if client.manifest_digest(parsed.repository, parsed.digest) is None:
            raise ImageNotFound(
                f"service {svc}: {parsed.pinned(parsed.digest)} is not in {address} (environment "
                f"{environment.name}). Nothing was changed.",
                fix="promote between environments that share a registry, or push the image there first.",
                details={"service": svc})


# --------------------------------------------------------------------------- rollback


def rollback(project_name: str, environment: Any, opts: PipelineOptions, to: int | None = None,
             progress: Progress | None = None, seams: Seams | None = None, today: Any = None,
             working_dir: Path | None = None) -> PipelineResult:
    """`orch rollback --env ENV [--to ID]`: see the module docstring.

    today: the project loaded from today's files WITH the environment's overlay (its
    secrets' values; None when no Compose file is at hand).
    """
    progress = progress or Progress()
    seams = seams or Seams()
    flow = _Flow("rollback", environment, project_name, opts, progress, seams)
    flow.history_limit = 1000  # --to may name an old release
    from orchestrator.app.workspace import Workspace

    def prepare(history: History) -> _Prepared:
        plan = select_rollback(history, to)
        target = plan.target
        project, warnings = project_from_manifest(
            target.manifest, project_name, working_dir=working_dir,
            current=today.to_dict() if today is not None else None, what=str(target.ref))
        validate(project, environment)
        progress.phase("rollback", f"rolling {plan.current.ref} back to {target.ref}")

        def make(h: History) -> Release:
            rel = rollback_release(h, plan, flow.performer)
            return replace(rel, extra={"base": copy.deepcopy((target.extra or {}).get("base") or {})})

        return _Prepared(Workspace(project=project, environment=environment), dict(target.services), make,
                         source=target.source, warnings=warnings)

    res = flow.run(prepare, noop_if_live=True)
    res.image_version = res.release.version if res.release is not None else ""
    res.duration_s = time.monotonic() - flow.t0
    return res

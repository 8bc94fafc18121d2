"""The release pipeline: `orch up` (orchestrator.app.up), `orch promote` and `orch rollback`
(orchestrator.app.release) and `orch down` (here) as releases, under the environment's
deploy lock. This module holds what they share: options, results, the flow (`_Flow`:
connect, lock, history, deploy, record, verify, prune) and its helpers.

orchestrator.app.deploy stays the one deploy engine; this module composes it with the
images step (orchestrator.io.images), the lock (orchestrator.io.lock), the ledger
(orchestrator.core.releases) and verification (orchestrator.core.verify):

    up        validate (exit 2, nothing touched) -> registry preflight, build, push, pin
              (exit 1, nothing touched) -> connect every node -> take the lock ->
              read the ledger (a release left "deploying" by a killed controller is
              marked failed: nobody else can be deploying while we hold the lock) ->
              observe, plan -> record the release "deploying" -> apply -> "live" (the
              previous live one "superseded") or "failed" with the reason -> verify when
              the environment says `verify: on_deploy` (recorded on the release) ->
              remove the project's images beyond the last N releases -> release the lock.
              A no-op (no container changes, same digests, same rendered project) makes
              no release: "already live as dev #N".
    promote   read the source environment's live release and its health (meanwhile
              connect to the target) -> take the target's lock, read its ledger -> gates
              (live, healthy, verified, approved: GateRefused, exit 3) -> the target's
              registry answers and holds the digests (else exit 1 / 2, nothing changed) ->
              deploy the source's *base* project (after interpolation, before any
              overlay) with the TARGET's overlay and exactly the source's digests;
              nothing is rebuilt. A release already live in the target is a no-op that
              says so.
    rollback  re-apply an earlier release's recorded *rendered* project and digests (not
              today's files) as a new release marked as a rollback of the live one; the
              images are still on the nodes (see prune), so nothing is pulled.
    down      the lock, then orchestrator.app.operate.take_down.

What a release records to be redeployable anywhere: `manifest` (the rendered project,
images pinned, `build:` dropped) and `extra.base` (the same before the environment
overlay), both with secrets masked (releases.redact_manifest; nothing derived from them). To
deploy a recorded project, its secrets are put back from today's Compose files and
environment (releases.restore_secrets): always today's value (the old one is stored
nowhere, and a rotated password must keep working); a value whose non-secret part
changed too is reported as a warning; a secret that is no longer provided at all fails
the command (exit 2) before anything changes.

A verification that fails after a deploy leaves the release live (its containers run)
but recorded as not verified, so a gate that requires verification refuses to promote
it; the command exits 1.

The lock is taken on each node's first agent session (app/connection.py), with the
ledger and state reads that follow pipelined behind it: a controller killed with SIGKILL
frees it at once. `--dry-run` takes no lock and writes nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, OrchError, Problem
from orchestrator.limits import SECRET_MAX_BYTES, read_bounded
from orchestrator.core.progress import JSON_VERSION, Progress
from orchestrator.core.releases import (
    DEFAULT_KEEP_IMAGES,
    DEPLOYING,
    History,
    Performer,
    Release,
    ReleaseRef,
    images_to_keep,
    mark_failed,
    mark_live,
    restore_secrets,
    with_verification,
)
from orchestrator.app.connection import EnvConnection, lock_nodes  # noqa: F401 - used by release, prune, certs
from orchestrator.io.ledger import ReleaseLedger, detect_performer

INTERRUPTED = ("interrupted: the controller deploying it stopped before it finished (killed, or its connection "
               "broke); the next deploy found it under the lock and took over")
KEEP_IMAGES_VARIABLE = "ORCH_KEEP_IMAGES"


class VerificationFailed(OrchError):
    """The release deployed and is live, but a verify check failed (exit 1)."""


# --------------------------------------------------------------------------- options, seams


@dataclass
class PipelineOptions:
    services: list[str] = field(default_factory=list)
    dry_run: bool = False
    remove_orphans: bool = False
    lock_wait: float = 0.0  # seconds to wait for another deployer's lock (0: fail at once, exit 4)
    version: str | None = None  # image tag override (up)
    build: bool = True  # up: build and push (False: look the version's tags up in the registry)
    approve: bool = False  # promote
    keep_images: int = DEFAULT_KEEP_IMAGES
    command_line: str = ""  # shown to a second deployer as the lock holder's command


@dataclass
class Seams:
    """What talks to the world, replaceable in tests."""

    connector: Callable[..., dict] | None = None  # nodes.ssh_connect(environment, progress, project)
    locker: Callable[..., Any] | None = None  # (nodes, env, holder, wait, on_wait) -> handle with .release()
    images: Callable[..., Any] | None = None  # images.prepare_images
    preflight: Callable[[Any, Mapping[str, str]], None] | None = None  # promote: registry + digests there
    check_runners: Mapping[str, Callable[..., Any]] | None = None  # verify.run_checks runners
    performer: Performer | None = None
    environ: Mapping[str, str] | None = None


def keep_images_default(environ: Mapping[str, str] | None = None) -> int:
    """How many releases' images the nodes keep: $ORCH_KEEP_IMAGES, else 5."""
    text = (os.environ if environ is None else environ).get(KEEP_IMAGES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_KEEP_IMAGES
    if not text.isdigit() or int(text) < 1:
        raise InputError(Problem(f"{KEEP_IMAGES_VARIABLE}={text!r} must be a whole number of releases, 1 or more",
                                 fix=f"unset it (default {DEFAULT_KEEP_IMAGES}) or set e.g. {KEEP_IMAGES_VARIABLE}=5"))
    return int(text)


# --------------------------------------------------------------------------- result


@dataclass
class PipelineResult:
    command: str  # up | promote | rollback
    project: str
    environment: str
    status: str  # ok | planned | failed (deployed, but verification failed)
    deploy: Any = None  # results.DeployResult (None for a no-op promotion)
    release: Release | None = None  # the new release, or the live one on a no-op
    new_release: bool = False
    message: str = ""
    images: dict[str, str] = field(default_factory=dict)
    image_version: str = ""
    pushed: list[dict] = field(default_factory=list)
    transferred: dict | None = None  # without a registry: app.transfer.TransferReport.to_json()
    source: ReleaseRef | None = None
    verification: dict | None = None
    pruned: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    round_trips: dict[str, dict] = field(default_factory=dict)  # per node: nodes.RoundTrips.to_json()
    error: OrchError | None = None

    @property
    def exit_code(self) -> int:
        return self.error.exit_code if self.error is not None else 0

    def to_json(self) -> dict:
        if self.deploy is not None:
            out = self.deploy.to_json()
        else:
            out = {"version": JSON_VERSION, "environment": self.environment, "project": self.project, "noop": True,
                   "dry_run": False, "changed": [], "containers": [], "addresses": {}}
        out.update({
            "version": JSON_VERSION,
            "status": self.status,
            "command": self.command,
            "environment": self.environment,
            "project": self.project,
            "message": self.message,
            "release_id": self.release.id if self.release else None,
            "new_release": self.new_release,
            "release": self.release.to_json() if self.release else None,
            "images": dict(sorted(self.images.items())),
            "image_version": self.image_version,
            "pushed": list(self.pushed),
            "transferred": self.transferred,
            "source": self.source.to_dict() if self.source else None,
            "lineage": self.release.lineage_text() if self.release else "",
            "verification": self.verification,
            "pruned": self.pruned,
            "warnings": sorted(set(out.get("warnings", [])) | set(self.warnings)),
            "duration_s": round(self.duration_s, 3),
            "timings": {k: round(v, 3) for k, v in sorted(self.timings.items())},
            "round_trips": dict(sorted(self.round_trips.items())),
        })
        if self.error is not None:
            out["error"] = self.error.to_json()
        return out


# --------------------------------------------------------------------------- pure helpers


def validate(project: Any, environment: Any, services: Iterable[str] = ()) -> None:
    """Everything checkable before the registry or a node is touched (InputError, exit 2):
    the specs (with placeholder images for services still to build) and the verify
    templates."""
    from orchestrator.core.specs import compile_blueprint
    from orchestrator.core.verify import plan_checks
    from orchestrator.io.files import local_sources

    placeholder = {name: f"orch.invalid/{project.name}/{name}:validate" for name, svc in project.services.items()
                   if svc.build is not None and not svc.image}
    compile_blueprint(project, environment, list(services), placeholder, sources=local_sources())
    plan_checks(environment, project, None)


def secret_values(project: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """The known secret values of a project (agent.wire.redact rule (a): masked wherever they
    appear in a manifest and in output): its secrets' contents, and the values of its
    variables (.env, the environment) whose names are secret names."""
    from agent.wire.redact import secret_name

    environ = os.environ if environ is None else environ
    out: list[str] = [v for k, v in sorted((getattr(project, "variables", None) or {}).items())
                      if secret_name(k) and isinstance(v, str) and v]
    for secret in list((getattr(project, "secrets", None) or {}).values()):
        value = None
        if secret.environment:
            value = (getattr(project, "variables", None) or {}).get(secret.environment) or environ.get(secret.environment)
        elif secret.file:
            try:  # bounded: the loader refused devices and large files, but the file may have changed since
                value = read_bounded(secret.file, SECRET_MAX_BYTES, "a secret file").decode("utf-8", "replace").strip()
            except OSError:
                value = None
        elif getattr(secret, "content", None):
            value = secret.content
        if value:
            out.append(value)
    return out


def find_redacted(value: Any, path: str = "") -> list[str]:
    """Key paths of values still carrying a redaction marker."""
    from agent.wire.redact import REDACTED_PREFIX

    if isinstance(value, str):
        return [path] if REDACTED_PREFIX in value else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in find_redacted(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in find_redacted(v, f"{path}[{i}]")]
    return []


def project_from_manifest(manifest: Mapping[str, Any], name: str, *, working_dir: Path | None = None,
                          overlay: Any = None, current: Mapping[str, Any] | None = None, strict: bool = True,
                          what: str = "the recorded project") -> tuple[Any, list[str]]:
    """A Project from a recorded manifest (orchestrator.core.compose.render form), with today's
    secrets put back from `current` (today's project as to_dict(), same stage: base or
    rendered) and `overlay` (an environment's) merged over it. Returns (project, warnings).

    strict: a secret with no value today is bad input (exit 2); else it is left redacted
    (good enough for reading ports, e.g. to verify).
    """
    import yaml

    from orchestrator.core.compose import LoadOptions, load_project
    from orchestrator.core.compose.render import escape_dollars

    data, changed = restore_secrets(manifest, current or {}, name, prefer_current=True)
    warnings = [f"the value at {path} (it holds a secret) changed since {what} was recorded; deploying today's value"
                for path in changed if path not in set(find_redacted(data))]
    data = dict(data, name=name)
    with tempfile.TemporaryDirectory(prefix="orch-release-") as tmp:
        compose = Path(tmp) / "compose.yaml"
        compose.write_text(yaml.safe_dump(escape_dollars(data), sort_keys=False))
        project = load_project(LoadOptions(files=[compose], working_dir=Path(tmp), project_name=name,
                                           environ={"HOME": os.environ.get("HOME", "/root")},
                                           overlays=[overlay] if overlay is not None else []))
    missing = find_redacted(project.to_dict())
    if missing and strict:
        raise InputError([Problem(
            f"{what} needs the secret at {path}, which today's files and environment do not provide (the ledger "
            "keeps no trace of it)",
            fix="run the command from the project's folder (or pass -f) with the secret's variable or file in "
            "place, then run it again") for path in missing])
    project.working_dir = Path(working_dir) if working_dir is not None else Path.cwd()
    project.warnings = []
    return project, warnings


def placement_from_observed(observed: Mapping[str, Iterable[Any]]) -> dict[str, list[str]]:
    """{service: [nodes with a running container]} from nodes.observe_nodes."""
    out: dict[str, list[str]] = {}
    for node in sorted(observed):
        for c in observed[node]:
            if c.state == "running" and node not in out.setdefault(c.service, []):
                out[c.service].append(node)
    return out


def release_services(history: History, project: Any, pins: Mapping[str, str], selected: Iterable[str]) -> dict:
    """The digests a release records: every pinned service; for a partial `up SERVICE`,
    the other services keep what the live release recorded for them."""
    services = dict(pins)
    if list(selected):
        live = history.live()
        for name, ref in (live.services if live else {}).items():
            if name in project.services and name not in services:
                services[name] = ref
    return {k: v for k, v in sorted(services.items()) if "@sha256:" in v}


def parse_release_id(text: str | int | None) -> int | None:
    """--to 7, '#7' or 'prod#7' -> 7."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    t = str(text).strip().split("#")[-1].strip()
    if not t.isdigit() or int(t) < 1:
        raise InputError(Problem(f"--to {text!r} is not a release id", fix="write the number, e.g. --to 7 "
                                 "(see `orch history --env ENV`)"))
    return int(t)


def _history_with(history: History, *releases: Release) -> History:
    by_id = {r.id: r for r in history.releases}
    for r in releases:
        by_id[r.id] = r
    ordered = sorted(by_id.values(), key=lambda r: r.id, reverse=True)
    return replace(history, releases=ordered, max_id=max([history.max_id] + [r.id for r in ordered]))


def settle_interrupted(ledger: ReleaseLedger, history: History) -> History:
    """Under the lock nobody else is deploying: a release still "deploying" was left by a
    controller that died. Mark it failed (its containers are whatever it got to; this
    deploy converges them)."""
    stale = [r for r in history.releases if r.status == DEPLOYING]
    if not stale:
        return history
    written = ledger.write(*(mark_failed(r, INTERRUPTED) for r in stale))
    return _history_with(history, *written.releases)


# --------------------------------------------------------------------------- the deploy of a release


@dataclass
class _Prepared:
    """What to deploy once the history is known (under the lock)."""

    workspace: Any  # .project, .environment
    images: dict[str, str]
    make_release: Callable[[History], Release] | None  # None: nothing to do
    message: str = ""  # for a no-op decided before deploying
    live: Release | None = None  # for a no-op: the release that is live already
    source: ReleaseRef | None = None
    warnings: list[str] = field(default_factory=list)


class _Flow:
    """One release through connect, lock, history, deploy, record, verify, prune."""

    def __init__(self, command: str, environment: Any, project_name: str, opts: PipelineOptions,
                 progress: Progress, seams: Seams):
        self.command = command
        self.environment = environment
        self.project_name = project_name
        self.opts = opts
        self.progress = progress
        self.seams = seams
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []
        self.performer = seams.performer or detect_performer(environ=seams.environ)
        self.history_limit = 50  # the live release, the next id (max_id) and the last few releases
        # Without a registry (app.transfer): images built here still to move (service -> local
        # tag), the promotion's source environment, and what the move did.
        self.local_images: dict[str, str] = {}
        self.transfer_source: Any = None
        self.transferred: Any = None

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            self.progress.warning(text)

    def run(self, prepare: Callable[[History], _Prepared], noop_if_live: bool = False,
            conn: EnvConnection | None = None, connecting: Any = None) -> PipelineResult:
        """connecting: a Future of conn.connect() started earlier (promote connects to the
        target while it reads the source)."""
        conn = conn or EnvConnection(self.environment, self.project_name, self.progress, self.seams)
        result: PipelineResult | None = None
        try:
            result = self._run(prepare, noop_if_live, conn, connecting)
            return result
        finally:
            conn.close()
            self.timings.update({k: v for k, v in conn.timings.items()})
            if result is not None:
                result.round_trips = conn.round_trips

    def _run(self, prepare: Callable[[History], _Prepared], noop_if_live: bool, conn: EnvConnection,
             connecting: Any) -> PipelineResult:
        from orchestrator.app.deploy import DeployOptions, Deployment

        env = self.environment
        if connecting is not None:
            connecting.result()
        else:
            conn.connect(read_state=self.opts.dry_run)  # else read under the lock
        ledger = conn.ledger()
        if not self.opts.dry_run:
            # The ledger and the state, read next, go along with each node's lock_acquire.
            conn.lock(self.opts.command_line or f"orch {self.command} --env {env.name}", self.opts.lock_wait,
                      self.performer, reads=[ledger.list_request(self.history_limit), conn.state_read()])
        t0 = time.monotonic()
        history = ledger.history(limit=self.history_limit)
        if not self.opts.dry_run:
            history = settle_interrupted(ledger, history)
        self.timings["ledger"] = time.monotonic() - t0
        prep = prepare(history)
        for w in prep.warnings:
            self.warn(w)
        if prep.make_release is None:
            return self._result("ok", None, prep.live, False, prep.message, prep, conn)
        if not self.opts.dry_run:
            self._transfer(conn, prep)
        # The new release's id goes into every spec as it is built; the release itself is
        # recorded (make_release, numbered from the same history) just before anything is
        # applied. A ledger that could not be read leaves it unnumbered: make_release refuses.
        release_id = "" if self.opts.dry_run or history.errors else str(history.next_id())
        dep = Deployment(prep.workspace, DeployOptions(services=list(self.opts.services), dry_run=self.opts.dry_run,
                                                       remove_orphans=self.opts.remove_orphans,
                                                       images=dict(prep.images), commit=False,
                                                       release=release_id),
                         self.progress, connector=conn.preconnected)
        recorded: dict[str, Release] = {}

        def start(d: Any) -> None:
            rel = prep.make_release(history)
            self.progress.phase("release", f"recording {rel.ref} ({rel.command}) as deploying")
            recorded["release"] = ledger.write(rel).releases[0]

        if not self.opts.dry_run:
            dep.hooks["before_apply"].append(lambda d: self._transfer_placed(conn, prep, d))
        dep.hooks["before_apply"].append(start)
        try:
            result = dep.run(close=False)
        except OrchError as err:
            rel = recorded.get("release")
            if rel is not None:
                try:
                    ledger.write(mark_failed(rel, err.message, secret_values=secret_values(
                        prep.workspace.project, self.seams.environ)))
                except OrchError as err2:
                    self.warn(f"could not record {rel.ref} as failed: {err2.message}")
            raise
        if self.opts.dry_run:
            return self._result("planned", result, None, False, "", prep, conn)  # up_summary says it
        rel = recorded.get("release")
        if rel is None:  # nothing was applied
            candidate = prep.make_release(history)
            live = history.live()
            if (noop_if_live and live is not None and live.services == candidate.services
                    and live.project_hash == candidate.project_hash):
                if dep.has_kept():
                    dep.commit()  # kept by an update that stopped before it was live: not needed
                return self._result("ok", result, live, False,
                                    f"{self.project_name} is already live in {env.name} as {live.ref}; "
                                    "nothing changed.", prep, conn)
            rel = candidate
        t0 = time.monotonic()
        written = ledger.write(*mark_live(history, rel))
        rel = written.releases[0]
        history = _history_with(history, *written.releases)
        self.timings["record"] = time.monotonic() - t0
        # Live: the previous release's containers, kept for a rollback, can go, and the
        # project's images no container uses with them (one write to each node).
        pruned = self._prune(conn.nodes, history, prep.workspace.project.name,
                             discard=bool(dep.journal or dep.has_kept()))
        verification = None
        error: OrchError | None = None
        if env.verify.on_deploy and env.verify.checks:
            report = self._verify(prep.workspace.project, dep.observed, rel.id)
            verification = report.to_json()
            rel = ledger.write(with_verification(rel, verification)).releases[0]
            history = _history_with(history, rel)
            if not report.ok:
                error = VerificationFailed(
                    f"{rel.ref} is live, but its verification failed: {report.summary()}",
                    fix=f"fix what fails, then `orch verify --env {env.name}` (or deploy a fix); until it "
                    "passes, an environment that requires verification refuses to promote it.",
                    details={"release": rel.ref.to_dict(), "verification": verification})
        what = {"up": "deployed", "promote": "promoted", "rollback": "rolled back"}[self.command]
        message = f"{self.project_name} {what}: {rel.lineage_text()} is live in {env.name}."
        res = self._result("failed" if error else "ok", result, rel, True, message, prep, conn,
                           verification=verification, pruned=pruned)
        res.error = error
        return res

    def _transfer(self, conn: EnvConnection, prep: _Prepared) -> None:
        """Without a registry, before the plan: the built images pushed to a node and pinned
        (in place: prep.images is what the release records); the copies to the nodes that
        run them wait for the plan's placement (_transfer_placed)."""
        from orchestrator.app.transfer import TransferReport, deliver, needs_transfer, seed_nodes

        if not needs_transfer(self.environment, prep.images, self.local_images):
            return
        self.transferred = TransferReport()
        if not self.local_images:
            return
        t0 = time.monotonic()
        seeds = seed_nodes(prep.workspace.project, self.environment, self.local_images)
        self.transferred = deliver(self.environment, conn.nodes, {}, self.progress, local=self.local_images,
                                   connector=self.seams.connector, placement={}, seeds=seeds)
        prep.images.update(self.transferred.pins)
        self.timings["transfer"] = time.monotonic() - t0

    def _transfer_placed(self, conn: EnvConnection, prep: _Prepared, dep: Any) -> None:
        """Without a registry, once the plan placed the replicas (before_apply): each image
        onto the nodes that run its service, and only those."""
        from orchestrator.app.transfer import deliver

        if self.transferred is None:
            return
        t0 = time.monotonic()
        placement: dict[str, list[str]] = {}
        for service, node in sorted(dep.units):
            placement.setdefault(service, []).append(node)
        report = deliver(self.environment, conn.nodes, prep.images, self.progress, source_env=self.transfer_source,
                         connector=self.seams.connector, placement=placement)
        self.transferred.moved += report.moved
        self.transferred.seconds += report.seconds
        self.timings["transfer"] = self.timings.get("transfer", 0.0) + time.monotonic() - t0

    def _verify(self, project: Any, observed: Mapping[str, Any], release_id: int) -> Any:
        from orchestrator.core import verify as V
        from orchestrator.io import checks as C

        t0 = time.monotonic()
        env = self.environment
        placement = placement_from_observed(observed)
        targets = V.plan_checks(env, project, placement, release_id)
        self.progress.phase("verify", f"verifying {env.name} #{release_id}: {len(targets)} check(s)")

        def note(r: Any) -> None:
            data = r.to_json()
            data["check"] = data.pop("name")
            self.progress.event("check", **data)

        report = C.run_checks(targets, env=env.name, project=project.name, release=release_id,
                              environ=self.seams.environ, cwd=str(project.working_dir), on_result=note,
                              runners=self.seams.check_runners)
        self.timings["verify"] = time.monotonic() - t0
        return report

    def _prune(self, nodes: Mapping[str, Any], history: History, project: str,
               discard: bool = False) -> dict[str, list[str]]:
        """Best effort: the project's images no container uses, beyond the last N releases;
        with `discard`, first (in the same write: the agent serves them in order) the
        containers kept for the previous release's rollback (Deployment.commit)."""
        from agent.wire.messages import DiscardRequest, DiscardResult
        from agent.wire.protocol import BadRequest
        from orchestrator.app.results import discard_warning
        from orchestrator.io import transport as T
        from orchestrator.io.nodes import call_in_order

        t0 = time.monotonic()
        keep = sorted(images_to_keep(history, self.opts.keep_images))
        requests = [("discard", DiscardRequest(project, env=history.env).to_dict())] if discard else []
        requests.append(("prune_images", {"project": project, "keep": keep, "env": history.env}))
        answers, errors = T.parallel(list(nodes.items()), lambda item: call_in_order(item[1], requests),
                                     key=lambda item: item[0])
        for node, err in sorted(errors.items()):  # the node could not be asked at all
            answers[node] = [("error", err)] * len(requests)
        removed: dict[str, list[str]] = {}
        for node, outcomes in sorted(answers.items()):
            if discard:
                kind, value = outcomes.pop(0)
                try:
                    if kind == "error":
                        raise value
                    DiscardResult.from_dict(value)  # an answer that is not one is a warning too
                except (OrchError, BadRequest) as err:
                    self.warn(discard_warning(node, err))
            kind, value = outcomes[0]
            if kind == "error":
                self.warn(f"{node}: could not remove old images ({getattr(value, 'message', value)}); they stay")
            elif value.get("removed"):
                removed[node] = list(value["removed"])
        self.timings["prune"] = time.monotonic() - t0
        return removed

    def _result(self, status: str, deploy: Any, release: Release | None, new: bool, message: str, prep: _Prepared,
                conn: EnvConnection, verification: dict | None = None,
                pruned: dict[str, list[str]] | None = None) -> PipelineResult:
        timings = dict(getattr(deploy, "timings", {}) or {})
        timings.update(self.timings)
        timings.update(conn.timings)
        return PipelineResult(
            command=self.command, project=self.project_name, environment=self.environment.name, status=status,
            deploy=deploy, release=release, new_release=new, message=message,
            images=dict(release.services) if release is not None and status != "planned" else dict(prep.images),
            source=release.source if release is not None else prep.source, verification=verification,
            pruned=pruned or {}, warnings=list(self.warnings), duration_s=time.monotonic() - self.t0,
            timings=timings, transferred=self.transferred.to_json() if self.transferred is not None else None,
        )


# --------------------------------------------------------------------------- down


def down(workspace: Any, opts: PipelineOptions, remove_volumes: bool = False, progress: Progress | None = None,
         seams: Seams | None = None) -> Any:
    """`orch down` under the environment's lock (operate.take_down). The ledger is kept."""
    from orchestrator.app.operate import take_down

    t0 = time.monotonic()  # duration_s: the whole command, connect and lock included
    progress = progress or Progress()
    seams = seams or Seams()
    env = workspace.environment
    if env is None:
        raise InputError(Problem("no environment given", fix="pass --env ENV"))
    performer = seams.performer or detect_performer(environ=seams.environ)
    from orchestrator.io.nodes import state_args

    conn = EnvConnection(env, workspace.project.name, progress, seams)
    result = None
    try:
        conn.connect(read_state=False)  # read under the lock, along with it
        conn.lock(opts.command_line or f"orch down --env {env.name}", opts.lock_wait, performer,
                  reads=[("state", state_args(workspace.project.name))])
        result = take_down(workspace, remove_volumes, progress, connector=conn.preconnected, started=t0)
        return result
    finally:
        conn.close()
        if result is not None:
            result.round_trips = conn.round_trips


# --------------------------------------------------------------------------- verify


def verification_project(live: Release | None, today: Any) -> Any:
    """The project to verify against: the live release's recorded one (its ports are
    what runs), else today's."""
    if live is None or not live.manifest:
        return today
    try:
        project, _ = project_from_manifest(live.manifest, today.name if today is not None else live.project,
                                           working_dir=getattr(today, "working_dir", None), strict=False)
        return project
    except OrchError:
        return today


__all__ = [
    "PipelineOptions", "PipelineResult", "Seams", "VerificationFailed", "down",
    "validate", "project_from_manifest", "keep_images_default",
]

"""Releases: typed records of the nodes' ledgers, and the rules around them.

Every successful `orch up`, promotion and rollback is a release, recorded by the agent
of every node of the environment (agent.ledger). This module is the controller's view:

- `Release`: one record (digests, redacted rendered project and its hash, performer,
  source and lineage, status, verification, approval).
- Pure rules: `render_manifest` + `redact_manifest` (secrets -> hashes), `new_release`,
  `mark_live` (the previous live release becomes superseded, or rolled back),
  `mark_failed`, `with_verification`, `diff_releases`, `lineage_text`,
  `check_promotion` (the gates: live, healthy, verified, approved; GateRefused, exit 3),
  `health_from_state`, `select_rollback` / `rollback_release`, `images_to_keep`.
- `merge_histories`: the nodes' copies merged (highest revision wins), with which node
  lacks what, so `ReleaseLedger.write` repairs a node that missed a write.
- `ci_info`: the CI job from the CI variables (GitHub Actions, GitLab CI, Jenkins,
  Buildkite, CircleCI, generic CI=true).
- orchestrator.io.ledger: `ReleaseLedger` (reads and writes through AgentSessions) and
  `detect_performer` (git user or $USER, plus ci_info).

Release ids count per project and environment (prod #7 is the 7th release of this
project in prod), so two projects sharing nodes keep separate histories.

Redaction: the manifests a release records go through agent.wire.redact's one rule (the
same the output filter uses, applied again by the agent): values under secret names,
passwords in URLs and in NAME=VALUE pairs, in every field (environment, command,
entrypoint, labels, healthcheck, build args, extensions), inline secret contents, and
every known secret value the caller passes (`secret_values`: the contents of the
project's secrets, .env values under secret names) become "<redacted>". Nothing derived
from a secret is kept (no hash): `restore_secrets` puts today's values back into a
recorded manifest for a rollback or a promotion, and cannot tell whether a secret
changed since (the containers' config hash, computed from today's values, still
recreates what a changed secret affects).

Release ids: `History.next_id` refuses to number a new release when a node's ledger
could not be read (its copy may hold higher ids), and the agent never lets a write
for an id replace another release (compare-and-set): `ReleaseLedger.write` turns
such a conflict into a LedgerError, before the release's deploy starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent.wire.ledger import STATUSES
from agent.wire.redact import REDACTED, REDACTED_PREFIX, mask_text, mask_tree
from orchestrator.errors import GateRefused, InputError, OrchError, Problem

DEPLOYING, LIVE, FAILED, ROLLED_BACK, SUPERSEDED = STATUSES
STATUS_TEXT = {ROLLED_BACK: "rolled back"}
WAS_LIVE = (LIVE, SUPERSEDED, ROLLED_BACK)
DEFAULT_KEEP_IMAGES = 5
APPROVE_VARIABLE = "ORCH_APPROVE"


def now_iso(clock: Callable[[], float] = time.time) -> str:
    t = clock()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, order=True)
class ReleaseRef:
    env: str
    id: int

    def __str__(self) -> str:
        return f"{self.env} #{self.id}"

    def to_dict(self) -> dict:
        return {"env": self.env, "id": self.id}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ReleaseRef | None:
        return cls(str(d["env"]), int(d["id"])) if d else None


@dataclass(frozen=True)
class Release:
    project: str
    env: str
    id: int
    status: str
    services: dict[str, str]  # service -> repo@sha256:...
    manifest: dict  # the rendered project (image: pinned, build: dropped), secrets hashed
    project_hash: str
    performer: dict
    created: str
    updated: str
    rev: int = 0  # 0: never written; the ledger bumps it on every write
    version: str = ""
    command: str = "up"  # up | promote | rollback
    source: ReleaseRef | None = None  # promotion: the release it was promoted from
    lineage: tuple[ReleaseRef, ...] = ()  # source, its source, ... (nearest first)
    rollback_of: int | None = None  # rollback: the live release it replaced
    restores: int | None = None  # rollback: the release whose manifest it re-applied
    approval: dict | None = None  # {"by", "at", "via"}
    verification: dict | None = None  # VerifyReport.to_json()
    reason: str | None = None  # why it failed
    extra: dict = field(default_factory=dict)

    @property
    def ref(self) -> ReleaseRef:
        return ReleaseRef(self.env, self.id)

    @property
    def verified(self) -> bool | None:
        """True/False once verification ran on this release, None before."""
        if not self.verification:
            return None
        return bool(self.verification.get("ok"))

    @property
    def status_text(self) -> str:
        return STATUS_TEXT.get(self.status, self.status)

    def lineage_text(self) -> str:
        return lineage_text(self)

    def to_record(self) -> dict:
        """What agent.ledger stores (release_put's record)."""
        return {
            "project": self.project, "env": self.env, "id": self.id, "rev": self.rev, "status": self.status,
            "services": dict(self.services), "manifest": self.manifest, "project_hash": self.project_hash,
            "version": self.version, "command": self.command, "performer": self.performer,
            "source": self.source.to_dict() if self.source else None,
            "lineage": [r.to_dict() for r in self.lineage], "rollback_of": self.rollback_of,
            "restores": self.restores, "approval": self.approval, "verification": self.verification,
            "reason": self.reason, "extra": dict(self.extra), "created": self.created, "updated": self.updated,
        }

    def to_json(self) -> dict:
        """The record without the recorded projects (manifest, extra.base): they are long."""
        out = self.to_record()
        out.pop("manifest")
        out["extra"] = {k: v for k, v in out["extra"].items() if k != "base"}
        out["lineage_text"] = self.lineage_text()
        out["verified"] = self.verified
        return out

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Release:
        return cls(
            project=rec["project"], env=rec["env"], id=int(rec["id"]), status=rec["status"],
            services=dict(rec.get("services") or {}), manifest=rec.get("manifest") or {},
            project_hash=rec.get("project_hash", ""), performer=rec.get("performer") or {},
            created=rec.get("created", ""), updated=rec.get("updated", ""), rev=int(rec.get("rev") or 0),
            version=rec.get("version") or "", command=rec.get("command") or "",
            source=ReleaseRef.from_dict(rec.get("source")),
            lineage=tuple(ReleaseRef.from_dict(x) for x in rec.get("lineage") or []),
            rollback_of=rec.get("rollback_of"), restores=rec.get("restores"), approval=rec.get("approval"),
            verification=rec.get("verification"), reason=rec.get("reason"), extra=dict(rec.get("extra") or {}),
        )


def lineage_text(release: Release) -> str:
    """"prod #7 <- test #12 <- dev #31" (a rollback: "prod #9 (rollback to #7) <- test #12")."""
    head = str(release.ref)
    if release.restores is not None:
        head += f" (rollback to #{release.restores})"
    return " <- ".join([head] + [str(r) for r in release.lineage])


# --------------------------------------------------------------------------- performer


@dataclass(frozen=True)
class Performer:
    user: str  # "Ada Lovelace <ada@example.com>", or the login name
    host: str
    login: str = ""
    ci: dict[str, str] = field(default_factory=dict)  # system, url, run_id, job_id, pipeline_id, actor, ...

    @property
    def ci_job(self) -> str:
        """The CI job's URL (or id) when running in CI, else ""."""
        return self.ci.get("url") or self.ci.get("job_id") or self.ci.get("run_id") or ""

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"user": self.user, "host": self.host}
        if self.login:
            out["login"] = self.login
        if self.ci:
            out["ci"] = dict(self.ci)
        return out

    def __str__(self) -> str:
        return performer_text(self.to_dict())


def performer_text(p: Mapping[str, Any]) -> str:
    text = p.get("user") or p.get("login") or "unknown"
    ci = p.get("ci") or {}
    if ci:
        who = ci.get("actor")
        where = ci.get("url") or ci.get("job_id") or ci.get("run_id") or ""
        text += f" via {ci.get('system', 'ci')}" + (f" ({who})" if who else "") + (f" {where}" if where else "")
    return text


def ci_info(environ: Mapping[str, str]) -> dict[str, str]:
    """What identifies the CI job this runs in (empty outside CI), from the variables each
    CI system sets. Keys (those with a value): system, actor (who started it; GitLab also
    actor_name), job (the job's name), run_id / job_id / pipeline_id, url (the run's or
    the job's page), pipeline_url, workflow, repository, ref, sha."""
    e = environ
    info: dict[str, str] = {}
    if e.get("GITHUB_ACTIONS") == "true":
        info = {"system": "github-actions", "run_id": e.get("GITHUB_RUN_ID", ""),
                "run_attempt": e.get("GITHUB_RUN_ATTEMPT", ""), "job": e.get("GITHUB_JOB", ""),
                "workflow": e.get("GITHUB_WORKFLOW", ""), "actor": e.get("GITHUB_ACTOR", ""),
                "repository": e.get("GITHUB_REPOSITORY", ""), "ref": e.get("GITHUB_REF_NAME", ""),
                "sha": e.get("GITHUB_SHA", "")}
        if e.get("GITHUB_RUN_ID") and e.get("GITHUB_REPOSITORY"):
            server = (e.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/")
            info["url"] = f"{server}/{e['GITHUB_REPOSITORY']}/actions/runs/{e['GITHUB_RUN_ID']}"
            if e.get("GITHUB_RUN_ATTEMPT") and e["GITHUB_RUN_ATTEMPT"] != "1":
                info["url"] += f"/attempts/{e['GITHUB_RUN_ATTEMPT']}"
    elif e.get("GITLAB_CI") == "true":
        info = {"system": "gitlab-ci", "url": e.get("CI_JOB_URL", ""), "job": e.get("CI_JOB_NAME", ""),
                "job_id": e.get("CI_JOB_ID", ""), "pipeline_id": e.get("CI_PIPELINE_ID", ""),
                "pipeline_url": e.get("CI_PIPELINE_URL", ""),
                "actor": e.get("GITLAB_USER_LOGIN", "") or e.get("GITLAB_USER_NAME", ""),
                "actor_name": e.get("GITLAB_USER_NAME", ""), "repository": e.get("CI_PROJECT_PATH", ""),
                "ref": e.get("CI_COMMIT_REF_NAME", ""), "sha": e.get("CI_COMMIT_SHA", "")}
    elif e.get("JENKINS_URL"):
        info = {"system": "jenkins", "url": e.get("BUILD_URL", ""), "job": e.get("JOB_NAME", ""),
                "job_id": e.get("BUILD_NUMBER", ""), "sha": e.get("GIT_COMMIT", "")}
    elif e.get("BUILDKITE") == "true":
        info = {"system": "buildkite", "url": e.get("BUILDKITE_BUILD_URL", ""),
                "job_id": e.get("BUILDKITE_JOB_ID", ""), "actor": e.get("BUILDKITE_BUILD_CREATOR", ""),
                "sha": e.get("BUILDKITE_COMMIT", "")}
    elif e.get("CIRCLECI") == "true":
        info = {"system": "circleci", "url": e.get("CIRCLE_BUILD_URL", ""), "job_id": e.get("CIRCLE_BUILD_NUM", ""),
                "job": e.get("CIRCLE_JOB", ""), "actor": e.get("CIRCLE_USERNAME", ""), "sha": e.get("CIRCLE_SHA1", "")}
    elif e.get("CI", "").lower() in ("true", "1", "yes"):
        # Any other CI (CI=true is the common convention): whatever of the usual names it sets.
        info = {"system": "ci", "url": e.get("CI_JOB_URL", "") or e.get("BUILD_URL", ""),
                "job": e.get("CI_JOB_NAME", "") or e.get("JOB_NAME", ""),
                "job_id": e.get("CI_JOB_ID", "") or e.get("BUILD_NUMBER", "") or e.get("BUILD_ID", ""),
                "pipeline_id": e.get("CI_PIPELINE_ID", ""), "sha": e.get("CI_COMMIT_SHA", "")}
    return {k: v for k, v in info.items() if v}


# --------------------------------------------------------------------------- manifests


def render_manifest(project: Any, pins: Mapping[str, str]) -> dict:
    """The rendered project as recorded: every service's `image:` is its pinned digest and
    `build:` is dropped (it describes the controller's files, not what runs)."""
    manifest = project.to_dict() if hasattr(project, "to_dict") else copy.deepcopy(dict(project))
    for name, svc in (manifest.get("services") or {}).items():
        if name in pins:
            svc["image"] = pins[name]
        svc.pop("build", None)
    return manifest


MIN_KNOWN_SECRET = 4  # shorter known values would mask ordinary words of the manifest


def redact_manifest(manifest: Mapping[str, Any], project: str, secret_values: Iterable[str] = ()) -> dict:
    """A copy of manifest with its secrets replaced by "<redacted>" (see the module
    docstring; `project` is kept for the callers, the mark does not depend on it)."""
    known = [v for v in secret_values if isinstance(v, str) and len(v) >= MIN_KNOWN_SECRET]
    return mask_tree(copy.deepcopy(dict(manifest)), REDACTED, known)


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a (redacted) manifest: the release's project hash."""
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()


_MARK_RE = re.compile(re.escape(REDACTED_PREFIX) + r"[^>]*>")


def _same_outside_secrets(recorded: str, current: str) -> bool:
    """Does current read like recorded with something in place of each redaction mark?"""
    pattern = "(.+?)".join(re.escape(part) for part in _MARK_RE.split(recorded))
    return re.fullmatch(pattern, current, re.DOTALL) is not None


def restore_secrets(recorded: Mapping[str, Any], current: Mapping[str, Any], project: str, *,
                    prefer_current: bool = False) -> tuple[dict, list[str]]:
    """For a rollback or a promotion: the recorded manifest with each redacted value
    replaced by today's value at the same key path. A value that was wholly a secret
    takes today's value (the ledger keeps nothing to compare it with). A value with a
    secret part (a URL with a password) takes today's value when it equals the recorded
    one outside the redacted parts; else its path is reported as changed and today's value is
    used only with prefer_current. A value with nothing today stays redacted."""
    changed: list[str] = []

    def walk(path: str, rec: Any, cur: Any) -> Any:
        if isinstance(rec, str) and REDACTED_PREFIX in rec:
            if not isinstance(cur, (str, int, float)) or isinstance(cur, bool):
                return rec
            if isinstance(cur, str) and _same_outside_secrets(rec, cur):
                return cur
            changed.append(path)
            return cur if prefer_current else rec
        if isinstance(rec, dict):
            cur_d = cur if isinstance(cur, dict) else {}
            return {k: walk(f"{path}.{k}" if path else str(k), v, cur_d.get(k)) for k, v in rec.items()}
        if isinstance(rec, list):
            cur_l = cur if isinstance(cur, list) else []
            return [walk(f"{path}[{i}]", v, cur_l[i] if i < len(cur_l) else None) for i, v in enumerate(rec)]
        return rec

    return walk("", copy.deepcopy(dict(recorded)), current), changed


# --------------------------------------------------------------------------- transitions (pure)


def new_release(history: History, *, services: Mapping[str, str], manifest: Mapping[str, Any],
                performer: Performer | Mapping[str, Any], command: str = "up", version: str = "",
                source: Release | None = None, approval: dict | None = None, secret_values: Iterable[str] = (),
                now: str | None = None) -> Release:
    """A release in status "deploying", numbered after everything any node has seen.

    manifest is redacted here (pass the already rendered project: render_manifest).
    With source (a promotion), records the source and extends its lineage.
    """
    redacted = redact_manifest(manifest, history.project, secret_values)
    ts = now or now_iso()
    perf = performer.to_dict() if isinstance(performer, Performer) else dict(performer)
    return Release(
        project=history.project, env=history.env, id=history.next_id(), status=DEPLOYING,
        services=dict(services), manifest=redacted, project_hash=manifest_hash(redacted), performer=perf,
        created=ts, updated=ts, version=version, command=command,
        source=source.ref if source else None,
        lineage=((source.ref,) + source.lineage) if source else (),
        approval=approval,
    )


def mark_live(history: History, release: Release, now: str | None = None) -> list[Release]:
    """The writes that make `release` live: it, and every other live release of the
    environment as superseded (or rolled back, when `release` is a rollback of it)."""
    ts = now or now_iso()
    out = [replace(release, status=LIVE, updated=ts, reason=None)]
    for r in history.releases:
        if r.status == LIVE and r.id != release.id:
            status = ROLLED_BACK if release.rollback_of == r.id else SUPERSEDED
            out.append(replace(r, status=status, updated=ts))
    return out


def mark_failed(release: Release, reason: str, now: str | None = None, secret_values: Iterable[str] = ()) -> Release:
    """The release as failed; the reason (it quotes containers' last log lines) masked
    like the manifest, with the known secret values."""
    known = sorted((v for v in secret_values if isinstance(v, str) and len(v) >= MIN_KNOWN_SECRET), key=len,
                   reverse=True)
    return replace(release, status=FAILED, reason=mask_text(reason, REDACTED, known)[:2000], updated=now or now_iso())


def with_verification(release: Release, report: Mapping[str, Any], now: str | None = None) -> Release:
    return replace(release, verification=dict(report), updated=now or now_iso())


# --------------------------------------------------------------------------- history


@dataclass
class History:
    """One project's releases in one environment, merged over the environment's nodes."""

    project: str
    env: str
    releases: list[Release] = field(default_factory=list)  # newest first
    max_id: int = 0  # highest id any node has seen (also beyond the listed window)
    nodes: dict[str, dict[int, int]] = field(default_factory=dict)  # node -> {id: rev} it holds
    errors: dict[str, str] = field(default_factory=dict)  # node -> why it could not be read

    def live(self) -> Release | None:
        return next((r for r in self.releases if r.status == LIVE), None)

    def get(self, release_id: int) -> Release | None:
        return next((r for r in self.releases if r.id == release_id), None)

    def next_id(self) -> int:
        """The id of a new release: above every id any node holds. Refused (LedgerError)
        when a node's ledger could not be read: its copy may hold higher ids, and a
        reused id would be refused by that node's compare-and-set only once it is back."""
        if self.errors:
            raise LedgerError(
                f"cannot number a new release of {self.project} in {self.env}: the ledger of "
                + ", ".join(f"{n} ({e})" for n, e in sorted(self.errors.items()))
                + " could not be read, and it may hold newer releases",
                fix=f"check the nodes (`orch nodes check --env {self.env}`) and run the command again.")
        return max([self.max_id] + [r.id for r in self.releases]) + 1

    def previous(self, release: Release, statuses: tuple[str, ...] = WAS_LIVE) -> Release | None:
        """The newest release older than `release` with one of statuses."""
        return next((r for r in self.releases if r.id < release.id and r.status in statuses), None)

    def stale(self) -> dict[str, list[Release]]:
        """Per node, the releases (in the window read) it lacks or holds an older revision of."""
        out: dict[str, list[Release]] = {}
        for node, held in self.nodes.items():
            missing = [r for r in self.releases if held.get(r.id, 0) < r.rev]
            if missing:
                out[node] = missing
        return out


def merge_histories(project: str, env: str, per_node: Mapping[str, Mapping[str, Any]],
                    errors: Mapping[str, str] | None = None) -> History:
    """Merge release_list answers ({node: {"releases": [...], "max_id": n}}): for each id the
    highest revision wins (then the latest update)."""
    best: dict[int, Release] = {}
    nodes: dict[str, dict[int, int]] = {}
    max_id = 0
    for node, answer in per_node.items():
        held: dict[int, int] = {}
        max_id = max(max_id, int(answer.get("max_id") or 0))
        for rec in answer.get("releases") or []:
            if rec.get("project") != project or rec.get("env") != env:
                continue
            r = Release.from_record(rec)
            held[r.id] = r.rev
            cur = best.get(r.id)
            if cur is None or (r.rev, r.updated) > (cur.rev, cur.updated):
                best[r.id] = r
        nodes[node] = held
    releases = sorted(best.values(), key=lambda r: r.id, reverse=True)
    return History(project, env, releases, max_id, nodes, dict(errors or {}))


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class ReleaseDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    images: dict[str, tuple[str, str]] = field(default_factory=dict)  # service -> (old, new)
    config: tuple[str, ...] = ()  # services whose configuration (besides the image) changed
    other: tuple[str, ...] = ()  # top-level keys that changed (networks, volumes, secrets, configs)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.images or self.config or self.other)

    def summary(self) -> str:
        if self.empty:
            return "no change"
        parts = [f"+{s}" for s in self.added] + [f"-{s}" for s in self.removed]
        for s in sorted(set(self.images) | set(self.config)):
            what = [w for w, on in (("image", s in self.images), ("config", s in self.config)) if on]
            parts.append(f"{s} ({', '.join(what)})")
        parts += list(self.other)
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"added": list(self.added), "removed": list(self.removed),
                "images": {k: {"from": a, "to": b} for k, (a, b) in self.images.items()},
                "config": list(self.config), "other": list(self.other), "summary": self.summary()}


def diff_releases(old: Release | None, new: Release) -> ReleaseDiff:
    """What changed from old to new (every service is "added" when there is no old)."""
    if old is None:
        return ReleaseDiff(added=tuple(sorted(new.services)))
    old_s, new_s = old.manifest.get("services") or {}, new.manifest.get("services") or {}
    names_old, names_new = set(old.services) | set(old_s), set(new.services) | set(new_s)
    images = {s: (old.services.get(s, ""), new.services.get(s, "")) for s in sorted(names_old & names_new)
              if old.services.get(s) != new.services.get(s)}

    def conf(svc: Any) -> Any:
        if not isinstance(svc, dict):
            return svc
        return {k: v for k, v in svc.items() if k != "image"}

    config = tuple(s for s in sorted(names_old & names_new) if conf(old_s.get(s)) != conf(new_s.get(s)))
    keys = (set(old.manifest) | set(new.manifest)) - {"services", "name"}
    other = tuple(k for k in sorted(keys) if old.manifest.get(k) != new.manifest.get(k))
    return ReleaseDiff(tuple(sorted(names_new - names_old)), tuple(sorted(names_old - names_new)), images, config,
                       other)


# --------------------------------------------------------------------------- promotion gates


@dataclass(frozen=True)
class PromotionPlan:
    source: Release
    target_env: str
    noop: bool = False
    message: str = ""
    approval: dict | None = None  # to record on the new release


def approval_given(approve: bool, environ: Mapping[str, str] | None = None) -> str | None:
    """How the approval was given ("--approve" / "ORCH_APPROVE"), or None."""
    environ = os.environ if environ is None else environ
    if approve:
        return "--approve"
    if environ.get(APPROVE_VARIABLE, "").strip().lower() in ("1", "true", "yes"):
        return APPROVE_VARIABLE
    return None


def health_from_state(release: Release, containers: Mapping[str, list[Mapping[str, Any]]]) -> tuple[bool, list[str]]:
    """Is the release healthy where it runs? containers: {node: agent `state` containers}.

    Every service of the release needs at least one container, each of them running
    from the release's digest and not unhealthy or still starting (a one-shot service
    that exited 0 counts as healthy).
    """
    problems: list[str] = []
    seen: dict[str, int] = {}
    for node, items in sorted(containers.items()):
        for c in items:
            if c.get("project") != release.project or c.get("service") not in release.services:
                continue
            svc = c["service"]
            seen[svc] = seen.get(svc, 0) + 1
            name = c.get("name", svc)
            if c.get("image") and c["image"] != release.services[svc]:
                problems.append(f"{node}: {name} runs {c['image']}, not the release's {release.services[svc]}")
            state, health = c.get("state"), c.get("health") or ""
            if state == "exited" and c.get("exit_code", 1) == 0:
                continue
            if state != "running":
                problems.append(f"{node}: {name} is {state}")
            elif health in ("unhealthy", "starting"):
                problems.append(f"{node}: {name} is {health}")
    for svc in sorted(release.services):
        if not seen.get(svc):
            problems.append(f"service {svc} has no container")
    return not problems, problems


def check_promotion(source_history: History, target_history: History, target_gates: Any, *,
                    source_healthy: bool | None = None, health_problems: Iterable[str] = (),
                    approve: bool = False, performer: Performer | Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None, now: str | None = None,
                    source_env: Any = None, target_env: Any = None) -> PromotionPlan:
    """The promotion gates, in order; the first that fails raises GateRefused (exit 3)
    naming the gate and how to pass it. A release already live in the target is a no-op.

    source_healthy: the caller's health_from_state() of the source's live release (None:
    not checked). target_gates: the target Environment's .gates (approval, verification).
    source_env, target_env: the Environments, for the messages (their files; whether the
    source has verify checks at all).
    """
    src_env, dst_env = source_history.env, target_history.env
    source = source_history.live()
    if source is None:
        raise GateRefused(
            f"gate 'live' refused the promotion to {dst_env}: {src_env} has no live release of "
            f"{source_history.project} to promote.",
            fix=f"deploy to {src_env} first (`orch up --env {src_env}`, or promote into it), then promote again.",
            details={"gate": "live", "source_env": src_env, "target_env": dst_env},
        )
    current = target_history.live()
    if current is not None and current.services == source.services and (
            current.source == source.ref or source.ref in current.lineage):
        return PromotionPlan(source, dst_env, noop=True,
                             message=f"{source.ref} is already live in {dst_env} as {current.ref}; nothing to do.")
    if source_healthy is False:
        problems = list(health_problems)
        raise GateRefused(
            f"gate 'healthy' refused promoting {source.ref} to {dst_env}: the release is not healthy in {src_env}"
            + (": " + "; ".join(problems[:5]) if problems else "."),
            fix=f"fix {src_env} (`orch ps --env {src_env}`, `orch logs --env {src_env}`) or redeploy it, then "
            "promote again.",
            details={"gate": "healthy", "source": source.ref.to_dict(), "problems": problems},
        )
    if getattr(target_gates, "verification", False) and source.verified is not True:
        if source.verified is False:
            failed = [c.get("name", "?") for c in (source.verification or {}).get("results", []) if not c.get("ok")]
            why = f"its verification failed ({', '.join(failed) or 'see orch history'})"
        else:
            why = "it has not been verified"
        fix = f"run `orch verify --env {src_env}` (and fix what fails), then promote again."
        no_checks = source_env is not None and not source_env.verify.checks
        if no_checks:  # `orch verify` cannot pass there: name both ways out
            why += f", and it cannot be: {src_env} has no verify checks"
            target_file = f" ({target_env.file})" if target_env is not None else ""
            fix = (f"add checks under `verify: checks:` in {src_env}'s environment file ({source_env.file}) and run "
                   f"`orch verify --env {src_env}`, then promote again; or, if {dst_env} should take unverified "
                   f"releases, remove the `verified` gate (`gates.verification: false`) from {dst_env}'s "
                   f"environment file{target_file}.")
        raise GateRefused(
            f"gate 'verified' refused promoting {source.ref} to {dst_env}: {dst_env} requires a verified release "
            f"and {why}.",
            fix=fix,
            details={"gate": "verified", "source": source.ref.to_dict(), **({"no_checks": True} if no_checks else {})},
        )
    approval = None
    if getattr(target_gates, "approval", False):
        how = approval_given(approve, environ)
        if how is None:
            raise GateRefused(
                f"gate 'approved' refused promoting {source.ref} to {dst_env}: {dst_env} requires an approval.",
                fix=f"re-run with --approve (in CI: set {APPROVE_VARIABLE}=1 in a protected, manual job); the "
                "approval is recorded on the release with your name.",
                details={"gate": "approved", "source": source.ref.to_dict()},
            )
        perf = performer.to_dict() if isinstance(performer, Performer) else dict(performer or {})
        approval = {"by": performer_text(perf) if perf else "unknown", "at": now or now_iso(), "via": how}
    return PromotionPlan(source, dst_env, approval=approval)


# --------------------------------------------------------------------------- rollback


@dataclass(frozen=True)
class RollbackPlan:
    target: Release  # the release to re-apply
    current: Release  # the live release it replaces


def select_rollback(history: History, to: int | None = None) -> RollbackPlan:
    """Which release a rollback re-applies: `to`, else the one live before the current."""
    current = history.live()
    if current is None:
        raise InputError(Problem(
            f"{history.env} has no live release of {history.project} to roll back",
            fix=f"see `orch history --env {history.env}`; deploy with `orch up --env {history.env}`.",
        ))
    if to is None:
        target = history.previous(current, (SUPERSEDED, ROLLED_BACK))
        if target is None:
            raise InputError(Problem(
                f"{current.ref} is the first release of {history.project} that went live in {history.env}: there "
                "is nothing earlier to roll back to",
                fix=f"see `orch history --env {history.env}`.",
            ))
        return RollbackPlan(target, current)
    target = history.get(to)
    if target is None:
        raise InputError(Problem(
            f"{history.env} has no release #{to} of {history.project} (within the history read)",
            fix=f"pick an id from `orch history --env {history.env}`.",
        ))
    # --to the live release re-applies it: what brings every replica back after a paused
    # or interrupted update (when nothing differs, the pipeline says it is live already).
    if target.status not in WAS_LIVE:
        raise InputError(Problem(
            f"{target.ref} never went live (status {target.status_text}); orch only rolls back to releases that ran",
            fix=f"pick a release that was live from `orch history --env {history.env}`.",
        ))
    return RollbackPlan(target, current)


def rollback_release(history: History, plan: RollbackPlan, performer: Performer | Mapping[str, Any],
                     now: str | None = None) -> Release:
    """The new release re-applying plan.target's recorded manifest and digests."""
    ts = now or now_iso()
    t = plan.target
    perf = performer.to_dict() if isinstance(performer, Performer) else dict(performer)
    return Release(
        project=history.project, env=history.env, id=history.next_id(), status=DEPLOYING,
        services=dict(t.services), manifest=copy.deepcopy(t.manifest), project_hash=t.project_hash,
        performer=perf, created=ts, updated=ts, version=t.version, command="rollback",
        source=t.source, lineage=t.lineage, rollback_of=plan.current.id, restores=t.id,
    )


def images_to_keep(history: History, keep: int = DEFAULT_KEEP_IMAGES) -> set[str]:
    """Digests the nodes must keep so a rollback to any of the last `keep` releases that
    ran pulls nothing (the live one included)."""
    out: set[str] = set()
    ran = [r for r in history.releases if r.status in WAS_LIVE or r.status == DEPLOYING]
    for r in ran[:keep]:
        out.update(r.services.values())
    return out


class LedgerError(OrchError):
    """No node of the environment could record the release."""

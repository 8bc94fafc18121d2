"""The release ledger as the controller reaches it, and who performs a command.

- `ReleaseLedger`: the environment's ledger read and written through one AgentSession
  per node (release_list / release_put), merged by orchestrator.core.releases' rules.
- `detect_performer`: git's user.name <user.email>, else $USER, plus the CI job
  (orchestrator.core.releases.ci_info).
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.core.releases import (History, LedgerError, Performer, Release, ci_info, merge_histories,
                                         now_iso)
from orchestrator.errors import OrchError


def detect_performer(environ: Mapping[str, str] | None = None, cwd: str | None = None,
                     run: Callable[..., Any] = subprocess.run) -> Performer:
    """Who runs this command: git's user.name <user.email>, else $USER; plus CI details."""
    environ = os.environ if environ is None else environ
    login = environ.get("USER") or environ.get("LOGNAME") or ""
    if not login:
        try:
            login = getpass.getuser()
        except Exception:
            login = ""

    def git(key: str) -> str:
        try:
            cp = run(["git", "config", "--get", key], capture_output=True, text=True, timeout=10, cwd=cwd)
        except (OSError, subprocess.SubprocessError):
            return ""
        return cp.stdout.strip() if cp.returncode == 0 else ""

    name, email = git("user.name"), git("user.email")
    if name and email:
        user = f"{name} <{email}>"
    else:
        user = name or email or login or "unknown"
    return Performer(user=user, host=socket.gethostname(), login=login, ci=ci_info(environ))


# --------------------------------------------------------------------------- ledger over agents


@dataclass(frozen=True)
class WriteResult:
    releases: list[Release]
    stored_on: list[str]
    failed: dict[str, str]


class ReleaseLedger:
    """The environment's ledger, through one AgentSession per node.

        ledger = ReleaseLedger(sessions, "hello", "prod")
        history = ledger.history()                       # merged, newest first
        rel = new_release(history, services=pins, manifest=render_manifest(project, pins), performer=who)
        ledger.write(rel)                                # status deploying, on every node
        ledger.write(*mark_live(history, rel))           # live; the previous live superseded

    Reads tolerate unreachable nodes while one answers (errors are kept on History,
    whose next_id then refuses: a new id needs every node's ledger);
    a write succeeds when at least one node stored it and reports the others in
    WriteResult.failed (and to on_warning). Each write also re-sends, in the same
    transaction, what the last read found a node to lack (the repair).
    """

    def __init__(self, sessions: Mapping[str, Any], project: str, env: str,
                 on_warning: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time):
        self.sessions = dict(sorted(sessions.items()))
        self.project = project
        self.env = env
        self.on_warning = on_warning or (lambda message: None)
        self.clock = clock
        self._last: History | None = None

    def _each(self, fn: Callable[[str, Any], Any]) -> tuple[dict[str, Any], dict[str, BaseException]]:
        from orchestrator.io.transport import parallel

        return parallel(list(self.sessions.items()), lambda item: fn(item[0], item[1]), key=lambda item: item[0])

    def list_request(self, limit: int = 50) -> tuple[str, dict]:
        """The request `history` sends each node (to send it ahead: nodes.SSHNode.read_behind_next)."""
        return "release_list", {"env": self.env, "project": self.project, "limit": limit}

    def history(self, limit: int = 50) -> History:
        op, args = self.list_request(limit)
        answers, errors = self._each(lambda node, s: s.call(op, args))
        if not answers:
            raise LedgerError(
                f"cannot read the release history of {self.project} in {self.env} from any node: "
                + "; ".join(f"{n}: {_err(e)}" for n, e in sorted(errors.items())),
                fix="check the nodes (`orch nodes check --env %s`)." % self.env,
            )
        for node, err in sorted(errors.items()):
            self.on_warning(f"{node}: could not read its ledger ({_err(err)}); history from the other nodes")
        history = merge_histories(self.project, self.env, answers, {n: _err(e) for n, e in errors.items()})
        self._last = history
        return history

    def _known_rev(self, release_id: int) -> int:
        if self._last is None:
            return 0
        seen = [held.get(release_id, 0) for held in self._last.nodes.values()]
        r = self._last.get(release_id)
        return max(seen + [r.rev if r else 0])

    def write(self, *releases: Release) -> WriteResult:
        """Record releases (each with its revision bumped) on every node, one transaction per node."""
        if not releases:
            return WriteResult([], [], {})
        ts = now_iso(self.clock)
        # Above whatever any node was seen to hold: a caller may pass a release object
        # from before its last write (e.g. mark_live(history, rel) after write(rel)).
        bumped = [replace(r, rev=max(r.rev, self._known_rev(r.id)) + 1, updated=ts if r.updated < ts else r.updated)
                  for r in releases]
        ids = {r.id for r in bumped}
        stale = self._last.stale() if self._last is not None else {}

        def one(node: str, session: Any) -> Any:
            repairs = [r for r in stale.get(node, []) if r.id not in ids]
            records = [r.to_record() for r in bumped + repairs]
            return session.call("release_put", {"releases": records})

        answers, errors = self._each(one)
        conflicts = {node: r["conflict"] for node, a in answers.items() for r in (a or {}).get("results") or []
                     if r.get("conflict") and r.get("id") in ids}
        if conflicts:
            raise LedgerError(
                f"could not record {', '.join(str(r.ref) for r in bumped)} of {self.project}: its id is taken by "
                "another release (another controller recorded it meanwhile) on "
                + "; ".join(f"{n}: {c}" for n, c in sorted(conflicts.items())),
                fix=f"see `orch history --env {self.env}`, then run the command again (it numbers the release "
                "after every release the nodes hold).")
        for node, a in sorted(answers.items()):
            for r in (a or {}).get("results") or []:
                if r.get("conflict"):
                    self.on_warning(f"{node}: did not take the repair of #{r.get('id')}: {r['conflict']}")
        if not answers:
            raise LedgerError(
                f"could not record release(s) {', '.join(str(r.ref) for r in bumped)} of {self.project} on any "
                "node: " + "; ".join(f"{n}: {_err(e)}" for n, e in sorted(errors.items())),
                fix="check the nodes (`orch nodes check --env %s`) and run the command again." % self.env,
            )
        for node, err in sorted(errors.items()):
            self.on_warning(f"{node}: did not record {', '.join(str(r.ref) for r in bumped)} ({_err(err)}); "
                            "the next write repairs it")
        if self._last is not None:
            self._last = _apply_written(self._last, bumped, list(answers))
        return WriteResult(bumped, sorted(answers), {n: _err(e) for n, e in errors.items()})


def _apply_written(history: History, written: list[Release], nodes: list[str]) -> History:
    by_id = {r.id: r for r in history.releases}
    for r in written:
        by_id[r.id] = r
    releases = sorted(by_id.values(), key=lambda r: r.id, reverse=True)
    held = {n: dict(h) for n, h in history.nodes.items()}
    for n in nodes:
        for r in releases:  # a successful write carried the repairs too
            held.setdefault(n, {})[r.id] = r.rev
    return History(history.project, history.env, releases, max(history.max_id, *(r.id for r in written)), held,
                   history.errors)


def _err(err: BaseException) -> str:
    return err.render() if isinstance(err, OrchError) else f"{type(err).__name__}: {err}"

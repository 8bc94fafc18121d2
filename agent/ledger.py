"""The release ledger: every release of every project and environment this node serves.

One SQLite database per node (Context.data_dir()/ledger.sqlite3, mode 0600), in WAL
mode with synchronous=FULL, one transaction per write. Every node of an environment
holds a full copy, written by the controller; the controller keeps no state of its own,
so any CI runner with the SSH key reads the same history. Copies are reconciled by a
revision number: the controller bumps `rev` on every change of a release, and a write
never replaces a higher revision (a stale controller cannot undo a newer one); a node
that missed a write is repaired by the controller's next write.

Secrets never reach the ledger in clear, and nothing derived from them does: the
controller masks them by the one rule of agent.wire.redact (secret values, secret names,
passwords in URLs and NAME=VALUE pairs, in every field of the project), and the agent
applies the same rule again to what it stores (manifest, extra, performer, approval,
verification, reason), whoever sent it. The mark is a constant, "<redacted>": no hash,
so a copy of the file allows no offline guessing. Rows a node stored before its agent
applied the rule (schema 1) are masked when the ledger is first opened at schema 2; with
secure_delete on, replaced bytes are zeroed, and the WAL is truncated after that migration.

Release ids are never reused (compare-and-set): a record whose id is new on this node
is inserted; one whose id is known is an update of THAT release only, i.e. its
immutable fields (created, command, project_hash, services, performer) must match the
stored ones, and its revision must be higher. A record for an id that another release
holds is refused ("conflict" in its result; nothing of it is written).

Operations (registered in agent.operations.OPERATIONS):
  release_put   {"releases": [RELEASE, ...]}  (or {"release": RELEASE}), all in one transaction
                -> {"results": [{"id", "stored", "rev", "conflict"?}...], "stored": n}
  release_list  {"env", "project"?, "limit"?, "before"?} -> {"releases": [newest first], "max_id"}
  release_get   {"env", "project", "id"} -> {"release": RELEASE or null}

Python 3.9 compatible, stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from typing import Any, Dict, List, Optional

from agent.wire.ledger import STATUSES
from agent.wire.protocol import (
    BadRequest,
    check_int,
    check_name,
    check_object,
    check_project,
    check_str,
)
from agent.wire.redact import REDACTED, mask_text, mask_tree

DB_NAME = "ledger.sqlite3"
# 2: rows stored before the agent applied the secret rule itself are masked on open
SCHEMA_VERSION = 2
MAX_LIST = 1000
MAX_RECORD_BYTES = 4 * 1024 * 1024

_DIGEST_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._:/-]*@sha256:[0-9a-f]{64}$")
_HASH_RE = re.compile(r"^[0-9a-f]{16,128}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    project      TEXT    NOT NULL,
    env          TEXT    NOT NULL,
    id           INTEGER NOT NULL,          -- per project and environment, increasing
    rev          INTEGER NOT NULL,          -- bumped by the controller on every change
    status       TEXT    NOT NULL,          -- deploying | live | failed | rolled_back | superseded
    services     TEXT    NOT NULL,          -- JSON {service: "repo@sha256:..."}
    manifest     TEXT    NOT NULL,          -- JSON: the rendered project, secrets hashed
    project_hash TEXT    NOT NULL,          -- sha256 of the canonical manifest JSON
    version      TEXT    NOT NULL DEFAULT '',
    command      TEXT    NOT NULL DEFAULT '',  -- "up" | "promote" | "rollback"
    performer    TEXT    NOT NULL,          -- JSON {user, host, ci: {...}}
    source_env   TEXT,                      -- promotion: where it came from
    source_id    INTEGER,
    lineage      TEXT    NOT NULL DEFAULT '[]',  -- JSON [{env, id}], nearest first
    rollback_of  INTEGER,                   -- rollback: the release it replaced
    restores     INTEGER,                   -- rollback: the release whose manifest it re-applied
    approval     TEXT,                      -- JSON {by, at} or NULL
    verification TEXT,                      -- JSON results or NULL
    reason       TEXT,                      -- why it failed
    extra        TEXT    NOT NULL DEFAULT '{}',
    created      TEXT    NOT NULL,
    updated      TEXT    NOT NULL,
    PRIMARY KEY (project, env, id)
);
CREATE INDEX IF NOT EXISTS releases_by_status ON releases (project, env, status);
"""

_JSON_COLUMNS = ("services", "manifest", "performer", "lineage", "approval", "verification", "extra")
_COLUMNS = ("project", "env", "id", "rev", "status", "services", "manifest", "project_hash", "version", "command",
            "performer", "source_env", "source_id", "lineage", "rollback_of", "restores", "approval",
            "verification", "reason", "extra", "created", "updated")
_KEYS = set(_COLUMNS) - {"source_env", "source_id"} | {"source"}


# ----------------------------------------------------------------------------- storage


def db_path(ctx: Any) -> str:
    return os.path.join(ctx.data_dir(), DB_NAME)


def connect(path: str) -> sqlite3.Connection:
    """Open (creating, 0600) the ledger; WAL, full sync, schema in place."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # What a write replaces or frees is overwritten with zeros, not left in the file's free
    # space (a row rewritten by the migration below, a page split by a later write).
    conn.execute("PRAGMA secure_delete=ON")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            if version >= 1:
                _mask_stored_rows(conn)
            conn.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if version >= 1:  # the old pages' frames leave the WAL file too
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return conn


_MASKED_COLUMNS = ("manifest", "extra", "performer", "approval", "verification")


def _mask_extra(extra: Any) -> Any:
    masked = mask_tree(extra, REDACTED)
    if isinstance(extra, dict) and isinstance(extra.get("base"), dict):  # the project before the overlay
        masked["base"] = mask_tree(extra["base"], REDACTED)
    return masked


def _mask_stored_rows(conn: sqlite3.Connection) -> int:
    """Apply the secret rule to rows a node stored before it applied it itself (schema 1
    agents stored what the controller sent). Returns how many rows changed."""
    changed = 0
    rows = conn.execute("SELECT rowid, %s, reason FROM releases" % ", ".join(_MASKED_COLUMNS)).fetchall()
    for row in rows:
        values = []
        for col in _MASKED_COLUMNS:
            raw = row[col]
            if raw is None:
                values.append(None)
                continue
            tree = json.loads(raw)
            masked = _mask_extra(tree) if col == "extra" else mask_tree(tree, REDACTED)
            values.append(json.dumps(masked, sort_keys=True, separators=(",", ":")))
        reason = None if row["reason"] is None else mask_text(row["reason"], REDACTED)
        if values + [reason] != [row[c] for c in _MASKED_COLUMNS] + [row["reason"]]:
            sets = ", ".join("%s=?" % c for c in _MASKED_COLUMNS + ("reason",))
            conn.execute("UPDATE releases SET %s WHERE rowid=?" % sets, values + [reason, row["rowid"]])
            changed += 1
    return changed


def _row_to_record(row: sqlite3.Row) -> Dict[str, Any]:
    rec: Dict[str, Any] = {}
    for col in _COLUMNS:
        value = row[col]
        if col in _JSON_COLUMNS and value is not None:
            value = json.loads(value)
        rec[col] = value
    source_env, source_id = rec.pop("source_env"), rec.pop("source_id")
    rec["source"] = {"env": source_env, "id": source_id} if source_env else None
    return rec


_IDENTITY = ("created", "command", "project_hash", "services", "performer")


def _identity(rec: Dict[str, Any]) -> List[str]:
    """What never changes in a release once recorded: a write for its id must carry it."""
    # masked like a stored record (a row written before the rule may hold it in clear)
    return [json.dumps(mask_tree(rec.get(k), REDACTED), sort_keys=True, separators=(",", ":")) for k in _IDENTITY]


def put_records(conn: sqlite3.Connection, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Store validated records in one transaction (compare-and-set, see the module
    docstring): insert a new id; update a known id only with the same release's higher
    revision; refuse (conflict) a record for an id another release holds."""
    results = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for rec in records:
            key = (rec["project"], rec["env"], rec["id"])
            result: Dict[str, Any] = {"project": rec["project"], "env": rec["env"], "id": rec["id"]}
            row = conn.execute("SELECT * FROM releases WHERE project=? AND env=? AND id=?", key).fetchone()
            if row is not None:
                held = _row_to_record(row)
                if _identity(held) != _identity(rec):
                    result.update(stored=False, rev=held["rev"], conflict=(
                        "release #%d of %s in %s is another release here (created %s by %s, %s)"
                        % (rec["id"], rec["project"], rec["env"], held["created"],
                           (held["performer"] or {}).get("user", "?"), held["command"] or "?")))
                    results.append(result)
                    continue
                if (held["rev"], held["updated"]) >= (rec["rev"], rec["updated"]):
                    result.update(stored=False, rev=held["rev"])
                    results.append(result)
                    continue
            values = []
            for col in _COLUMNS:
                if col == "source_env":
                    values.append((rec.get("source") or {}).get("env"))
                elif col == "source_id":
                    values.append((rec.get("source") or {}).get("id"))
                elif col in _JSON_COLUMNS:
                    v = rec.get(col)
                    values.append(None if v is None else json.dumps(v, sort_keys=True, separators=(",", ":")))
                else:
                    values.append(rec.get(col))
            if row is None:
                sql = "INSERT INTO releases (%s) VALUES (%s)" % (", ".join(_COLUMNS), ", ".join("?" * len(_COLUMNS)))
                conn.execute(sql, values)
            else:  # the same release, a higher revision: and only if it is still what was compared
                sets = ", ".join("%s=?" % c for c in _COLUMNS)
                conn.execute("UPDATE releases SET %s WHERE project=? AND env=? AND id=? AND rev=?" % sets,
                             values + list(key) + [held["rev"]])
            result.update(stored=True, rev=rec["rev"])
            results.append(result)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return results


def list_records(conn: sqlite3.Connection, env: str, project: Optional[str], limit: int,
                 before: Optional[int]) -> List[Dict[str, Any]]:
    sql = "SELECT * FROM releases WHERE env=?"
    params: List[Any] = [env]
    if project:
        sql += " AND project=?"
        params.append(project)
    if before is not None:
        sql += " AND id<?"
        params.append(before)
    sql += " ORDER BY id DESC, project LIMIT ?"
    params.append(limit)
    return [_row_to_record(r) for r in conn.execute(sql, params).fetchall()]


# ----------------------------------------------------------------------------- validation


def _opt_int(rec: Dict[str, Any], key: str) -> Optional[int]:
    v = rec.get(key)
    return None if v is None else check_int(v, key, 1)


def _opt_dict(rec: Dict[str, Any], key: str) -> Optional[Dict[str, Any]]:
    v = rec.get(key)
    if v is not None and not isinstance(v, dict):
        raise BadRequest("release %s must be an object or null" % key)
    return v


def check_record(rec: Any) -> Dict[str, Any]:
    """A release record as the controller sends it; raises BadRequest naming the problem."""
    if not isinstance(rec, dict):
        raise BadRequest("a release must be an object")
    unknown = sorted(set(rec) - _KEYS)
    if unknown:
        raise BadRequest("release has unknown keys: %s" % ", ".join(unknown))
    for key in ("project", "env", "id", "rev", "status", "services", "manifest", "project_hash", "performer",
                "created", "updated"):
        if rec.get(key) is None:
            raise BadRequest("release needs '%s'" % key)
    out: Dict[str, Any] = {
        "project": check_project(rec["project"]),
        "env": check_name(rec["env"], "env"),
        "id": check_int(rec["id"], "id", 1),
        "rev": check_int(rec["rev"], "rev", 1),
        "status": check_str(rec["status"], "status"),
        "project_hash": check_str(rec["project_hash"], "project_hash"),
        "version": check_str(rec.get("version") or "", "version"),
        "command": check_str(rec.get("command") or "", "command"),
        "created": check_str(rec["created"], "created"),
        "updated": check_str(rec["updated"], "updated"),
        "reason": None if rec.get("reason") is None else check_str(rec["reason"], "reason"),
        "rollback_of": _opt_int(rec, "rollback_of"),
        "restores": _opt_int(rec, "restores"),
        "approval": _opt_dict(rec, "approval"),
        "verification": _opt_dict(rec, "verification"),
        "extra": _opt_dict(rec, "extra") or {},
    }
    if out["status"] not in STATUSES:
        raise BadRequest("release status %r is not one of %s" % (out["status"], ", ".join(STATUSES)))
    if not _HASH_RE.fullmatch(out["project_hash"]):
        raise BadRequest("project_hash must be 16-128 lowercase hex digits")
    services = rec["services"]
    if not isinstance(services, dict):
        raise BadRequest("release services must be an object {service: image@sha256:...}")
    for name, ref in services.items():
        check_name(name, "service")
        check_str(ref, "services[%r]" % name)
        if not _DIGEST_REF_RE.fullmatch(ref):
            raise BadRequest("services[%r] = %r is not pinned to a digest (repo@sha256:...)" % (name, ref))
    out["services"] = dict(services)
    if not isinstance(rec["manifest"], dict):
        raise BadRequest("release manifest must be an object (the rendered project)")
    if not isinstance(rec["performer"], dict):
        raise BadRequest("release performer must be an object")
    # The controller masked the secrets; masked again here (agent.wire.redact's one rule, an
    # already masked value stays as it is) so that none is stored, whoever sent it.
    out["manifest"] = mask_tree(rec["manifest"], REDACTED)
    out["extra"] = _mask_extra(out["extra"])
    out["performer"] = mask_tree(rec["performer"], REDACTED)
    for key in ("approval", "verification"):
        out[key] = mask_tree(out[key], REDACTED)
    if out["reason"] is not None:
        out["reason"] = mask_text(out["reason"], REDACTED)
    source = rec.get("source")
    if source is not None:
        if not isinstance(source, dict) or set(source) - {"env", "id"}:
            raise BadRequest("release source must be {env, id} or null")
        source = {"env": check_name(source.get("env"), "source.env"), "id": check_int(source.get("id"), "source.id", 1)}
    out["source"] = source
    lineage = rec.get("lineage") or []
    if not isinstance(lineage, list):
        raise BadRequest("release lineage must be a list of {env, id}")
    out["lineage"] = [
        {"env": check_name(x.get("env"), "lineage.env"), "id": check_int(x.get("id"), "lineage.id", 1)}
        for x in (check_object(x or {}, "lineage[%d]" % i) for i, x in enumerate(lineage))
    ]
    size = len(json.dumps(out, default=str))
    if size > MAX_RECORD_BYTES:
        raise BadRequest("release record is %d bytes; the limit is %d" % (size, MAX_RECORD_BYTES))
    return out


# ----------------------------------------------------------------------------- operations


def op_release_put(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Insert or update releases (idempotent by (project, env, id) and rev), one transaction."""
    from agent.wire.protocol import check_keys

    check_keys(args, ("release", "releases"), "release_put")
    if args.get("releases") is not None:
        raw = args["releases"]
        if not isinstance(raw, list) or not raw:
            raise BadRequest("releases must be a non-empty list")
    elif args.get("release") is not None:
        raw = [args["release"]]
    else:
        raise BadRequest("release_put needs 'release' or 'releases'")
    records = [check_record(r) for r in raw]
    conn = connect(db_path(ctx))
    try:
        results = put_records(conn, records)
    finally:
        conn.close()
    return {"results": results, "stored": sum(1 for r in results if r["stored"])}


def op_release_list(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Releases of one environment (optionally one project), newest first."""
    from agent.wire.protocol import check_keys

    check_keys(args, ("env", "project", "limit", "before"), "release_list")
    env = check_name(args.get("env"), "env")
    project = check_project(args["project"]) if args.get("project") else None
    limit = check_int(args.get("limit", 50), "limit", 1, MAX_LIST)
    before = check_int(args["before"], "before", 1) if args.get("before") is not None else None
    path = db_path(ctx)
    if not os.path.exists(path):
        return {"releases": [], "max_id": 0}
    conn = connect(path)
    try:
        releases = list_records(conn, env, project, limit, before)
        sql, params = "SELECT MAX(id) FROM releases WHERE env=?", [env]
        if project:
            sql += " AND project=?"
            params.append(project)
        max_id = conn.execute(sql, params).fetchone()[0] or 0
    finally:
        conn.close()
    return {"releases": releases, "max_id": max_id}


def op_release_get(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    from agent.wire.protocol import check_keys

    check_keys(args, ("env", "project", "id"), "release_get")
    env = check_name(args.get("env"), "env")
    project = check_project(args.get("project"))
    rid = check_int(args.get("id"), "id", 1)
    path = db_path(ctx)
    if not os.path.exists(path):
        return {"release": None}
    conn = connect(path)
    try:
        row = conn.execute("SELECT * FROM releases WHERE project=? AND env=? AND id=?", (project, env, rid)).fetchone()
    finally:
        conn.close()
    return {"release": _row_to_record(row) if row is not None else None}


LEDGER_OPERATIONS = {
    "release_put": op_release_put,
    "release_list": op_release_list,
    "release_get": op_release_get,
}


# ----------------------------------------------------------------------------- lock breaks

# `orch lock break` (agent.lock.op_lock_break): who broke whose lock, and why. Its own
# table, created on first use, so the releases schema and its version stay as they are.
LOCK_BREAKS = """
CREATE TABLE IF NOT EXISTS lock_breaks (
    env       TEXT    NOT NULL,
    at        TEXT    NOT NULL,
    performer TEXT    NOT NULL,          -- JSON {user, host, login?, ci?}, as for releases
    reason    TEXT    NOT NULL,
    holder    TEXT,                      -- JSON: the holder written in the lock file, or NULL
    pids      TEXT    NOT NULL,          -- JSON [agent pids signalled]
    killed    INTEGER NOT NULL           -- 1: it needed SIGKILL (its batch was not put back)
)"""


def _break_row(row: sqlite3.Row) -> Dict[str, Any]:
    return {"env": row["env"], "at": row["at"], "by": json.loads(row["performer"]), "reason": row["reason"],
            "holder": json.loads(row["holder"]) if row["holder"] else None, "pids": json.loads(row["pids"]),
            "killed": bool(row["killed"])}


def record_lock_break(ctx: Any, env: str, by: Dict[str, Any], reason: str, holder: Optional[Dict[str, Any]],
                      pids: List[int], killed: bool) -> Dict[str, Any]:
    import time

    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conn = connect(db_path(ctx))
    try:
        conn.execute(LOCK_BREAKS)
        conn.execute("INSERT INTO lock_breaks (env, at, performer, reason, holder, pids, killed) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (env, at, json.dumps(by, sort_keys=True), reason,
                      json.dumps(holder, sort_keys=True) if holder else None, json.dumps(pids), int(killed)))
        row = conn.execute("SELECT * FROM lock_breaks WHERE rowid = last_insert_rowid()").fetchone()
    finally:
        conn.close()
    return _break_row(row)


def op_lock_break_list(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """The environment's lock breaks on this node, newest first."""
    from agent.wire.protocol import check_keys

    check_keys(args, ("env", "limit"), "lock_break_list")
    env = check_name(args.get("env"), "env")
    limit = check_int(args.get("limit", 20), "limit", 1, MAX_LIST)
    path = db_path(ctx)
    if not os.path.exists(path):
        return {"breaks": []}
    conn = connect(path)
    try:
        conn.execute(LOCK_BREAKS)
        rows = conn.execute("SELECT * FROM lock_breaks WHERE env=? ORDER BY rowid DESC LIMIT ?", (env, limit))
        return {"breaks": [_break_row(r) for r in rows.fetchall()]}
    finally:
        conn.close()


LEDGER_OPERATIONS["lock_break_list"] = op_lock_break_list

"""How the CLI prints: people get text on a TTY, CI gets JSON (--json, or stdout not a TTY).

The rules every command follows (docs/json-output.md is the user-facing schema):

- JSON mode: `--json`, or `$ORCH_OUTPUT=json`, or stdout is not a terminal (unless
  `--text` or `$ORCH_OUTPUT=text`). stdout then carries JSON lines only: progress
  events (`{"event": ..., "version": 1, ...}`) and exactly one final object, last:
  `{"version": 1, "status": "ok"|"planned"|"failed", "command": ..., ...}`. A failed
  command's final object has `"status": "failed"` and an `error` object
  (`kind`, `message`, `exit_code`, `fix`, `details`, `problems`), and its exit code is
  `error.exit_code`. Human text (errors, warnings, summaries, build output) goes to
  stderr. `orch exec` is the exception: its stdout is the command's.
- Secrets are never printed: main() puts a filter on stdout and stderr that replaces
  every known secret value with `***` (the project's secrets, the registry passwords
  of the environments loaded, and environment variables whose names say they hold a
  secret), whatever prints them: a command, an error message, a library's debug log
  under --verbose, a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.wire.redact import MASK, mask_known
from orchestrator.core.progress import JSON_VERSION as JSON_SCHEMA_VERSION
from orchestrator.errors import OrchError

OUTPUT_VARIABLE = "ORCH_OUTPUT"  # json | text: the output mode when neither --json nor --text is given
VERBOSE_VARIABLE = "ORCH_VERBOSE"


class _State:
    """What this invocation decided (reset at the start of every command)."""

    def __init__(self) -> None:
        self.json: bool | None = None  # None: the command has not parsed its options (yet)
        self.command: str | None = None  # "up", "lock status", ...
        self.final = False  # the final JSON object was printed
        self.verbose = False


_state = _State()


def reset() -> None:
    """A new invocation: nothing decided, nothing printed, not verbose."""
    global _state
    _state = _State()
    _disable_verbose()


# --------------------------------------------------------------------------- the mode


def decide_json(explicit: bool | None = None, stream: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """--json / --text when given, else $ORCH_OUTPUT, else JSON unless stdout is a terminal."""
    if explicit is not None:
        return bool(explicit)
    value = (os.environ if environ is None else environ).get(OUTPUT_VARIABLE, "").strip().lower()
    if value == "json":
        return True
    if value == "text":
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return not stream.isatty()
    except (AttributeError, ValueError, OSError):
        return True


def set_json_mode(explicit: bool | None, command: str | None = None) -> bool:
    """Called by every command's --json/--text option (options.Json) as it is parsed."""
    _state.json = decide_json(explicit)
    if command:
        _state.command = command
    return _state.json


def json_requested() -> bool:
    """Is this command printing JSON? Also right when the command line did not parse
    (a usage error): then argv decides (a command without a --json option, like exec,
    never prints JSON)."""
    if _state.json is not None:
        return _state.json
    command, _ = _argv_command(sys.argv[1:])
    return _json_for_argv(command)


def _json_for_argv(command: Any) -> bool:
    """The mode a command would have chosen from argv (its options did not parse)."""
    if command is None or not _has_json_option(command):
        return False
    argv = sys.argv[1:]
    if "--json" in argv:
        return True
    if "--text" in argv:
        return False
    return decide_json(None)


def command_name() -> str | None:
    """The command being run, as typed after `orch` ("up", "lock status")."""
    if _state.command:
        return _state.command
    _, path = _argv_command(sys.argv[1:])
    return path or None


def _argv_command(argv: list[str]) -> tuple[Any, str]:
    """(the click command that argv names, following groups, or None; its path)."""
    try:
        import typer.main

        from orchestrator.cli import app

        cmd = typer.main.get_command(app)
    except Exception:  # pragma: no cover - only on a broken install
        return None, ""
    path: list[str] = []
    for token in argv:
        if token == "--" or not hasattr(cmd, "commands"):
            break
        if token.startswith("-"):
            continue
        sub = cmd.commands.get(token)
        if sub is None:
            break
        cmd = sub
        path.append(token)
    return (cmd, " ".join(path)) if path else (None, "")


def _has_json_option(command: Any) -> bool:
    return any(getattr(p, "name", None) == "json" for p in getattr(command, "params", []) or [])


def command_from_context(ctx: Any) -> str:
    """"lock status" from a click context whose command_path is "orch lock status"."""
    parts = (getattr(ctx, "command_path", "") or "").split()
    return " ".join(parts[1:]) if len(parts) > 1 else (parts[0] if parts else "")


# --------------------------------------------------------------------------- final objects


def final(status: str, command: str | None = None, **fields: Any) -> dict:
    """A final object: version, status and command first, then the command's fields."""
    out: dict[str, Any] = {"version": JSON_SCHEMA_VERSION, "status": status, "command": command or command_name()}
    out.update(fields)
    return out


def normalize_final(obj: Mapping[str, Any]) -> dict:
    """version, status, command first (the command filled in when missing); duration_s
    counted from the process's start (cli.clock)."""
    out: dict[str, Any] = {"version": obj.get("version", JSON_SCHEMA_VERSION), "status": obj.get("status"),
                           "command": obj.get("command") or command_name()}
    out.update({k: v for k, v in obj.items() if k not in out})
    if isinstance(out.get("duration_s"), (int, float)) and not isinstance(out["duration_s"], bool):
        from orchestrator.cli import clock

        out["duration_s"] = round(clock.whole(float(out["duration_s"])), 3)
    return out


def error_json(err: OrchError) -> dict:
    return err.to_json()


def failure(err: OrchError, command: str | None = None, **fields: Any) -> dict:
    """The final object of a command that failed with err."""
    return final("failed", command, **fields, error=error_json(err))


def _is_final(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "version" in obj and "status" in obj and "event" not in obj


def print_json(obj: Any) -> None:
    """One JSON line on stdout. A final object (version + status) gets its command filled
    in and is remembered as printed, so an error after it adds no second one."""
    if _is_final(obj):
        obj = normalize_final(obj)
        _state.final = True
    sys.stdout.write(json.dumps(obj, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_final(obj: Mapping[str, Any]) -> None:
    print_json(normalize_final(obj))


def print_event(name: str, **data: Any) -> None:
    """A progress / data line (not the final object)."""
    sys.stdout.write(json.dumps({"event": name, "version": JSON_SCHEMA_VERSION, **data}, default=str) + "\n")
    sys.stdout.flush()


def final_printed() -> bool:
    return _state.final


def report_error(err: OrchError) -> None:
    """One paragraph on stderr; in JSON mode also the final failure object on stdout
    (unless the command printed its own)."""
    print(f"orch: error: {err.render()}", file=sys.stderr, flush=True)
    if _state.verbose:
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    if json_requested() and not _state.final:
        print_final(failure(err))


class UsageError(OrchError):
    """A command line the parser refused (missing or unknown option, bad value)."""

    exit_code = 2


class Interrupted(OrchError):
    exit_code = 130


class InternalError(OrchError):
    """An exception orch did not expect: a bug (the traceback is on stderr)."""


def report_usage_error(exc: Any) -> int:
    """A click usage error: its usual message on stderr; in JSON mode a final object."""
    exc.show()
    code = int(getattr(exc, "exit_code", 2) or 2)
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command", None)
    wants_json = _state.json if _state.json is not None else _json_for_argv(command)
    if wants_json and not _state.final:
        err = UsageError(exc.format_message(), fix=f"see `{getattr(ctx, 'command_path', 'orch')} --help`")
        err.exit_code = code
        print_final(failure(err, command_from_context(ctx) if ctx is not None else None))
    return code


def report_interrupt() -> None:
    print("orch: interrupted", file=sys.stderr, flush=True)
    if json_requested() and not _state.final:
        print_final(failure(Interrupted("interrupted (Ctrl-C or SIGINT): whatever was under way stopped")))


def report_internal(exc: BaseException) -> None:
    import traceback

    print(f"orch: error: a bug in orch: {type(exc).__name__}: {exc} (please report it with the traceback below)",
          file=sys.stderr, flush=True)
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    if json_requested() and not _state.final:
        print_final(failure(InternalError(f"{type(exc).__name__}: {exc} (a bug in orch; the traceback is on stderr)")))


def warn(message: str) -> None:
    print(f"orch: warning: {message}", file=sys.stderr, flush=True)


def use_colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


# --------------------------------------------------------------------------- progress


def make_progress(json_mode: bool) -> Any:
    """JSON lines (with the schema version on every event) or, for people, the live
    table (on a non-terminal with --text: printed once at the end)."""
    from orchestrator.cli.progress import LiveProgress

    if json_mode:
        return _json_progress_class()()
    return LiveProgress()


_JSON_PROGRESS: Any = None


def _json_progress_class() -> Any:
    global _JSON_PROGRESS
    if _JSON_PROGRESS is None:
        from orchestrator.cli.progress import JSONProgress

        class JSONLines(JSONProgress):
            """cli.progress.JSONProgress with the schema version on every event, the final
            object normalized (version, status, command first) and remembered, and the
            summary for people on stderr."""

            def event(self, name: str, **data: Any) -> None:
                if name != "final":
                    data = {"version": JSON_SCHEMA_VERSION, **data}
                super().event(name, **data)

            def finish(self, final: dict, summary: str = "") -> None:
                final = normalize_final(final)
                super().finish(final, summary)
                _state.final = True
                if summary:
                    print(summary, file=self.err, flush=True)

        _JSON_PROGRESS = JSONLines
    return _JSON_PROGRESS


# --------------------------------------------------------------------------- secrets

MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words


def secret_name(name: str) -> bool:
    """A variable holding a secret by its name (CI injects them so): agent.wire.redact's rule,
    the one the release ledger uses too."""
    from agent.wire.redact import secret_name as rule

    return rule(name)


class Redactor:
    """Known secret values, replaced by *** in text."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] = []
        self._lock = threading.Lock()

    def add(self, value: Any) -> None:
        if not isinstance(value, str):
            return
        value = value.strip()
        if len(value) < MIN_SECRET_LENGTH:
            return
        variants = {value, json.dumps(value)[1:-1]}
        with self._lock:
            new = variants - self._values
            if new:
                self._values |= new
                self._ordered = sorted(self._values, key=len, reverse=True)

    def add_all(self, values: Iterable[Any]) -> None:
        for v in values:
            self.add(v)

    def add_environ(self, environ: Mapping[str, str]) -> None:
        for name, value in environ.items():
            if secret_name(name):
                self.add(value)

    def scrub(self, text: str) -> str:
        return mask_known(text, self._ordered, MASK)

    def __contains__(self, value: str) -> bool:
        return value in self._values


class RedactingStream:
    """A text stream that writes whole lines to `raw` with every known secret masked.
    (A partial line waits for its newline or a flush, so a secret split across two
    writes is still found.)"""

    def __init__(self, raw: Any, redactor: Redactor) -> None:
        self.raw = raw
        self.redactor = redactor
        self._pending = ""
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._pending += text
            if "\n" in self._pending:
                head, _, self._pending = self._pending.rpartition("\n")
                self.raw.write(self.redactor.scrub(head + "\n"))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self.raw.write(self.redactor.scrub(self._pending))
                self._pending = ""
            self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return getattr(self.raw, "closed", False)

    @property
    def encoding(self) -> str:
        return getattr(self.raw, "encoding", "utf-8")

    @property
    def errors(self) -> str:
        return getattr(self.raw, "errors", "strict")

    @property
    def buffer(self) -> Any:
        return self.raw.buffer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def install_redaction(environ: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Mask secrets on stdout and stderr from now on, with a new Redactor (the one
    current_redactor() gives until the undo); returns the undo."""
    out, err = sys.stdout, sys.stderr
    if isinstance(out, RedactingStream):
        return lambda: None
    redactor = Redactor()
    redactor.add_environ(os.environ if environ is None else environ)
    sys.stdout, sys.stderr = RedactingStream(out, redactor), RedactingStream(err, redactor)

    def undo() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        sys.stdout, sys.stderr = out, err

    return undo


def current_redactor() -> Redactor:
    """The Redactor of the filter on stdout (one per command, set up by main); outside
    one (`orch exec`, library use) a throwaway: nothing is filtered there."""
    out = sys.stdout
    return out.redactor if isinstance(out, RedactingStream) else Redactor()


def protect_environment(environment: Any) -> None:
    """Register an environment's registry passwords (`registry:` and `registries:`) as
    secrets (and say, under --verbose, where the credentials come from: never their values)."""
    acme = getattr(getattr(environment, "ingress", None), "acme", None)
    if acme is not None and acme.email:  # the ACME account's contact: personal data, never shown
        current_redactor().add_all([acme.email])
    registry = getattr(environment, "registry", None)
    if registry is None:
        return
    creds = _protect_credentials(registry)
    for other in getattr(environment, "registries", ()):
        _protect_credentials(other)
    if _state.verbose:
        sources = []
        if registry.password_env:
            state = "set" if os.environ.get(registry.password_env) else "not set"
            sources.append(f"${registry.password_env} ({state})")
        if registry.credentials_file:
            sources.append(f"credentials_file {registry.credentials_file}")
        if registry.password_file:
            sources.append(f"password_file {registry.password_file}")
        debug(f"environment {environment.name} ({environment.file}): {len(environment.nodes)} node(s), registry "
              f"{registry.address or '-'}, credentials: "
              + ((f"user {creds.username}, password from " + " or ".join(sources)) if creds else "none"))


def _protect_credentials(registry: Any) -> Any:
    try:
        creds = registry.credentials()
    except Exception:  # incomplete credentials are reported where they are used
        creds = None
    if creds is not None and getattr(creds, "password", None):
        import base64

        redactor = current_redactor()
        redactor.add(creds.password)
        # as an HTTP Basic Authorization header would carry it
        redactor.add(base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode())
    return creds


def protect_project(project: Any) -> None:
    """Register a Compose project's secret values (agent.wire.redact's rule): its secrets'
    contents, its variables (.env, environment) under secret names, and what the rule
    finds in the project (values under secret names, passwords in URLs and NAME=VALUE
    pairs), so that they are masked in every line orch writes."""
    if project is None:
        return
    from agent.wire.redact import find_secrets
    from orchestrator.app.pipeline import secret_values

    redactor = current_redactor()
    redactor.add_all(secret_values(project))
    redactor.add_all(find_secrets(project.to_dict()))


def masked_project(project: Any) -> dict:
    """project.to_dict() with its secrets masked (agent.wire.redact's rule), for printing it."""
    from agent.wire.redact import mask_tree
    from orchestrator.app.pipeline import secret_values

    return mask_tree(project.to_dict(), MASK, secret_values(project))


def protect(workspace: Any) -> Any:
    """protect_project + protect_environment for a loaded Workspace; returns it."""
    protect_project(getattr(workspace, "project", None))
    if getattr(workspace, "environment", None) is not None:
        protect_environment(workspace.environment)
    return workspace


# --------------------------------------------------------------------------- --verbose


_VERBOSE_HANDLER: Any = None
_ROOT_LEVEL: int | None = None


def enable_verbose() -> None:
    """Debug lines on stderr: orch's own and the libraries' (paramiko, urllib3, docker),
    all through the secret filter (they are written to sys.stderr as it is then)."""
    import logging

    global _VERBOSE_HANDLER, _ROOT_LEVEL
    if _state.verbose:
        return
    _state.verbose = True

    class _Stderr(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                sys.stderr.write(self.format(record) + "\n")
                sys.stderr.flush()
            except Exception:  # pragma: no cover
                self.handleError(record)

    root = logging.getLogger()
    if _VERBOSE_HANDLER is None:
        _VERBOSE_HANDLER = _Stderr()
        _VERBOSE_HANDLER.setFormatter(logging.Formatter("orch: debug: %(name)s: %(message)s"))
        _ROOT_LEVEL = root.level
        root.addHandler(_VERBOSE_HANDLER)
    root.setLevel(logging.DEBUG)
    from orchestrator.core.releases import ci_info

    debug(f"orch {' '.join(sys.argv[1:])}")
    ci = ci_info(os.environ)
    debug(f"CI: {json.dumps(ci)}" if ci else "CI: none detected")


def _disable_verbose() -> None:
    import logging

    global _VERBOSE_HANDLER, _ROOT_LEVEL
    if _VERBOSE_HANDLER is not None:
        root = logging.getLogger()
        root.removeHandler(_VERBOSE_HANDLER)
        if _ROOT_LEVEL is not None:
            root.setLevel(_ROOT_LEVEL)
        _VERBOSE_HANDLER = _ROOT_LEVEL = None


def verbose() -> bool:
    return _state.verbose


def debug(message: str) -> None:
    if _state.verbose:
        import logging

        logging.getLogger("orch").debug(message)

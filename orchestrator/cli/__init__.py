"""The `orch` command line: thin wrappers over the orchestrator library.

Command modules register themselves on `app`; each keeps heavy imports (docker,
paramiko, networkx, jinja2) inside the command functions so `orch --help` stays fast.
"""

from __future__ import annotations

import os
import sys

from orchestrator.cli.root import app  # the Typer app; the command modules below register on it

# Registration order is the order `orch --help` lists the commands in.
from orchestrator.cli import project as _project  # noqa: E402,F401
from orchestrator.cli import lab as _lab  # noqa: E402,F401
from orchestrator.cli import nodes as _nodes  # noqa: E402,F401
from orchestrator.cli import deploy as _deploy  # noqa: E402,F401
from orchestrator.cli import look as _look  # noqa: E402,F401
from orchestrator.cli import images as _images  # noqa: E402,F401
from orchestrator.cli import release as _release  # noqa: E402,F401
from orchestrator.cli import verify as _verify  # noqa: E402,F401
from orchestrator.cli import history as _history  # noqa: E402,F401
from orchestrator.cli import lock as _lock  # noqa: E402,F401
from orchestrator.cli import prune as _prune  # noqa: E402,F401
from orchestrator.cli import certs as _certs  # noqa: E402,F401
from orchestrator.cli import stubs as _stubs  # noqa: E402,F401


def entry() -> None:
    """The `orch` console script: main(), and then no interpreter teardown."""
    main(end_fast=True)


def _end_now(code: list[int | None]) -> None:
    """The last exit handler: end the process without the interpreter's teardown. With many
    nodes, freeing every SSH connection's objects one by one took ~12 ms a node (1.2 s at
    100 nodes) after the command had printed its result; the kernel frees them at once.
    Only once main() has reached its end (code set): anything else exits the usual way."""
    if code[0] is None:
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code[0])


def main(end_fast: bool = False) -> None:
    """The `orch` entry point: exit codes, errors as one paragraph (and, in JSON mode, a
    final object), secrets masked on stdout and stderr (see cli/output.py). end_fast: the
    process ends once every other exit handler has run (_end_now: registered first, so
    run last); not for a caller that goes on (tests run commands in-process)."""
    try:  # typer >= 0.20 vendors click
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort
    except ImportError:  # pragma: no cover
        from click.exceptions import Abort, ClickException

    from orchestrator.cli import clock, output
    from orchestrator.errors import OrchError

    clock.mark()
    exit_code: list[int | None] = [None]
    if end_fast:
        import atexit

        atexit.register(_end_now, exit_code)
    output.reset()
    # `orch exec` passes the container's output through as it is. (No root option takes
    # a value, so the first word that is not an option names the command.)
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    undo = (lambda: None) if command == "exec" else output.install_redaction()
    try:
        try:
            rv = app(standalone_mode=False)
            code = rv if isinstance(rv, int) else 0
        except OrchError as err:
            output.report_error(err)
            code = err.exit_code
        except ClickException as err:
            code = output.report_usage_error(err)
        except Abort:
            print("orch: aborted", file=sys.stderr)
            code = 1
        except KeyboardInterrupt:
            code = 130
        except Exception as err:  # a bug: say so, with the traceback, and still end with a final object
            output.report_internal(err)
            code = 1
        if code == 130:  # typer turns Ctrl-C into exit 130
            output.report_interrupt()
    finally:
        undo()
    exit_code[0] = code
    sys.exit(code)

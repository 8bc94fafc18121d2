"""The `orch` command line: thin wrappers over the orchestrator library.

Command modules register themselves on `app`; each keeps heavy imports (docker,
paramiko, networkx, jinja2) inside the command functions so `orch --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from orchestrator import __version__

app = typer.Typer(
    name="orch",
    help="Deploy multi-container Compose apps through DEV -> TEST -> PROD over SSH.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"orch {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Deploy multi-container Compose apps through DEV -> TEST -> PROD over SSH."""


# Registration order is the order `orch --help` lists the commands in.
from orchestrator.cli import project as _project  # noqa: E402,F401
from orchestrator.cli import lab as _lab  # noqa: E402,F401
from orchestrator.cli import nodes as _nodes  # noqa: E402,F401
from orchestrator.cli import deploy as _deploy  # noqa: E402,F401
from orchestrator.cli import images as _images  # noqa: E402,F401
from orchestrator.cli import release as _release  # noqa: E402,F401
from orchestrator.cli import verify as _verify  # noqa: E402,F401
from orchestrator.cli import history as _history  # noqa: E402,F401
from orchestrator.cli import lock as _lock  # noqa: E402,F401
from orchestrator.cli import stubs as _stubs  # noqa: E402,F401


def main() -> None:
    from orchestrator.cli.output import report_error
    from orchestrator.errors import OrchError

    try:
        app()
    except OrchError as err:
        report_error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("orch: interrupted", file=sys.stderr)
        sys.exit(130)

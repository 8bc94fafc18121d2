"""The `orch` Typer application and its root options. The command modules register
on `app` (orchestrator/cli/__init__.py imports them in the order `orch --help` lists them)."""

from __future__ import annotations

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
    verbose: bool = typer.Option(
        False, "--verbose", envvar="ORCH_VERBOSE",
        help="Debug lines on stderr (orch's, SSH's, the registry's and Docker's) and the traceback of an error. "
        "Secrets stay masked as everywhere."),
) -> None:
    """Deploy multi-container Compose apps through DEV -> TEST -> PROD over SSH."""
    from orchestrator.cli import output

    output.reset()
    if verbose:
        output.enable_verbose()

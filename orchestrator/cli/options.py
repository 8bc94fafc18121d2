"""Options shared by the commands that load a Compose project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Files = Annotated[
    Optional[list[Path]],
    typer.Option("--file", "-f", metavar="FILE", help="Compose file (repeatable). Default: compose.yaml etc. in the working directory."),
]
ProjectName = Annotated[Optional[str], typer.Option("--project-name", "-p", metavar="NAME", help="Project name.")]
EnvFiles = Annotated[
    Optional[list[Path]], typer.Option("--env-file", metavar="FILE", help="Variables file for interpolation (repeatable). Default: .env.")
]
Profiles = Annotated[Optional[list[str]], typer.Option("--profile", metavar="PROFILE", help="Enable a profile (repeatable); '*' enables all.")]
EnvName = Annotated[Optional[str], typer.Option("--env", "-e", metavar="ENV", help="Environment (environments/ENV.yaml).")]
EnvRequired = Annotated[str, typer.Option("--env", "-e", metavar="ENV", help="Environment (environments/ENV.yaml).")]
EnvironmentsDir = Annotated[
    Optional[Path],
    typer.Option("--environments", metavar="DIR", envvar="ORCH_ENVIRONMENTS", help="Folder of environment files. Default: environments/ next to the first Compose file given "
                 "with -f, else ./environments."),
]


def _output_mode(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> bool:
    """--json / --text when given on the command line; else $ORCH_OUTPUT, else JSON when
    stdout is not a terminal (see cli/output.py). Remembered for the error path."""
    from orchestrator.cli.output import command_from_context, set_json_mode

    explicit = None
    try:
        source = ctx.get_parameter_source(param.name)
    except Exception:  # pragma: no cover
        source = None
    if getattr(source, "name", "") == "COMMANDLINE":
        explicit = bool(value)
    return set_json_mode(explicit, command_from_context(ctx))


Json = Annotated[bool, typer.Option(
    "--json/--text", callback=_output_mode, show_default=False,
    help="--json: JSON lines on stdout, the last one the result (docs/json-output.md); the default when stdout "
    "is not a terminal. --text: text for people even then. Default also from $ORCH_OUTPUT=json|text.")]
LockWait = Annotated[float, typer.Option(
    "--lock-wait", metavar="SECONDS", min=0, envvar="ORCH_LOCK_WAIT",
    help="When another deployer holds the environment's lock, wait up to this long for it (default: fail at once, "
    "exit 4).")]


def command_line() -> str:
    """This command as typed (shown to a second deployer as the lock holder's command)."""
    import os
    import shlex
    import sys

    return " ".join(["orch", *(shlex.quote(a) for a in sys.argv[1:])]) if sys.argv[1:] else os.path.basename(
        sys.argv[0] if sys.argv else "orch")


def project_options(files, project_name, env_files, profiles, env_name=None, environments=None, services=None):
    from orchestrator.app.workspace import ProjectOptions

    return ProjectOptions(
        files=list(files or []),
        project_name=project_name,
        env_files=list(env_files or []),
        profiles=list(profiles or []),
        services=list(services or []),
        env_name=env_name,
        environments_dir=environments,
    )

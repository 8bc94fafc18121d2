"""Generate the command reference (docs/reference/cli.md) from the CLI itself.

Each command's section is its own `--help` text, so the reference says exactly what the
CLI says. A unit test regenerates it and compares, so it cannot drift from the code:
after changing a command, run `python -m orchestrator.cli.reference > docs/reference/cli.md`.
"""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from orchestrator.cli import app

HEADER = """# Command reference

Generated from the CLI by `python -m orchestrator.cli.reference`; a test keeps it in sync.
Exit codes for every command: 0 ok, 1 failed, 2 bad input, 3 gate refused, 4 lock held.
"""


def command_paths() -> list[list[str]]:
    """Every command as its argv path, groups before their subcommands, in help order."""
    paths: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        paths.append(path)
        if hasattr(cmd, "list_commands"):  # a group (typer vendors click; duck-type it)
            ctx = cmd.context_class(cmd, info_name=" ".join(["orch", *path]))
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def render() -> str:
    runner = CliRunner()
    out = [HEADER]
    for path in command_paths():
        result = runner.invoke(app, [*path, "--help"], prog_name="orch",
                               env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
        title = " ".join(["orch", *path])
        out.append(f"## `{title}`\n\n```\n{result.output.rstrip()}\n```\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")

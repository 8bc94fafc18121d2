"""The command reference in docs/ is generated from the CLI and must match it."""

from pathlib import Path

from orchestrator.cli.reference import command_paths, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "reference" / "cli.md"


def test_reference_matches_the_cli():
    assert DOC.read_text() == render(), (
        "docs/reference/cli.md is stale: run `.venv/bin/python -m orchestrator.cli.reference "
        "> docs/reference/cli.md`"
    )


def test_every_command_has_help_text():
    text = render()
    for path in command_paths():
        section = text.split(f"## `{' '.join(['orch', *path])}`", 1)[1].split("## `", 1)[0]
        usage_and_help = section.split("\n\n")
        assert len(usage_and_help) > 2 and usage_and_help[2].strip(), f"orch {' '.join(path)} has no help"

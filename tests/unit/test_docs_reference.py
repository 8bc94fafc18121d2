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
    paths = list(command_paths())
    assert len(paths) >= 15 and ("up",) in [tuple(p) for p in paths], paths
    for path in paths:
        section = text.split(f"## `{' '.join(['orch', *path])}`", 1)[1].split("## `", 1)[0]
        usage_and_help = section.split("\n\n")
        assert len(usage_and_help) > 2 and usage_and_help[2].strip(), f"orch {' '.join(path)} has no help"


def test_doc_pages_named_in_the_code_exist():
    """A docstring or message pointing at docs/X.md must point at a page that exists."""
    import re

    root = DOC.parents[2]
    missing, named = [], set()
    for folder in ("orchestrator", "agent"):
        for path in sorted((root / folder).rglob("*.py")):
            for m in re.finditer(r"\bdocs/[A-Za-z0-9_./-]*?\.md\b", path.read_text()):
                named.add(m.group(0))
                if not (root / m.group(0)).is_file():
                    missing.append(f"{path.relative_to(root)}: {m.group(0)}")
    assert not missing, f"code names doc pages that do not exist: {missing}"
    assert "docs/json-output.md" in named  # the scan does find the pages the code names


def test_environments_option_help_states_the_real_default(tmp_path, monkeypatch):
    """--environments defaults to environments/ beside the first Compose file (-f), not ./environments."""
    import typing

    from orchestrator.cli.options import EnvironmentsDir
    from orchestrator.core.environments import environments_dir
    from orchestrator.app.workspace import ProjectOptions

    monkeypatch.delenv("ORCH_ENVIRONMENTS", raising=False)
    monkeypatch.chdir(tmp_path)
    app = tmp_path / "app"
    opts = ProjectOptions(files=[app / "compose.yaml"])
    assert environments_dir(opts.project_dir()) == app / "environments"  # not ./environments
    help_text = typing.get_args(EnvironmentsDir)[1].help
    assert "Default: ./environments." not in help_text
    assert "environments/ next to the first Compose file" in help_text

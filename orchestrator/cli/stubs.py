"""Names reserved for later work: each says so and exits 1.

Remove a name from RESERVED when its real command module registers it.
"""

from __future__ import annotations

import typer

from orchestrator.cli.root import app

RESERVED: dict[str, str] = {}  # promote and rollback: orchestrator.cli.release


def _make_stub(name: str):
    def stub(ctx: typer.Context) -> None:
        typer.echo(f"orch {name}: not implemented yet", err=True)
        raise typer.Exit(1)

    stub.__doc__ = RESERVED[name] + " (not implemented yet)"
    return stub


for _name in RESERVED:
    app.command(
        _name,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(_make_stub(_name))

"""Names reserved for later work: each says so and exits 1.

Remove a name from RESERVED when its real command module registers it.
"""

from __future__ import annotations

import typer

from orchestrator.cli import app

RESERVED = {
    "up": "Deploy the project to an environment.",
    "down": "Remove the project from an environment.",
    "ps": "List the project's containers across an environment's nodes.",
    "logs": "Show (and follow) logs of services across nodes.",
    "exec": "Run a command in a service's container.",
    "build": "Build the project's images.",
    "push": "Push the project's images to the environment's registry.",
    "plan": "Show what `orch up` would change.",
    "promote": "Promote the live release of one environment to the next.",
    "verify": "Run an environment's verification checks against its live release.",
    "rollback": "Re-apply an earlier release.",
    "history": "List an environment's releases.",
    "lock": "Show or manage an environment's deploy lock.",
}


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

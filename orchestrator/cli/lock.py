"""`orch lock status --env ENV`: who holds the environment's deploy lock."""

from __future__ import annotations

import typer

from orchestrator.cli import app
from orchestrator.cli.options import EnvironmentsDir, EnvRequired, Json
from orchestrator.cli.output import final, print_final, protect_environment

lock_app = typer.Typer(
    name="lock",
    help="Show an environment's deploy lock (taken by up, promote, rollback and down).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(lock_app, name="lock")


@lock_app.command("status")
def status(env: EnvRequired, environments: EnvironmentsDir = None, json: Json = False) -> None:
    """Whether ENV is locked, and by whom (user, host, command, since when, CI job).

    Locks are never stale: one lives exactly as long as the controller holding it is
    connected, so there is nothing to break or clean up.
    """
    from orchestrator.cli.sessions import env_sessions
    from orchestrator.environments import load_environment
    from orchestrator.lock import lock_status

    environment = load_environment(env, environments)
    protect_environment(environment)
    with env_sessions(environment) as (_, sessions):
        state = lock_status(environment.name, sessions)
    if json:
        print_final(final("ok", "lock status", environment=environment.name, **state.to_json()))
        return
    typer.echo(state.describe())
    for n in state.nodes:
        if n.error:
            typer.echo(f"  {n.node}: could not ask: {n.error}", err=True)

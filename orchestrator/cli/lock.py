"""`orch lock status --env ENV`: who holds the environment's deploy lock;
`orch lock break --env ENV --reason TEXT`: make its holder let go (recorded)."""

from __future__ import annotations

from dataclasses import asdict

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import EnvironmentsDir, EnvRequired, Json
from orchestrator.cli.output import failure, final, print_final, protect_environment
from orchestrator.errors import InputError, OrchError

lock_app = typer.Typer(
    name="lock",
    help="Show or break an environment's deploy lock (taken by up, promote, rollback and down).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(lock_app, name="lock")


@lock_app.command("status")
def status(env: EnvRequired, environments: EnvironmentsDir = None, json: Json = False) -> None:
    """Whether ENV is locked, and by whom (user, host, command, since when, CI job).

    Locks do not go stale: one lives as long as the controller holding it is connected
    and heard from; a controller that died, or went silent (network or power lost), loses
    it within 30 seconds.
    """
    from orchestrator.app.lock import lock_status_of
    from orchestrator.core.environments import load_environment

    environment = load_environment(env, environments)
    protect_environment(environment)
    state = lock_status_of(environment)
    if json:
        print_final(final("ok", "lock status", environment=environment.name, **state.to_json()))
        return
    typer.echo(state.describe())
    for n in state.nodes:
        if n.error:
            typer.echo(f"  {n.node}: could not ask: {n.error}", err=True)


class LockNotBroken(OrchError):
    """`orch lock break`: a node's holder could not be made to let go, or not asked (exit 1)."""


@lock_app.command("break")
def break_(env: EnvRequired,
           reason: str = typer.Option("", "--reason", metavar="TEXT",
                                      help="Why (required): recorded in every node's ledger with who broke it."),
           environments: EnvironmentsDir = None, json: Json = False) -> None:
    """Make the holder of ENV's lock let go at once, on every node, and record who and why.

    The holder's agent is stopped as if its controller had gone away: it puts back the
    batch it was working on, then frees the lock (killed after 10 s if it does not). The
    controller that held it fails at its next step. For a controller that is really
    gone, waiting is enough: its lock frees itself 30 s after it went silent.
    """
    from orchestrator.app.lock import break_env_lock
    from orchestrator.core.environments import load_environment

    if not reason.strip():
        raise InputError("orch lock break: --reason is missing.",
                         fix=f'say why, e.g. `orch lock break --env {env} --reason "CI runner lost"`; it is '
                         "recorded in the ledger with your name.")
    environment = load_environment(env, environments)
    protect_environment(environment)
    results = break_env_lock(environment, reason.strip())
    failed = [r.node for r in results if r.error or (r.held and not r.broken)]
    err = None if not failed else LockNotBroken(
        f"the lock of {environment.name} could not be broken on {', '.join(failed)}",
        fix="see each node's error; check the node (`orch nodes check`) and run again",
        details={"nodes": failed})
    broken = [r for r in results if r.broken]
    if json:
        fields = {"environment": environment.name, "env": environment.name, "broken": bool(broken),
                  "nodes": [{"node": r.node, "held": r.held, "broken": r.broken, "killed": r.killed,
                             "holder": asdict(r.holder) if r.holder else None,
                             **({"error": r.error} if r.error else {})} for r in results]}
        print_final(final("ok", "lock break", **fields) if err is None else failure(err, "lock break", **fields))
    else:
        for r in results:
            if r.error:
                typer.echo(f"{r.node}: could not break: {r.error}", err=True)
            elif r.broken:
                who = r.holder.describe() if r.holder else "an unnamed holder"
                how = " (it had to be killed: its in-flight batch was not put back)" if r.killed else ""
                typer.echo(f"{r.node}: broke the lock held by {who}{how}.")
            elif not r.held:
                typer.echo(f"{r.node}: not locked.")
        if not broken and err is None:
            typer.echo(f"environment {environment.name}: not locked; nothing to break (nothing recorded).")
    if err is not None:
        if json:
            typer.echo(f"orch: error: {err.render()}", err=True)
        raise typer.Exit(1)

"""`orch certs --env ENV`: the environment's host names and their certificates;
`orch certs renew --env ENV [HOST...] [--force]`: renew automatic ones now.
Thin: orchestrator.app.certs reads and renews; render.certs_table / renew_summary draw it."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from orchestrator.cli.options import EnvironmentsDir, Json, LockWait, command_line
from orchestrator.cli.output import failure, final, print_final, protect_environment
from orchestrator.cli.root import app
from orchestrator.errors import OrchError

EnvOption = Annotated[Optional[str], typer.Option("--env", "-e", metavar="ENV",
                                                  help="Environment (environments/ENV.yaml).")]

certs_app = typer.Typer(
    name="certs",
    invoke_without_command=True,
    rich_markup_mode=None,
)
app.add_typer(certs_app, name="certs")


class CertificateProblems(OrchError):
    """`orch certs`: a host name's certificate is missing, expiring, differs between nodes,
    or its certificate daemon failed (exit 1)."""


def _environment(env: str | None, environments: Any) -> Any:
    from orchestrator.core.environments import load_environment
    from orchestrator.errors import InputError

    if not env:
        raise InputError("orch certs: --env is missing.", fix="say which environment: orch certs --env prod")
    environment = load_environment(env, environments)
    protect_environment(environment)
    return environment


@certs_app.callback()
def certs(ctx: typer.Context, env: EnvOption = None, environments: EnvironmentsDir = None, json: Json = False) -> None:
    """One row per host name the environment serves over HTTPS: HOST, SOURCE (auto: ACME;
    files: given by the project), ISSUER, NOT AFTER, NODES (each node serving it; `*`: that
    node serves another certificate than the others) and STATUS (ok; expiring in N days;
    missing on NODE; another certificate on NODE; certd error). Reads every node; takes no
    lock. Exit 1 when any row is not ok."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.app.certs import certs_report
    from orchestrator.cli.render import certs_table

    environment = _environment(env, environments)
    report = certs_report(environment)
    bad = [r.host for r in report.rows if r.status != "ok"]
    err = CertificateProblems(f"{len(bad)} host name(s) of {environment.name} need attention: {', '.join(bad)}",
                              fix=f"see STATUS; `orch certs renew --env {environment.name}` retries automatic ones, "
                                  "`orch up` puts certificates from files again",
                              details={"hosts": bad}) if bad else None
    if json:
        doc = report.to_json() | {"env": environment.name}
        print_final(final("ok", "certs", **doc) if err is None else failure(err, "certs", **doc))
    else:
        typer.echo(certs_table(report.rows) if report.rows else
                   f"environment {environment.name} serves no host name over HTTPS.")
    if err is not None:
        if json:
            typer.echo(f"orch: error: {err.render()}", err=True)
        raise typer.Exit(1)


@certs_app.command("renew")
def renew(hosts: Annotated[Optional[list[str]], typer.Argument(metavar="[HOST]...", help="Only these host names.")] = None,
          env: EnvOption = None, environments: EnvironmentsDir = None,
          force: Annotated[bool, typer.Option("--force", help="Renew even certificates that are not due.")] = False,
          lock_wait: LockWait = 0.0, json: Json = False) -> None:
    """Under the deploy lock: the issuing node's certificate daemon obtains the automatic
    certificates that are due (every one named with --force), then every other node fetches
    them; prints old -> new fingerprint per host name. New certificates are served without
    a reload or a deploy."""
    import time

    from orchestrator.app.certs import renew as run_renew
    from orchestrator.cli.deploy import _fail
    from orchestrator.cli.output import make_progress
    from orchestrator.cli.render import renew_summary

    t0 = time.monotonic()
    progress = make_progress(json)
    try:
        environment = _environment(env, environments)
        report = run_renew(environment, list(hosts or []), force, lock_wait=lock_wait, command_line=command_line(),
                           progress=progress)
    except OrchError as err:
        _fail(progress, err, "certs renew", None, t0, environment=env, project=None)
        return
    except KeyboardInterrupt:
        progress.close()
        raise
    from orchestrator.core.progress import JSON_VERSION

    doc = {"version": JSON_VERSION, "status": "ok", "command": "certs renew", **report.to_json(),
           "duration_s": round(time.monotonic() - t0, 3)}
    progress.finish(doc, renew_summary(report))

"""`orch verify --env ENV`: run the environment's checks against its live release."""

from __future__ import annotations

import sys

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import (
    EnvFiles, EnvironmentsDir, EnvRequired, Files, Json, Profiles, ProjectName, project_options,
)
from orchestrator.cli.output import failure, final, print_final, protect, warn


@app.command("verify")
def verify(
    env: EnvRequired,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """Run ENV's verify checks (HTTP per node, commands here) and record the result on the live release.

    The checks run against what the live release recorded (its ports), where its
    services run. The result is what the `verified` promotion gate reads. Exits 1 when
    a check fails (JSON: "status": "failed" with an error of kind VerificationFailed).
    Exits 2 without touching a node when ENV has no verify checks: nothing to verify
    is not a pass.
    """
    from orchestrator.core import verify as V
    from orchestrator.io import checks as C
    from orchestrator.cli.sessions import env_sessions
    from orchestrator.app.pipeline import verification_project
    from orchestrator.io.ledger import ReleaseLedger
    from orchestrator.core.shared_nodes import of_env
    from orchestrator.io.transport import parallel
    from orchestrator.app.workspace import load_workspace

    ws = protect(load_workspace(project_options(file, project_name, env_file, profile, env, environments)))
    project, environment = ws.project, ws.environment
    if not environment.verify.checks:  # before any node: a run of nothing is not a pass
        raise V.nothing_to_verify(environment, V.gated_on(environment))
    with env_sessions(environment) as (_, sessions):
        ledger = ReleaseLedger(sessions, project.name, environment.name, on_warning=warn)
        history = ledger.history(limit=20)
        live = history.live()
        states, errors = parallel(list(sessions.items()),
                                  lambda item: of_env(item[1].call("state", {"project": project.name}),
                                                      environment.name)["containers"],
                                  key=lambda item: item[0])
        for node, err in sorted(errors.items()):
            warn(f"{node}: cannot list containers ({err}); its checks will fail")
        placement = V.placement_from_state(states, project.name)
        checked = verification_project(live, project)  # the live release's ports, not today's files'
        targets = V.plan_checks(environment, checked, placement, live.id if live else None)

        def note(r: V.CheckResult) -> None:
            if not json:
                where = f" @{r.node}" if r.node else ""
                mark = "ok  " if r.ok else "FAIL"
                target = f": {r.target}" if r.target else ""
                typer.echo(f"  {mark} {r.name}{where}{target}" + ("" if r.ok else f": {r.error}"))
                for line in ([] if r.ok else r.output[-10:]):
                    typer.echo(f"         | {line}")

        if live is None:
            warn(f"{environment.name} has no live release of {project.name} in its ledger: the result will not be "
                 "recorded")
        if not json:
            what = str(live.ref) if live else "no recorded release"
            typer.echo(f"verifying {project.name} in {environment.name} ({what}): {len(targets)} check(s)")
        report = C.run_checks(targets, env=environment.name, project=project.name,
                              release=live.id if live else None, cwd=str(project.working_dir), on_result=note)
        recorded = False
        if live is not None and targets:
            V.record_verification(ledger, history, report)
            recorded = True
    error = None
    if not report.ok:
        from orchestrator.app.pipeline import VerificationFailed

        error = VerificationFailed(
            f"verification failed in {environment.name}: {report.summary().split(': ', 1)[-1]}"
            + (f" (recorded on {live.ref}: it is not verified now)" if recorded else ""),
            fix="look at the failed checks above (orch ps, orch logs); fix, deploy, and verify again",
            details={"release": live.id if live else None, "failed": [r.name for r in report.failed]})
    if json:
        fields = {"environment": environment.name, "recorded": recorded, **report.to_json()}
        print_final(failure(error, "verify", **fields) if error else final("ok", "verify", **fields))
    else:
        typer.echo(report.summary() + (f" Recorded on {live.ref}." if recorded else ""))
    if error is not None:
        print(f"orch: error: {error.render()}", file=sys.stderr, flush=True)
        raise typer.Exit(error.exit_code)

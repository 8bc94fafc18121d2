"""`orch verify --env ENV`: run the environment's checks against its live release."""

from __future__ import annotations

import sys
from typing import Any

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
    from orchestrator.app.verify import verify_live
    from orchestrator.app.workspace import load_workspace

    ws = protect(load_workspace(project_options(file, project_name, env_file, profile, env, environments)))

    def start(live: Any, targets: list) -> None:
        if not json:
            what = str(live.ref) if live else "no recorded release"
            typer.echo(f"verifying {ws.project.name} in {ws.environment.name} ({what}): {len(targets)} check(s)")

    def note(r: Any) -> None:
        if not json:
            where = f" @{r.node}" if r.node else ""
            mark = "ok  " if r.ok else "FAIL"
            target = f": {r.target}" if r.target else ""
            typer.echo(f"  {mark} {r.name}{where}{target}" + ("" if r.ok else f": {r.error}"))
            for line in ([] if r.ok else r.output[-10:]):
                typer.echo(f"         | {line}")

    out = verify_live(ws, warn=warn, on_start=start, on_result=note)
    report, recorded, live, error = out.report, out.recorded, out.live, out.error
    if json:
        fields = {"environment": out.environment, "recorded": recorded, **report.to_json()}
        print_final(failure(error, "verify", **fields) if error else final("ok", "verify", **fields))
    else:
        typer.echo(report.summary() + (f" Recorded on {live.ref}." if recorded else ""))
    if error is not None:
        print(f"orch: error: {error.render()}", file=sys.stderr, flush=True)
        raise typer.Exit(error.exit_code)

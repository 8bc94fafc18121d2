"""`orch history --env ENV`: the environment's releases, read from its nodes' ledgers."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import EnvFiles, EnvironmentsDir, EnvRequired, Files, Json, Profiles, ProjectName
from orchestrator.cli.output import final, print_final, warn

Count = Annotated[int, typer.Option("-n", "--number", min=1, max=1000, help="How many releases (newest first).")]


def _when(ts: str) -> str:
    return ts[:19].replace("T", " ") if ts else "-"


def _who(performer: dict) -> str:
    """Short: the name without the e-mail address, and the CI system, actor and job
    ("runner via github-actions (octocat) deploy#123"; --json has it all)."""
    from orchestrator.core.releases import performer_text

    p = dict(performer)
    p["user"] = str(p.get("user") or p.get("login") or "unknown").split(" <")[0]
    ci = p.get("ci") or {}
    if ci:
        p["ci"] = {"system": ci.get("system", "ci"), "actor": ci.get("actor", ""), "job_id": ci_job_text(ci)}
    return performer_text(p)


def ci_job_text(ci: dict) -> str:
    """The CI job in a few characters: "deploy#123" (job name, run or job id)."""
    number = ci.get("job_id") or ci.get("run_id") or ci.get("pipeline_id") or ""
    name = ci.get("job") or ""
    if name and number:
        return f"{name}#{number}"
    return name or (f"#{number}" if number else "")


@app.command("history")
def history(
    env: EnvRequired,
    number: Count = 20,
    file: Files = None,
    project_name: ProjectName = None,
    env_file: EnvFiles = None,
    profile: Profiles = None,
    environments: EnvironmentsDir = None,
    json: Json = False,
) -> None:
    """List the project's releases in ENV, newest first: lineage, status, who, when, what changed.

    WHO is the performer (git user, else the login) and, from CI, the CI system, the
    person who started the pipeline and the job; --json has all of it (performer.ci:
    system, actor, job, run/job/pipeline ids, url, repository, sha).
    """
    from orchestrator.app.history import read_history
    from orchestrator.app.workspace import resolve_project
    from orchestrator.cli.options import project_options
    from orchestrator.cli.output import protect_environment, protect_project
    from orchestrator.cli.render import table
    from orchestrator.core.releases import diff_releases

    target = resolve_project(project_options(file, project_name, env_file, profile, env, environments))
    protect_project(target.project)
    protect_environment(target.environment)
    project, environment = target.name, target.environment
    hist = read_history(environment, project, number + 1, warn)  # one more, to say what the oldest shown changed
    shown = hist.releases[:number]
    older = {r.id: next((o for o in hist.releases if o.id < r.id and o.status != "failed"), None) for r in shown}
    if json:
        print_final(final("ok", "history", project=project, environment=environment.name, env=environment.name,
                          releases=[dict(r.to_json(), changes=diff_releases(older[r.id], r).to_json())
                                    for r in shown],
                          unreachable=hist.errors))
        return
    if not shown:
        typer.echo(f"{project} has no releases in {environment.name} yet.")
        return
    typer.echo(f"{project} in {environment.name}, newest first:")
    rows = []
    for r in shown:
        status = r.status_text
        if r.verified is not None:
            status += ", verified" if r.verified else ", verify FAILED"
        changes = diff_releases(older[r.id], r).summary() if older[r.id] or r.id == 1 else "-"
        if r.status == "failed" and r.reason:
            changes = f"{changes}; failed: {r.reason.splitlines()[0][:80]}"
        rows.append([f"#{r.id}", status, _when(r.created), _who(r.performer), r.lineage_text(), changes])
    typer.echo(table(["ID", "STATUS", "WHEN (UTC)", "WHO", "LINEAGE", "CHANGES"], rows))

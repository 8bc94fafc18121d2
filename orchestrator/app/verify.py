"""`orch verify`: run an environment's checks against its live release and record the
result on it. Read (the ledger and each node's containers) -> plan the checks
(orchestrator.core.verify) -> run them (orchestrator.io.checks) -> record (the ledger)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.wire.messages import StateRequest, StateResult
from orchestrator.core import verify as V
from orchestrator.errors import OrchError


@dataclass
class VerifyOutcome:
    environment: str
    report: Any  # core.verify.VerifyReport
    recorded: bool
    live: Any  # the live Release checked against, or None
    error: OrchError | None  # VerificationFailed when a check failed


def verify_live(workspace: Any, *, warn: Callable[[str], None],
                on_start: Callable[[Any, list], None] = lambda live, targets: None,
                on_result: Callable[[Any], None] | None = None) -> VerifyOutcome:
    """Run the environment's verify checks where the live release runs (its recorded
    ports); record the report on the live release. InputError before any node when the
    environment has no checks: nothing to verify is not a pass."""
    from orchestrator.app.pipeline import VerificationFailed, verification_project
    from orchestrator.core.shared_nodes import of_env
    from orchestrator.io import checks as C
    from orchestrator.io.ledger import ReleaseLedger
    from orchestrator.io.nodes import env_sessions
    from orchestrator.io.transport import parallel

    project, environment = workspace.project, workspace.environment
    if not environment.verify.checks:  # before any node: a run of nothing is not a pass
        raise V.nothing_to_verify(environment, V.gated_on(environment))
    with env_sessions(environment) as (_, sessions):
        ledger = ReleaseLedger(sessions, project.name, environment.name, on_warning=warn)
        history = ledger.history(limit=20)
        live = history.live()
        states, errors = parallel(list(sessions.items()),
                                  lambda item: of_env(StateResult.from_dict(item[1].call(
                                      "state", StateRequest(project.name).to_dict())).to_dict(),
                                                      environment.name)["containers"],
                                  key=lambda item: item[0])
        for node, err in sorted(errors.items()):
            warn(f"{node}: cannot list containers ({err}); its checks will fail")
        placement = V.placement_from_state(states, project.name)
        checked = verification_project(live, project)  # the live release's ports, not today's files'
        targets = V.plan_checks(environment, checked, placement, live.id if live else None)
        if live is None:
            warn(f"{environment.name} has no live release of {project.name} in its ledger: the result will not be "
                 "recorded")
        on_start(live, targets)
        report = C.run_checks(targets, env=environment.name, project=project.name,
                              release=live.id if live else None, cwd=str(project.working_dir), on_result=on_result)
        recorded = False
        if live is not None and targets:
            V.record_verification(ledger, history, report)
            recorded = True
    error = None
    if not report.ok:
        error = VerificationFailed(
            f"verification failed in {environment.name}: {report.summary().split(': ', 1)[-1]}"
            + (f" (recorded on {live.ref}: it is not verified now)" if recorded else ""),
            fix="look at the failed checks above (orch ps, orch logs); fix, deploy, and verify again",
            details={"release": live.id if live else None, "failed": [r.name for r in report.failed]})
    return VerifyOutcome(environment.name, report, recorded, live, error)

"""Readiness, pure: what a rollout waits for before a service's dependents start (from the
dependents' `depends_on` conditions), the service's healthcheck and its restart policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.core.specs.keys import ServiceChecks

# What `apply` waits for, per depends_on condition (agent.operations.WAIT_MODES).
READINESS = {
    "service_started": "running",
    "service_healthy": "healthy",
    "service_completed_successfully": "completed",
}
_STRENGTH = {"running": 0, "healthy": 1, "completed": 2}


def wait_modes(project: Any, names: Sequence[str]) -> dict[str, str]:
    """Per service, the strongest readiness a dependent's `depends_on` asks of it (running,
    healthy or completed); running when none asks."""
    wait = {n: "running" for n in names}
    for n in names:
        for dep, d in project.services[n].dependencies().items():
            if dep in wait:
                mode = READINESS.get(d.condition, "running")
                if _STRENGTH[mode] > _STRENGTH[wait[dep]]:
                    wait[dep] = mode
    return wait


class Readiness(ServiceChecks):
    """The healthcheck and the restart policy of a ServiceBlueprint's container."""

    def _healthcheck(self) -> dict | None:
        hc = self.s.healthcheck
        if hc is None:
            return None
        if hc.disable or (hc.test and hc.test[:1] == ["NONE"]):
            return {"disable": True}
        if not hc.test:
            # Only timings: Compose would apply them to the image's healthcheck; orch cannot.
            self.ignore("healthcheck (timings without test)")
            return None
        if hc.start_interval is not None:
            self.ignore("healthcheck.start_interval")
        out: dict[str, Any] = {"test": list(hc.test)}
        for key in ("interval", "timeout", "start_period"):
            value = getattr(hc, key)
            if value is not None:
                out[key] = float(value)
        if hc.retries is not None:
            out["retries"] = int(hc.retries)
        return out

    def _restart(self) -> str:
        s = self.s
        if s.restart:
            return s.restart
        rp = s.deploy.restart_policy if s.deploy else None
        if rp is None:
            return "no"
        if rp.delay is not None:
            self.ignore("deploy.restart_policy.delay")
        if rp.window is not None:
            self.ignore("deploy.restart_policy.window")
        cond = rp.condition or "any"
        if cond == "none":
            return "no"
        if cond == "on-failure":
            return f"on-failure:{rp.max_attempts}" if rp.max_attempts else "on-failure"
        return "always" if not rp.max_attempts else f"on-failure:{rp.max_attempts}"

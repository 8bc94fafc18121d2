"""Swarm's monitor window, judged (pure): a replaced replica's new container is watched
(`Watched`) until the end of its `update_config.monitor` window, or at least until the
update's last check; `problems` says which of them failed, from the nodes' `state`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Watched:
    """A replaced replica's new container, watched until `until` (update_config.monitor)."""

    node: str
    service: str
    replica: int
    container_id: str
    until: float  # time.monotonic()
    window: float
    one_shot: bool = False  # restart no / on-failure: exited 0, never restarted, is done


def replica_problem(container: Any, one_shot: bool = False) -> str:
    """What is wrong with a watched container as a node reports it ("" when nothing):
    gone, not running (a one-shot that exited 0 ran to completion), unhealthy, or
    restarted since its start."""
    if container is None:
        return "was removed"
    if one_shot and container.state == "exited" and container.exit_code == 0 and container.restart_count == 0:
        return ""
    if container.state != "running":
        return f"is {container.state} (exit code {container.exit_code})"
    if container.health == "unhealthy":
        return "became unhealthy"
    if container.restart_count > 0:
        return f"restarted {container.restart_count} time(s)"
    return ""


def problems(watch: Iterable[Watched], states: Mapping[str, Any]) -> list[tuple[Watched, str]]:
    """(watched, what is wrong) for every watched container a node read in `states` (node
    -> StateResult) reports in trouble, by node then in watch order."""
    out = []
    for node, res in sorted(states.items()):
        by_id = {c.id: c for c in res.containers}
        for w in watch:
            if w.node == node:
                bad = replica_problem(by_id.get(w.container_id), w.one_shot)
                if bad:
                    out.append((w, bad))
    return out


def problem_text(w: Watched, bad: str) -> str:
    return (f"service {w.service} replica {w.replica} on {w.node} {bad} "
            + (f"within {w.window:g}s of its update (update_config.monitor)" if w.window > 0 else
               "before the update ended (its later batches and waves)"))

"""The old containers' stops the agents left in the background, for a paused update.

A start-first batch answers once the new containers are in rotation and the old ones
drained; the agent stops the old ones in the background (agent.stops), so the next batch
does not wait for a stop (a whole stop_grace_period for an app deaf to SIGTERM). A
successful `orch up` does not wait for them either: the release goes live, and `commit`
(agent `discard`) has the node remove a still stopping kept container once its stop
returned. An update paused by a failure (failure_action pause or continue) keeps what
it replaced: `await_stops` asks each node where such a stop was left to finish it, so
the paused update ends with its kept containers stopped. A rollback (`restore`) waits
for them on the node by itself.
"""

from __future__ import annotations

import time
from typing import Any

from agent.wire.stops import AWAIT_STOPS, AwaitStopsRequest, AwaitStopsResult
from orchestrator.io import transport as T

START_FIRST = "start-first"


def stopping_nodes(rollout: Any, journal: Any) -> dict[str, int]:
    """Node -> the latest wave in which a batch there left an old container stopping: a
    replaced replica (the journal: it ran before and has a new container) the plan sent
    start-first."""
    if rollout is None or not journal:
        return {}
    start_first = {(s.service, r.node, r.replica) for s in rollout.services for b in s.batches for r in b.replaces
                   if r.order == START_FIRST}
    out: dict[str, int] = {}
    for e in journal.entries:
        if e.was_running and e.new_id and (e.service, e.node, e.replica) in start_first:
            out[e.node] = max(out.get(e.node, 0), e.wave)
    return out


def await_stops(dep: Any) -> None:
    """Wait for the background stops on every node that has one (best effort: a node that
    cannot answer gets a warning; its agent still ends the stop)."""
    nodes = stopping_nodes(getattr(dep.plan, "rollout", None), dep.journal)
    nodes = {n: w for n, w in nodes.items() if n in dep.nodes}
    if not nodes:
        return
    t0 = time.monotonic()
    dep.progress.phase("stops", f"waiting for the replaced containers to stop on {', '.join(sorted(nodes))}")
    request = AwaitStopsRequest(dep.project.name, dep.environment.name).to_dict()

    def one(node: str) -> AwaitStopsResult:
        wave = nodes[node]
        return AwaitStopsResult.from_dict(dep.nodes[node].call(
            AWAIT_STOPS, request,
            on_event=lambda ev: dep.progress.agent_event(wave, str(ev.get("service") or ""), node, ev)))

    _, errors = T.parallel(sorted(nodes), one, key=lambda n: n)
    for node, err in sorted(errors.items()):
        dep.warn(f"{node}: could not wait for the replaced containers to stop ({getattr(err, 'message', err)}); "
                 "the node's agent still stops them, and the next deploy waits for that")
    dep.timings["stops"] = dep.timings.get("stops", 0.0) + time.monotonic() - t0

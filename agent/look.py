"""`stats`, `top`, `inspect`: looking at the project's containers on this node (read only).

Each takes agent.wire.look's LookRequest and answers with its results. Only the project's
containers (io.orch.* labels) of the environment asked for, never the kept `-prev` ones.
The reads go through ctx.reads (the engine's unix socket, no docker SDK import, when
there is one). A stats sample takes the engine about a second (it reads the CPU twice),
so the containers are sampled in parallel.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

from agent.context import Context
from agent.engine import ContainerInfo
from agent.wire import labels as L
from agent.wire.look import ContainerRef, Inspected, LookRequest, Processes, Sample, mask_inspect, \
    results_to_dict, sample_from_engine
from agent.wire.protocol import AgentError


def _select(ctx: Context, req: LookRequest) -> List[ContainerInfo]:
    found = ctx.reads.containers(L.filters(req.project, req.service or None))
    return [c for c in found
            if not L.is_retired(c.name) and not L.other_env(c.labels, req.env)
            and (req.replica is None or c.replica == req.replica)]


def _ref(c: ContainerInfo) -> ContainerRef:
    return ContainerRef(c.name, c.service, c.replica, c.id, c.state)


def _each(containers: List[ContainerInfo], fn: Callable[[ContainerInfo], Any]) -> List[Any]:
    """fn over the containers in parallel threads, in their order; the first error is raised."""
    out: List[Any] = [None] * len(containers)
    errors: List[BaseException] = []

    def run(i: int, c: ContainerInfo) -> None:
        try:
            out[i] = fn(c)
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(containers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def op_stats(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """One sample per container (the Engine API's stats, stream=false); not running: no figures."""
    req = LookRequest.from_dict(args, "stats")
    reads = ctx.reads

    def one(c: ContainerInfo) -> Sample:
        if c.state != "running":
            return Sample(_ref(c))
        raw = reads.stats(c.id)
        return Sample(_ref(c)) if raw is None else sample_from_engine(_ref(c), raw)

    return results_to_dict(_each(_select(ctx, req), one))


def op_top(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """The processes of each running container (the Engine API's top)."""
    req = LookRequest.from_dict(args, "top")
    reads = ctx.reads
    out = []
    for c in _select(ctx, req):
        if c.state != "running":
            out.append(Processes(_ref(c)))
            continue
        try:
            raw = reads.top(c.id) or {}
        except AgentError:
            if (reads.container(c.id) or c).state == "running":
                raise
            raw = {}  # it stopped meanwhile
        out.append(Processes(_ref(c), [str(t) for t in raw.get("Titles") or []],
                             [[str(x) for x in p] for p in raw.get("Processes") or []]))
    return results_to_dict(out)


def op_inspect(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    """Each container's Engine API inspect document, secrets masked (agent.wire.look.mask_inspect)."""
    req = LookRequest.from_dict(args, "inspect")
    reads = ctx.reads
    out = []
    for c in _select(ctx, req):
        raw = reads.inspect(c.id)
        if raw is not None:  # removed meanwhile
            out.append(Inspected(_ref(c), mask_inspect(raw)))
    return results_to_dict(out)


LOOK_OPERATIONS: Dict[str, Callable[[Context, Dict[str, Any]], Dict[str, Any]]] = {
    "stats": op_stats,
    "top": op_top,
    "inspect": op_inspect,
}

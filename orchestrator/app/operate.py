"""`orch down`, `ps`, `logs`, `exec`: operations on a running project over the node pool
(orchestrator.io.nodes). Each connects (a `N.Connector`, N.ssh_connect by default), reads or
acts, and closes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from agent.wire import messages as M
from orchestrator.io import nodes as N
from orchestrator.io import transport as T
from orchestrator.errors import DeployError, InputError, Problem
from orchestrator.core.plan import Observed
from orchestrator.core.progress import Progress
from orchestrator.app.results import ContainerRow, DownResult, _as_orch_error, _first_line, container_rows

LOG_LINES = 20


def take_down(workspace: Any, remove_volumes: bool = False, progress: Progress | None = None,
              connector: N.Connector | None = None, started: float | None = None) -> DownResult:
    """Remove the project's containers wave by wave in reverse (dependents first), then
    its networks (and volumes with remove_volumes) on every node. started: when the
    command began (time.monotonic()), for a caller that connected and locked first: the
    result's duration_s is the whole command's."""
    from orchestrator.core import graph as graphs

    progress = progress or Progress()
    project, environment = workspace.project, workspace.environment
    t0 = time.monotonic() if started is None else started
    waves = graphs.waves(graphs.build_graph(project))
    names = [n.name for n in environment.nodes]
    if connector is None:  # a given connector (the pipeline's, under the lock) is connected already
        progress.phase("connect", f"connecting to {len(names)} node(s): {', '.join(names)}", nodes=names)
    nodes = (connector or N.ssh_connect)(environment, progress, project.name)
    try:
        frontends: dict = {}
        observed = N.observe_nodes(nodes, project.name, fresh=True, env=environment.name, ingress=frontends)
        routed = any((f.get("route") or {}).get("hosts") for fs in frontends.values() for f in fs.values())
        present = {(c.service, node) for node, cs in observed.items() for c in cs}
        known = {s for w in waves for s in w}
        orphans = sorted({s for s, _ in present if s not in known})
        order = ([orphans] if orphans else []) + list(reversed(waves))
        removed: list[dict] = []
        for i, wave in enumerate(order, 1):
            work = [(s, n) for s in wave for n in names if (s, n) in present]
            if not work:
                continue
            progress.phase("down", f"removing {', '.join(wave)}", wave=i)

            def one(item: tuple[str, str], i: int = i) -> M.RemoveResult:
                service, node = item
                progress.step(i, service, node, "removing")
                t = time.monotonic()
                res = M.RemoveResult.from_dict(nodes[node].call("remove", M.RemoveRequest(
                    project.name, service, env=environment.name).to_dict()))
                progress.step(i, service, node, "removed", seconds=time.monotonic() - t)
                return res

            results, errors = T.parallel(work, one, key=lambda it: f"{it[0]}@{it[1]}")
            if errors:
                name, err = sorted(errors.items())[0]
                raise DeployError(f"orch down: removing {name} failed: {err}", fix="re-run `orch down`")
            for key, res in sorted(results.items()):
                node = key.split("@", 1)[1]
                removed += [dict(r.to_dict(), node=node) for r in res.removed]
        final = M.RemoveRequest(project.name, env=environment.name, remove_volumes=remove_volumes).to_dict()
        finals, errors = T.parallel(list(nodes.values()), lambda n: M.RemoveResult.from_dict(n.call("remove", final)))
        if errors:
            name, err = sorted(errors.items())[0]
            raise DeployError(f"orch down: cleaning up {name} failed: {err}", fix="re-run `orch down`")
        for node, res in finals.items():
            removed += [dict(r.to_dict(), node=node) for r in res.removed]
        if environment.mesh_enabled:
            # The project's networks are gone, and with them its firewall rules and names;
            # a node where no project of the environment is left also drops the mesh.
            _, errors = T.parallel(list(nodes.values()), lambda n: n.call(
                "mesh_leave", {"env": environment.name, "project": project.name}))
            if errors:
                name, err = sorted(errors.items())[0]
                raise DeployError(f"orch down: leaving the mesh on {name} failed: {err}", fix="re-run `orch down`")
        certificates = []
        if routed:  # its routes are gone: certificates and certificate daemons nothing needs any more
            from orchestrator.app.edge import after_down

            certificates = after_down(nodes, environment.name)
        return DownResult(project.name, environment.name, removed,
                          {n: list(r.networks) for n, r in finals.items() if r.networks},
                          {n: list(r.volumes) for n, r in finals.items() if r.volumes},
                          time.monotonic() - t0, certificates)
    finally:
        N.close_nodes(nodes)


def list_containers(workspace: Any, connector: N.Connector | None = None,
                    progress: Progress | None = None, ingress: list | None = None) -> list[ContainerRow]:
    """`orch ps`: one row per container of the project across the environment's nodes.

    `ingress`, if given, gets one dict per (node, service) behind a node's ingress: port,
    frontend status and each server's HAProxy status (agent ingress_status)."""
    environment = workspace.environment
    project = workspace.project.name
    nodes = (connector or N.ssh_connect)(environment, progress or Progress(), project)
    try:
        frontends: dict[str, dict] = {}
        observed = N.observe_nodes(nodes, project, ingress=frontends, env=environment.name)
        if ingress is not None:
            ingress.extend(ingress_rows(nodes, project, frontends, [n.name for n in environment.nodes]))
    finally:
        N.close_nodes(nodes)
    return container_rows(observed, {n.name: n.host for n in environment.nodes})


def ingress_rows(nodes: Mapping[str, Any], project: str, frontends: Mapping[str, Mapping[str, Any]],
                 order: list[str]) -> list[dict]:
    """The project's ingress on each node that has some, as HAProxy sees it now."""
    wanted = [n for n in order if frontends.get(n)]
    answers, errors = T.parallel(wanted, lambda n: nodes[n].call("ingress_status"), key=lambda n: n)
    rows = []
    for node in wanted:
        if node in errors:
            for service in sorted(frontends[node]):
                rows.append({"node": node, "service": service, "port": frontends[node][service]["port"]["published"],
                             "running": False, "status": f"unknown ({_first_line(_as_orch_error(node, errors[node]))})",
                             "servers": []})
            continue
        status = answers[node]
        for f in status.get("frontends") or []:
            if f.get("project") != project:
                continue
            rows.append({"node": node, "service": f["service"], "port": f["port"]["published"],
                         "running": bool(status.get("running")), "status": f["status"],
                         "servers": [{"name": x["name"], "container": x["container"], "status": x["status"],
                                      "state": x["state"], "sessions": x["sessions"]} for x in f["servers"]],
                         "route": f.get("route") if (f.get("route") or {}).get("hosts") else None})
    return sorted(rows, key=lambda r: (r["service"], order.index(r["node"]) if r["node"] in order else 99))


# --------------------------------------------------------------------------- logs, exec


def parse_since(text: str | None, now: float | None = None) -> int | None:
    """--since: a duration back from now (10m, 1h30m, 45s), an ISO time, or epoch seconds."""
    if not text:
        return None
    from orchestrator.core.compose.units import parse_duration

    now = time.time() if now is None else now
    if text.isdigit():
        return int(text)
    try:
        return int(now - parse_duration(text))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.astimezone()
        return int(dt.timestamp())
    except ValueError:
        raise InputError(Problem(f"cannot read --since {text!r}",
                                 fix="write a duration (10m, 2h) or a time (2024-05-01T12:00:00)")) from None


def stream_logs(workspace: Any, services: list[str], follow: bool, tail: Any, since: int | None,
                write: Callable[[dict], None], connector: N.Connector | None = None) -> int:
    """Logs of every replica of `services` (all when empty), as {service, replica, node,
    container, line} dicts to `write`, streamed as they come; with follow until Ctrl-C.
    Returns the number of lines."""

    project, environment = workspace.project, workspace.environment
    nodes = (connector or N.ssh_connect)(environment, Progress(), project.name)
    count = [0]
    lock = threading.Lock()
    try:
        observed = N.observe_nodes(nodes, project.name, env=environment.name)
        wanted = set(services)
        work = sorted({(c.service, node) for node, cs in observed.items() for c in cs
                       if not wanted or c.service in wanted})
        if not work:
            raise DeployError(f"no containers of {', '.join(services) or project.name} on {environment.name}",
                              fix=f"deploy first: orch up --env {environment.name}")
        errors: list[BaseException] = []

        def pump(service: str, node: str) -> None:
            args: dict[str, Any] = {"project": project.name, "service": service, "follow": follow, "tail": tail,
                                    "env": environment.name}
            if since is not None:
                args["since"] = since
            try:
                with nodes[node].stream("logs", args) as st:
                    for ev in st:
                        if ev.get("type") != "log":
                            continue
                        with lock:
                            count[0] += 1
                            write({"service": ev.get("service", service), "replica": ev.get("replica"),
                                   "node": node, "container": ev.get("container"), "line": ev.get("line", "")})
            except BaseException as err:  # noqa: BLE001 - reported after the others
                errors.append(err)

        threads = [threading.Thread(target=pump, args=w, daemon=True) for w in work]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
        if errors:
            raise errors[0]
        return count[0]
    finally:
        N.close_nodes(nodes)


def find_container(observed: Mapping[str, Iterable[Observed]], service: str, replica: int | None) -> Observed:
    candidates = [c for cs in observed.values() for c in cs if c.service == service]
    if replica is not None:
        candidates = [c for c in candidates if c.replica == replica]
    running = sorted((c for c in candidates if c.state == "running"), key=lambda c: (c.replica, c.node))
    if running:
        return running[0]
    what = f"{service}" + (f" replica {replica}" if replica is not None else "")
    if candidates:
        c = candidates[0]
        raise DeployError(f"{what} is not running on {c.node} ({c.describe_state()})",
                          fix="orch up, then try again")
    raise DeployError(f"no container of {what} is deployed", fix="check `orch ps`, or deploy with `orch up`")


def run_exec(workspace: Any, service: str, replica: int | None, cmd: list[str], user: str = "",
             workdir: str = "", out: Callable[[str, str], None] | None = None,
             connector: N.Connector | None = None) -> int:
    """Run cmd in one replica of service; stream its output to out(stream, data); its exit code."""
    import sys

    def default_out(stream: str, data: str) -> None:
        f = sys.stdout if stream == "stdout" else sys.stderr
        f.write(data)
        f.flush()

    out = out or default_out
    project, environment = workspace.project, workspace.environment
    nodes = (connector or N.ssh_connect)(environment, Progress(), project.name)
    try:
        observed = N.observe_nodes(nodes, project.name, env=environment.name)
        target = find_container(observed, service, replica)
        # by name: the container observed for this environment, never another one's
        args: dict[str, Any] = {"project": project.name, "service": service, "replica": target.replica,
                                "container": target.name, "cmd": list(cmd)}
        if user:
            args["user"] = user
        if workdir:
            args["workdir"] = workdir
        with nodes[target.node].stream("exec", args) as st:
            for ev in st:
                if ev.get("type") == "output":
                    out(ev.get("stream", "stdout"), ev.get("data", ""))
            result = st.result or {}
        code = result.get("exit_code")
        return 130 if code is None else int(code)
    finally:
        N.close_nodes(nodes)

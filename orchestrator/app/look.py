"""`orch stats`, `top`, `inspect`, `port`: looking at what runs, on every node at once.

Each opens one agent session per node (orchestrator.io.nodes.env_sessions, all or
nothing), asks every node in parallel (the agent's `stats`, `top`, `inspect` and `state`
operations, agent.wire.look) and returns one row per container, sorted by service,
replica and node, as plain dicts (their JSON). Read only: no lock is taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.wire.look import Inspected, LookRequest, Processes, Sample, parse_results
from orchestrator.errors import DeployError, InputError, OrchError, Problem

MIN_INTERVAL = 1.0  # seconds between the starts of two `orch stats` samples


# --------------------------------------------------------------------------- input


def parse_target(text: str, services: Iterable[str]) -> tuple[str, int | None]:
    """SERVICE or SERVICE/REPLICA, checked against the project's services (bad input: exit 2)."""
    service, slash, replica = text.partition("/")
    known = sorted(services)
    if service not in known:
        raise InputError(Problem(f"no such service: {service}", fix=f"name one of: {', '.join(known)}"))
    if not slash:
        return service, None
    if not replica.isdigit() or int(replica) < 1:
        raise InputError(Problem(f"{text!r}: the replica must be a number from 1",
                                 fix=f"write {service}/1, or {service} for every replica"))
    return service, int(replica)


def check_services(names: Iterable[str], services: Iterable[str]) -> list[str]:
    names, known = list(names), sorted(services)
    unknown = [s for s in names if s not in known]
    if unknown:
        raise InputError(Problem(f"no such service: {', '.join(unknown)}", fix=f"name one of: {', '.join(known)}"))
    return names


# --------------------------------------------------------------------------- asking every node


def _as_transport(name: str, err: BaseException) -> Exception:
    from orchestrator.io import transport as T

    if isinstance(err, T.TransportError):
        return err
    if isinstance(err, OrchError):
        return T.TransportError(err.render(), node=name)
    return T.TransportError(f"{name}: {type(err).__name__}: {err}", node=name)


def ask_all(sessions: Mapping[str, Any], op: str, args: dict, action: str) -> dict[str, dict]:
    """op on every node's session in parallel; {node: answer}; any failure fails the command."""
    from orchestrator.io import transport as T

    answers, errors = T.parallel(list(sessions.items()), lambda item: item[1].call(op, args), key=lambda item: item[0])
    if any(isinstance(e, KeyboardInterrupt) for e in errors.values()):
        raise KeyboardInterrupt  # Ctrl-C while waiting for the answers: not the nodes' fault
    if errors:
        raise T.NodesUnreachable({n: _as_transport(n, e) for n, e in errors.items()}, len(sessions), action=action)
    return answers


def _rows(answers: Mapping[str, dict], kind: Any, hosts: Mapping[str, str], order: list[str]) -> list[dict]:
    rows = []
    for node, answer in answers.items():
        for item in parse_results(answer, kind):
            rows.append(dict(item.to_dict(), node=node, host=hosts.get(node, "")))
    return sorted(rows, key=lambda r: (r["service"], r["replica"], order.index(r["node"]) if r["node"] in order
                                       else len(order), r["name"]))


def _env_parts(workspace: Any) -> tuple[Any, str, dict[str, str], list[str]]:
    environment = workspace.environment
    return (environment, workspace.project.name, {n.name: n.host for n in environment.nodes},
            [n.name for n in environment.nodes])


def _one_service(rows: list[dict], service: str, replica: int | None, env: str) -> list[dict]:
    """The rows of service (and replica); nothing deployed: exit 1, no such replica: exit 2."""
    if not rows:
        raise DeployError(f"no container of {service} is deployed on {env}",
                          fix=f"check `orch ps --env {env}`, or deploy with `orch up --env {env}`")
    if replica is None:
        return rows
    found = [r for r in rows if r["replica"] == replica]
    if not found:
        have = ", ".join(str(r) for r in sorted({r["replica"] for r in rows}))
        raise InputError(Problem(f"{service} has no replica {replica} on {env}",
                                 fix=f"name one of its replicas: {have} ({service}/N)"))
    return found


# --------------------------------------------------------------------------- the use cases


def watch_stats(workspace: Any, services: list[str], on_sample: Callable[[list[dict]], bool],
                stream: bool = True, sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> None:
    """Sample every container of the project (of `services`, all when empty) on every node,
    in parallel, and hand each round's rows to on_sample; with stream, again (at most one
    round per MIN_INTERVAL) until on_sample returns False or Ctrl-C (KeyboardInterrupt)."""
    from orchestrator.io.nodes import env_sessions

    environment, project, hosts, order = _env_parts(workspace)
    wanted = set(check_services(services, workspace.project.services))
    # one service: only its containers are sampled (the agent takes one service or all)
    args = LookRequest(project, environment.name, next(iter(wanted)) if len(wanted) == 1 else "").to_dict()
    with env_sessions(environment) as (_, sessions):
        while True:
            started = clock()
            rows = _rows(ask_all(sessions, "stats", args, "read the stats of"), Sample, hosts, order)
            if on_sample([r for r in rows if not wanted or r["service"] in wanted]) is False or not stream:
                return
            sleep(max(0.0, MIN_INTERVAL - (clock() - started)))


def top(workspace: Any, target: str) -> list[dict]:
    """The processes of every replica of SERVICE (or of SERVICE/REPLICA)."""
    from orchestrator.io.nodes import env_sessions

    environment, project, hosts, order = _env_parts(workspace)
    service, replica = parse_target(target, workspace.project.services)
    with env_sessions(environment) as (_, sessions):
        answers = ask_all(sessions, "top", LookRequest(project, environment.name, service).to_dict(),
                          "read the processes of")
    return _one_service(_rows(answers, Processes, hosts, order), service, replica, environment.name)


def inspect(workspace: Any, target: str, known_secrets: Iterable[str] = ()) -> list[dict]:
    """SERVICE[/REPLICA]'s containers: the engine's inspect document (secrets masked: the
    agent's rule, then `known_secrets` here) and orch's view: release, config hash, image, node."""
    from agent.wire import labels as L
    from agent.wire.look import mask_inspect
    from orchestrator.io.nodes import env_sessions

    environment, project, hosts, order = _env_parts(workspace)
    service, replica = parse_target(target, workspace.project.services)
    with env_sessions(environment) as (_, sessions):
        answers = ask_all(sessions, "inspect", LookRequest(project, environment.name, service).to_dict(),
                          "inspect the containers on")
    rows = _one_service(_rows(answers, Inspected, hosts, order), service, replica, environment.name)
    known = list(known_secrets)
    out = []
    for r in rows:
        engine = mask_inspect(r.pop("engine"), known) if known else r.pop("engine")
        labels = (engine.get("Config") or {}).get("Labels") or {}
        out.append(dict(r, release=labels.get(L.RELEASE, ""), config_hash=labels.get(L.CONFIG_HASH, ""),
                        image=(engine.get("Config") or {}).get("Image", ""), engine=engine))
    return out


def ports(workspace: Any, target: str) -> list[dict]:
    """SERVICE[/REPLICA]'s published ports per replica and node (from each node's `state`)."""
    from orchestrator.core.shared_nodes import of_env
    from orchestrator.io.nodes import env_sessions

    environment, project, hosts, order = _env_parts(workspace)
    service, replica = parse_target(target, workspace.project.services)
    with env_sessions(environment) as (_, sessions):
        answers = ask_all(sessions, "state", {"project": project, "service": service}, "read the state of")
    rows = []
    for node, state in answers.items():
        for c in of_env(state, environment.name)["containers"]:
            if c.get("service") != service or c.get("retired"):
                continue
            rows.append({"service": service, "replica": int(c.get("replica") or 0), "node": node,
                         "host": hosts.get(node, ""), "name": c.get("name", ""), "id": c.get("id", ""),
                         "state": c.get("state", ""),
                         "ports": [{"target": p.get("target"), "protocol": p.get("protocol", "tcp"),
                                    "host_ip": p.get("host_ip", ""), "published": p.get("published")}
                                   for p in c.get("ports") or []]})
    rows.sort(key=lambda r: (r["replica"], order.index(r["node"]) if r["node"] in order else len(order), r["name"]))
    return _one_service(rows, service, replica, environment.name)

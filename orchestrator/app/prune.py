"""`orch prune --env ENV [--dry-run] [--volumes]`: read -> core/prune.py plans -> apply.

Reads every node's `prune_scan` and the environment's ledger (under the deploy lock unless
--dry-run), and, for the registry, every environment's releases that use the same
registry; `core.prune.plan_prune` makes the plan; --dry-run returns it; otherwise each
node gets exactly its part (`prune_remove`), the registry's manifests are deleted by
digest, and the registry's garbage collection runs (the lab's) or is printed (others).
Without a registry, each node's loopback registry (app.transfer) is read through the
transfer's forwards, its manifests no registry-less environment keeps are deleted, and the
agent runs its garbage collection (`transfer_gc`), reporting the bytes freed per node.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

from agent.wire.prune import NodeScan, RemoveResult, ScanRequest
from orchestrator.core import prune as P
from orchestrator.core.progress import Progress
from orchestrator.core.releases import History
from orchestrator.errors import DeployError, InputError, OrchError, Problem

# (environment) -> its History of the project; raises when it cannot be read.
HistoryReader = Callable[[Any, str], History]


def read_history(environment: Any, project: str) -> History:
    """Another environment's releases of the project (its nodes' ledgers, no lock)."""
    from orchestrator.io.ledger import ReleaseLedger
    from orchestrator.io.nodes import env_sessions

    with env_sessions(environment, require_engine=False) as (_, sessions):
        return ReleaseLedger(sessions, project, environment.name).history()


def gc_for(address: str) -> tuple[str, str, Any]:
    """("lab", command, lab spec) when the registry is a lab's on this machine, else
    ("command", what an operator runs, None)."""
    from orchestrator.lab import registry as lab_registry

    import os

    spec = lab_registry.for_address(address)
    if spec is not None:
        command = " ".join(lab_registry.gc_argv(spec.paths.registry_config))
        if os.geteuid() == 0:  # the lab's processes are root's
            return "lab", command, spec
        return "command", f"as root, with the lab registry stopped: {command}; then `orch lab up`", None
    return "command", ("docker-registry garbage-collect /etc/docker/registry/config.yml  "
                       "(on the registry's host, with the registry stopped or read-only)"), None


def _registry_plan(workspace: Any, history: History, scans: Mapping[str, NodeScan], keep: int,
                   reader: HistoryReader, environ: Mapping[str, str] | None, client: Any,
                   progress: Progress) -> P.RegistryPrune | None:
    from orchestrator.core.environments import load_all

    env, project = workspace.environment, workspace.project.name
    address = env.registry.address if env.registry is not None else ""
    if not address:
        return None
    histories = {env.name: history}
    try:
        others = {n: e for n, e in load_all(env.file.parent).items()
                  if n != env.name and e.registry is not None and e.registry.address == address}
    except OrchError as err:
        return P.RegistryPrune(address, skipped=f"the other environments could not be loaded: {err}")
    for name, other in sorted(others.items()):
        progress.phase("scan", f"reading the releases of {name} (it shares the registry {address})")
        try:
            histories[name] = reader(other, project)
        except Exception as err:  # noqa: BLE001 - any failure leaves the registry alone
            return P.RegistryPrune(address, skipped=f"the releases of {name} could not be read "
                                   f"({getattr(err, 'message', err)}); nothing is deleted from the registry")
    candidates, _ = P.registry_candidates(histories, address, project, keep)
    if client is None:
        from orchestrator.io.images import registry_client

        client = registry_client(env, environ=environ)
    try:
        present = [(repo, digest) for repo, digest in candidates if client.manifest_digest(repo, digest) is not None]
    except OrchError as err:  # the nodes are still pruned
        return P.RegistryPrune(address, skipped=f"the registry could not be read ({err.message}); "
                               "nothing is deleted from it")
    in_use = {ref for s in scans.values() for i in s.images if i.users for ref in i.refs}
    kind, command, _ = gc_for(address)
    return P.plan_registry(address, candidates, present, in_use, gc=kind, gc_command=command)


def prune(workspace: Any, *, dry_run: bool = False, volumes: bool = False, keep: int = 5, lock_wait: float = 0.0,
          command_line: str = "", progress: Progress | None = None, seams: Any = None,
          history_reader: HistoryReader | None = None, registry: Any = None,
          collect: Callable[[Any], tuple[int, int]] | None = None) -> P.PruneOutcome:
    from orchestrator.app.pipeline import EnvConnection, Seams
    from orchestrator.io import transport as T
    from orchestrator.io.ledger import detect_performer

    progress = progress or Progress()
    seams = seams or Seams()
    env, project = workspace.environment, workspace.project.name
    if env is None:
        raise InputError(Problem("no environment given", fix="pass --env ENV"))
    conn = EnvConnection(env, project, progress, seams)
    try:
        nodes = conn.connect()
        if not dry_run:
            performer = seams.performer or detect_performer(environ=seams.environ)
            conn.lock(command_line or f"orch prune --env {env.name}", lock_wait, performer)
        history = conn.ledger().history()
        progress.phase("scan", f"reading what {project} holds on {len(nodes)} node(s)")
        req = ScanRequest(project, env.name).to_dict()
        answers, errors = T.parallel(list(nodes.items()), lambda it: it[1].call("prune_scan", req),
                                     key=lambda it: it[0])
        if errors:
            name, err = sorted(errors.items())[0]
            raise DeployError(f"orch prune: reading {name} failed: {getattr(err, 'message', err)}",
                              fix="re-run `orch prune`")
        scans = {node: NodeScan.parse(a) for node, a in answers.items()}
        reg = _registry_plan(workspace, history, scans, keep, history_reader or read_history, seams.environ,
                             registry, progress)
        with ExitStack() as stack:
            regs, node_regs, notes = _node_registry_plan(workspace, history, scans, keep,
                                                         history_reader or read_history, nodes, dry_run, stack,
                                                         progress)
            plan = P.plan_prune(project, env.name, scans, history, keep=keep, volumes=volumes, registry=reg,
                                notes=notes, node_registries=node_regs)
            outcome = P.PruneOutcome(plan, dry_run=dry_run)
            if dry_run:
                return outcome
            _apply_nodes(plan, nodes, outcome, progress)
            _apply_registry(workspace, plan, outcome, seams.environ, registry, collect, progress)  # still locked
            _apply_node_registries(plan, nodes, regs, outcome, progress)
    finally:
        conn.close()
    return outcome


def _node_registry_plan(workspace: Any, history: History, scans: Mapping[str, NodeScan], keep: int,
                        reader: HistoryReader, nodes: Mapping[str, Any], dry_run: bool, stack: ExitStack,
                        progress: Progress) -> tuple[dict[str, Any], list, list[str]]:
    """Without a registry: ({node: its loopback registry's client}, the plan's
    node_registries, notes). The kept rule spans every registry-less environment in the
    environments folder (their releases share the names 127.0.0.1:PORT/<project>/...)."""
    from agent.wire.transfer import LOOPBACK_REGISTRY
    from orchestrator.app.transfer import node_registries, registryless
    from orchestrator.core.environments import load_all

    env, project = workspace.environment, workspace.project.name
    if not registryless(env):
        return {}, [], []
    histories = {env.name: history}
    try:
        others = {n: e for n, e in load_all(env.file.parent).items() if n != env.name and registryless(e)}
    except OrchError as err:
        return {}, [], [f"the nodes' loopback registries are left alone: the other environments could not be "
                        f"loaded ({err})"]
    for name, other in sorted(others.items()):
        progress.phase("scan", f"reading the releases of {name} (it has no registry either)")
        try:
            histories[name] = reader(other, project)
        except Exception as err:  # noqa: BLE001 - any failure leaves the loopback registries alone
            return {}, [], [f"the nodes' loopback registries are left alone: the releases of {name} could not be "
                            f"read ({getattr(err, 'message', err)})"]
    candidates, _ = P.registry_candidates(histories, LOOPBACK_REGISTRY, project, keep)
    if not candidates:
        return {}, [], []
    # --dry-run starts nothing: a registry that is not running is not read (and has nothing to say).
    regs, _ = stack.enter_context(node_registries(nodes, start=not dry_run))
    notes = [f"{n}: its loopback registry is not running; not read" for n in sorted(set(nodes) - set(regs))]
    present = {n: [key for key in candidates if c.manifest_digest(*key) is not None] for n, c in sorted(regs.items())}
    return regs, list(P.plan_node_registries(candidates, present, scans)), notes


def _apply_node_registries(plan: P.PrunePlan, nodes: Mapping[str, Any], regs: Mapping[str, Any],
                           outcome: P.PruneOutcome, progress: Progress) -> None:
    from agent.wire.transfer import TRANSFER_GC, GcResult
    from orchestrator.io import transport as T

    work = [r for r in plan.node_registries if r.manifests]
    if not work:
        return
    for r in work:
        progress.phase("registry", f"{r.node}: deleting {len(r.manifests)} manifest(s) from its loopback registry")
        for m in r.manifests:
            try:
                regs[r.node].delete_manifest(m.repository, m.digest)
                outcome.node_registry_deleted.setdefault(r.node, []).append(m.ref)
            except OrchError as err:
                outcome.registry_errors.append(f"{r.node}: {m.ref}: {err.message}")
    done = [r.node for r in work if outcome.node_registry_deleted.get(r.node)]
    if not done:
        return
    progress.phase("registry", f"garbage collection of the loopback registries on {', '.join(done)} "
                   "(read-only meanwhile)")
    answers, errors = T.parallel(done, lambda n: GcResult.from_dict(nodes[n].call(TRANSFER_GC, {})),
                                 key=lambda n: n)
    for node, res in sorted(answers.items()):
        outcome.node_registry_gc[node] = res
        progress.event("registry.gc", node=node, seconds=res.seconds, freed=res.freed)
    for node, err in sorted(errors.items()):
        outcome.registry_errors.append(f"{node}: garbage collection failed: {getattr(err, 'message', err)}")


def _apply_nodes(plan: P.PrunePlan, nodes: Mapping[str, Any], outcome: P.PruneOutcome, progress: Progress) -> None:
    from orchestrator.io import transport as T

    work = [n for n in plan.nodes if n.items]
    if not work:
        return
    progress.phase("prune", f"removing on {', '.join(n.node for n in work)}")
    answers, errors = T.parallel(work, lambda n: nodes[n.node].call(
        "prune_remove", n.request(plan.project, plan.env).to_dict()), key=lambda n: n.node)
    for node, a in sorted(answers.items()):
        res = RemoveResult.parse(a)
        outcome.removed[node] = {k: list(v) for k, v in res.removed.items()}
        if res.refused:
            outcome.refused[node] = [{"kind": r.kind, "name": r.name, "reason": r.reason} for r in res.refused]
        outcome.node_bytes[node] = res.reclaimed
    if errors:
        name, err = sorted(errors.items())[0]
        raise DeployError(f"orch prune: removing on {name} failed: {getattr(err, 'message', err)}",
                          fix="re-run `orch prune`")


def _apply_registry(workspace: Any, plan: P.PrunePlan, outcome: P.PruneOutcome, environ: Mapping[str, str] | None,
                    client: Any, collect: Callable[[Any], tuple[int, int]] | None, progress: Progress) -> None:
    reg = plan.registry
    if reg is None or not reg.manifests:
        return
    if client is None:
        from orchestrator.io.images import registry_client

        client = registry_client(workspace.environment, environ=environ)
    progress.phase("registry", f"deleting {len(reg.manifests)} manifest(s) from {reg.address}")
    for m in reg.manifests:
        try:
            client.delete_manifest(m.repository, m.digest)
            outcome.deleted.append(m.ref)
        except OrchError as err:
            outcome.registry_errors.append(f"{m.ref}: {err.message}")
    if not outcome.deleted or reg.gc != "lab":
        return
    t0 = time.monotonic()
    progress.phase("registry", "garbage collection of the lab registry (stopped meanwhile)")
    if collect is None:
        from orchestrator.lab import registry as lab_registry

        spec = gc_for(reg.address)[2]
        before, after = lab_registry.garbage_collect(spec)
    else:
        before, after = collect(reg)
    outcome.gc_ran = True
    outcome.registry_bytes = max(0, before - after)
    progress.event("registry.gc", seconds=round(time.monotonic() - t0, 3), freed=outcome.registry_bytes)

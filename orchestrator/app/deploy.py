"""`orch up` and `orch plan`: the Deployment engine. Planning is pure (orchestrator.core.specs,
orchestrator.core.plan, orchestrator.core.rollout); this module connects (orchestrator.io.nodes),
observes and applies.

A `Deployment` is one `orch up`, in clearly separated steps:

    prepare()   load nothing new: validate the project for the environment and compile
                every service's spec (InputError here, before any connection).
                Pinned image references (digests from the build / resolve step) come
                in through DeployOptions.images: they are part of the config hash.
    connect()   one SSH connection and one agent session per node, all or nothing
                (an unreachable node fails before anything is touched)
                -> hooks["connected"]        (the deploy lock goes here; observe()
                                              then reads the state again, under it)
    observe()   every node's `state`, in parallel, one call each
    make_plan() place (stable: existing replicas stay), build per-node specs, plan,
                with the rolling update as data (plan.rollout: core/rollout_plan.py)
                -> hooks["before_apply"]     (last checks before anything changes)
    apply()     executes plan.rollout: wave by wave; in a wave every service rolls on
                its own, in parallel: its batches in order, each batch on a node one
                agent `rollout` (the agent waits for readiness); then `retire` of
                moved replicas and the update_config monitor window. A failure the
                service's policy does not tolerate puts the release back (`restore`)
                or pauses.
                Host routes' certificates (orchestrator.app.edge): files put before the
                rollout, the certificate daemon configured and asked after it.
    cleanup()   remove moved / scaled-down replicas and, if asked, orphans
    commit()    drop the previous release's kept containers (the release pipeline
                calls it once the ledger has the release live)

The connections are reused by every step and closed at the end. A no-op `up` makes
exactly one `state` call per node and no `rollout` call. ps/logs/exec/down live in
orchestrator.app.operate, the results in orchestrator.app.results.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agent.wire import messages as M
from agent.wire.ingress import IngressSettings
from agent.wire.spec import stays_exited
from orchestrator.io import nodes as N
from orchestrator.io import transport as T
from orchestrator.errors import DeployError, InputError, OrchError, Problem
from orchestrator.core import monitor as MON
from orchestrator.core.plan import Observed, Plan, existing_slots, make_plan
from orchestrator.core.progress import DONE, FAILED, RUNNING, SKIPPED, Progress
from orchestrator.app.edge import Edge
from orchestrator.app.results import (DeployResult, _as_orch_error, _first_line, container_rows, deploy_error,
                                      discard_warning, published_addresses)
from orchestrator.core.shared_nodes import refuse_other_envs, refuse_taken_ports
from orchestrator.app.stops import await_stops

_sleep = time.sleep  # update_config delay and monitor waits (unit tests replace it)


@dataclass
class DeployOptions:
    services: list[str] = field(default_factory=list)  # only these (and their dependencies)
    dry_run: bool = False
    remove_orphans: bool = False
    images: dict[str, str] = field(default_factory=dict)  # service -> pinned reference (build step)
    completion_timeout: float = 600.0  # for one-shot services a dependent waits for
    # The id of the release being deployed, on every spec (the io.orch.release label); the
    # release pipeline numbers it from the ledger before the deployment starts.
    release: str = ""
    # Drop the previous release's kept containers at the end of run(). The release
    # pipeline says False and calls Deployment.commit() once the ledger has it live.
    commit: bool = True


def _settings(args: dict | None) -> IngressSettings | None:
    """The ingress arguments of a rollout, restore or retire, typed (and checked)."""
    return IngressSettings.parse(args)


# --------------------------------------------------------------------------- up


@dataclass
class StepFailure:
    step: Any
    error: OrchError


class Deployment:
    """One `orch up` (or `orch plan`): see the module docstring for the steps."""

    def __init__(self, workspace: Any, options: DeployOptions | None = None, progress: Progress | None = None,
                 connector: N.Connector | None = None):
        if workspace.environment is None:
            raise InputError(Problem("no environment given", fix="pass --env ENV"))
        self.workspace = workspace
        self.project = workspace.project
        self.environment = workspace.environment
        self.options = options or DeployOptions()
        self.progress = progress or Progress()
        self.connector = connector or N.ssh_connect
        self.hooks: dict[str, list[Callable[["Deployment"], None]]] = {
            "connected": [], "before_apply": []}
        self.nodes: dict[str, Any] = {}
        self.blueprint: Any = None
        self.observed: dict[str, list[Observed]] = {}
        self.units: dict = {}
        self.taken: dict = {}  # node -> host ports other projects hold there (observe)
        self.plan: Plan | None = None
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []
        self.degraded: list[str] = []
        self.auths: dict[str, dict] = {}  # service -> pull credentials of its image's own registry
        self.ingress: dict[str, dict] = {}  # node -> the project's ingress frontends there (state)
        self.meshes: dict[str, dict] = {}  # node -> its part of the environment's mesh (state)
        self.mesh_layout: Any = None  # orchestrator.core.mesh.MeshLayout when the mesh is on
        self.journal: Any = None  # orchestrator.core.rollout.Journal of what apply() replaced
        self.edge = Edge(self)  # host routes' certificates
        self._journal_lock = threading.Lock()
        self._watch: list[MON.Watched] = []  # replaced replicas inside their monitor window
        self._settled: dict[str, Any] | None = None  # every node's `state` once the last wave was checked
        self._t0 = time.monotonic()

    # -- steps --------------------------------------------------------------------------

    def _timed(self, name: str, t0: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - t0

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            self.progress.warning(text)

    def prepare(self) -> None:
        from orchestrator.core.specs import compile_blueprint
        from orchestrator.io.files import local_sources

        t0 = time.monotonic()
        for p in getattr(self.project, "warnings", []):
            self.warn(p.render())
        self.blueprint = compile_blueprint(self.project, self.environment, self.options.services,
                                           self.options.images, sources=local_sources())
        for w in self.blueprint.warnings:
            self.warn(w)
        self.auths = self._registry_auths()
        self._timed("prepare", t0)

    def _registry_auths(self) -> dict[str, dict]:
        """Per service, the credentials of the registry its image is pulled from (`registry:`
        or a `registries:` entry), if any: a node's engine sends a pull's credentials to the
        image's registry, whichever registry they belong to."""
        from orchestrator.io.images import pull_auth

        cache: dict[str, Any] = {}
        out = {}
        for name, bp in self.blueprint.services.items():
            auth = pull_auth(self.environment, bp.image, cache=cache)
            if auth:
                out[name] = auth
        return out

    def connect(self) -> None:
        t0 = time.monotonic()
        names = [n.name for n in self.environment.nodes]
        self.progress.phase("connect", f"connecting to {len(names)} node(s): {', '.join(names)}", nodes=names)
        self.nodes = self.connector(self.environment, self.progress, self.project.name)
        self._timed("connect", t0)
        self._run_hooks("connected")

    def observe(self) -> None:
        t0 = time.monotonic()
        self.progress.phase("observe", f"reading the state of {len(self.nodes)} node(s)")
        # After a "connected" hook (the deploy lock) the state read with hello may be stale.
        owners: dict = {}
        self.observed = N.observe_nodes(self.nodes, self.project.name, fresh=bool(self.hooks["connected"]),
                                      ingress=self.ingress, env=self.environment.name, owners=owners,
                                      taken=self.taken,
                                      meshes=self.meshes if self.environment.mesh_enabled else None)
        refuse_other_envs(self.environment, self.project.name, owners)
        self.edge.observe()
        self._timed("observe", t0)

    def make_plan(self) -> Plan:
        from orchestrator.core.specs import node_infos

        t0 = time.monotonic()
        order = [n.name for n in self.environment.nodes]
        slots = self.blueprint.place(node_infos(self.environment), existing_slots(self.observed))
        mesh_actions = []
        if self.environment.mesh_enabled:
            from orchestrator.app.mesh import layout, mesh_actions as plan_mesh

            from orchestrator.core.mesh import refuse_unmeshed

            refuse_unmeshed(self.project.name, self.environment.name, self.meshes)
            self.mesh_layout = layout(self.environment, self.project.name, self.blueprint, self.meshes)
            mesh_actions = plan_mesh(self.mesh_layout, self.environment.nodes, self.meshes, self.environment.name)
        self.units, warnings = self.blueprint.units(slots, order, mesh=self.mesh_layout, release=self.options.release)
        for w in warnings:
            self.warn(w)
        refuse_taken_ports(self.project, self.blueprint, self.units, self.taken)
        self.plan = make_plan(self.project.name, self.environment.name, self.blueprint.waves, self.units,
                              self.observed, self.blueprint.project_services, self.options.remove_orphans, order,
                              ingress=self.ingress)
        self.plan.mesh = mesh_actions
        self.plan.edge = self.edge.make_plan(self.units)
        for w in self.plan.warnings:
            self.warn(w)
        self.progress.show_plan(self.plan)
        self._timed("plan", t0)
        return self.plan

    def apply(self) -> None:
        """Wave by wave; in a wave every service rolls on its own, in parallel: its changed
        replicas in batches across its nodes (orchestrator.core.rollout), each batch on a node
        one agent `rollout`. Then the monitor window. A failure the service's update
        policy does not tolerate ends in _failed (the whole release put back, or paused)."""
        from orchestrator.core.rollout import Journal

        t0 = time.monotonic()
        plan = self.plan
        assert plan is not None
        self._run_hooks("before_apply")
        if plan.mesh:
            from orchestrator.app.mesh import apply_mesh

            self.progress.phase("mesh", f"mesh: {', '.join(m.node for m in plan.mesh)}")
            apply_mesh(self.environment, self.nodes, self.mesh_layout, self.meshes, plan.mesh)
        self.edge.put_certs()
        if plan.rollout is None:  # a Plan not made by core.plan.make_plan
            from orchestrator.core.rollout_plan import plan_rollout

            plan.rollout = plan_rollout(plan, self.observed)
        self.journal = Journal()
        for node, count in _parallel_applies(plan).items():
            prewarm = getattr(self.nodes.get(node), "prewarm", None)
            if prewarm is not None and count > 1:
                prewarm(count, self.project.name)
        try:
            for i, wave in enumerate(plan.waves, 1):
                services = [s for s in wave if any(st.needs_apply for st in plan.wave_steps(i) if st.service == s)]
                if not services:
                    continue
                self.progress.phase("apply", f"wave {i}/{len(plan.waves)}: {', '.join(wave)}", wave=i)
                if self.mesh_layout is not None:
                    from orchestrator.app.mesh import refresh_names

                    for warning in refresh_names(self.environment.name, self.nodes,
                                                 [st for st in plan.wave_steps(i) if st.service in services],
                                                 self.units):
                        self.progress.warning(warning)
                pool = ThreadPoolExecutor(max_workers=len(services), thread_name_prefix="orch-roll")
                try:
                    futures = {name: pool.submit(self._roll_service, i, name,
                                                 [st for st in plan.wave_steps(i) if st.service == name])
                               for name in services}
                    failures = {name: f.result() for name, f in futures.items()}
                except BaseException:
                    # Ctrl-C (or a bug): close the sessions so each agent sees EOF, cancels its
                    # rollout and puts its batch back. Re-running converges.
                    self.close()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                pool.shutdown(wait=True)
                fatal: list[StepFailure] = []
                for name, fails in failures.items():
                    if not fails:
                        continue
                    if self._optional(name):
                        self.degraded.append(name)
                        self.warn(f"{name} failed on {fails[0].step.node}, but every dependent marks it "
                                  f"required: false; going on. {fails[0].error.message.splitlines()[0]}")
                        continue
                    fatal.extend(fails)
                if fatal:
                    for st in plan.steps:
                        if st.wave > i and st.needs_apply:
                            self.progress.step(st.wave, st.service, st.node, SKIPPED)
                    later = [s for w in plan.waves[i:] for s in w]
                    raise self._failed(fatal, later)
            self._retire_moved()
            self._monitor()
            self.edge.run_certd()
            self.edge.retire()
            # The old containers' background stops are not waited for: out of rotation and
            # drained, they end on their own, and `commit` (discard) hands a still stopping
            # one to the node, which removes it once stopped (app/stops.py).
        finally:
            self._timed("apply", t0)

    def _policy(self, service: str) -> Any:
        from orchestrator.core.rollout import UpdatePolicy

        bp = self.blueprint.services.get(service) if self.blueprint is not None else None
        return getattr(bp, "policy", None) or UpdatePolicy()

    def _ingress_args(self, service: str) -> dict | None:
        bp = self.blueprint.services.get(service) if self.blueprint is not None else None
        ingress = getattr(bp, "ingress", None)
        return ingress.agent_args() if ingress is not None else None

    def _rollback_ingress_args(self, node: str, service: str) -> dict | None:
        """The ingress a rollback puts back on node: the frontend the service had there
        before this release (port and health check, as observed), else this release's
        (restore drops that one when the kept containers publish the port themselves)."""
        now = self._ingress_args(service)
        before = (self.ingress.get(node) or {}).get(service)
        if not before or not before.get("port"):
            return now
        args = {"port": dict(before["port"]), "health": dict(before.get("health") or {})}
        route = before.get("route") or {}
        if route.get("hosts"):  # what the node reports, less its certificates' facts
            args["route"] = {k: v for k, v in route.items() if k != "certs"}
        if now is not None:
            args["drain_timeout"] = now["drain_timeout"]
        return args

    def _roll_service(self, wave: int, service: str, steps: list[Any]) -> list[StepFailure]:
        """One service's rolling update, as the plan has it (orchestrator.core.rollout_plan):
        its batches, then the nodes to settle, then the replicas to retire. Its failures ([]
        when it went through, or when the policy tolerated them)."""
        from orchestrator.core.rollout import too_many_failures
        from orchestrator.core.rollout_plan import service_rollout

        rollout = self.plan.rollout.service(service) if self.plan is not None else None
        if rollout is None:  # the plan has none for it: planned now, the same way
            rollout = service_rollout(wave, service, steps, self.observed)
        policy = rollout.policy
        by_step = {st.node: st for st in steps}
        failures: list[StepFailure] = []
        failed = replaced = 0
        exceeded = False
        for batch in rollout.batches:
            k = batch.number
            if batch.delay > 0:
                self.progress.event("delay", service=service, seconds=batch.delay)
                _sleep(batch.delay)
            groups = batch.by_node()
            orders = {(r.node, r.replica): r.order for r in batch.replaces}  # the plan's, sent as they are
            self.progress.event("batch", service=service, batch=k, batches=len(rollout.batches), wave=wave,
                                replicas=[{"node": r.node, "replica": r.replica} for r in batch.replaces])
            results, errors = T.parallel(list(groups.items()), lambda item: self._rollout(
                wave, by_step[item[0]], [M.ReplicaOrder(r, orders[(item[0], r)]) for r in item[1]], k, policy),
                key=lambda item: item[0])
            for node, res in sorted(results.items()):
                self._journal_add(service, node, wave, [r.to_dict() for r in res.replaced], rollout.monitor,
                                  stays_exited(by_step[node].unit.spec["container"].get("restart") or "no"))
            replaced += len(batch.replaces)
            for node, err in sorted(errors.items()):
                failures.append(StepFailure(by_step[node], _as_orch_error(node, err)))
                failed += len(groups[node])
            if errors and too_many_failures(failed, replaced, policy.max_failure_ratio):
                exceeded = True
                if policy.failure_action != "continue":
                    return failures
        if failures and not exceeded:
            self.warn(f"{service}: {failed} of {replaced} replica(s) failed to update and stayed on the previous "
                      f"release (within max_failure_ratio {policy.max_failure_ratio:g}): "
                      f"{failures[0].error.message.splitlines()[0]}")
            failures = []
        # Nodes where nothing was replaced but a kept container must be waited for, or the
        # ingress is not what the containers need.
        for settle in rollout.settle:
            st = by_step[settle.node]
            try:
                self._rollout(wave, st, [], 0, policy)
            except BaseException as err:  # noqa: BLE001 - reported like a failed batch
                failures.append(StepFailure(st, _as_orch_error(st.node, err)))
        if failures:
            return failures
        # Replicas no longer wanted on a node (scaled down, moved): stopped and kept.
        for retire in rollout.retire:
            try:
                self._retire(wave, service, retire.node, list(retire.replicas))
            except BaseException as err:  # noqa: BLE001
                failures.append(StepFailure(by_step[retire.node], _as_orch_error(retire.node, err)))
        return failures

    def _rollout(self, wave: int, step: Any, replicas: list[M.ReplicaOrder], batch: int,
                 policy: Any) -> M.RolloutResult:
        unit = step.unit
        t0 = time.monotonic()
        numbers = {r.replica for r in replicas}
        what = ", ".join(f"{a.kind} {a.replica}" for a in step.changes if a.replica in numbers)
        detail = (f"batch {batch}: {what}" if batch else "") or ("waiting" if step.wait_only else "ingress")
        self.progress.step(step.wave, step.service, step.node, RUNNING, detail=detail)
        from orchestrator.core.rollout import readiness

        min_running, min_healthy = readiness(policy)
        request = M.RolloutRequest(
            spec=unit.spec, replicas=tuple(replicas), wait=unit.wait, min_running=min_running,
            timeout=self.options.completion_timeout, min_healthy=min_healthy,
            deadline=policy.healthy_deadline, batch=batch, auth=self.auths.get(step.service) or None,
            ingress=_settings(self._ingress_args(step.service)))
        try:
            result = M.RolloutResult.from_dict(self.nodes[step.node].call(
                "rollout", request.to_dict(),
                on_event=lambda ev: self.progress.agent_event(step.wave, step.service, step.node, ev)))
        except BaseException as err:
            if isinstance(err, OrchError):
                self.progress.step(step.wave, step.service, step.node, FAILED,
                                   detail=_first_line(err).removeprefix(f"{step.node}: "),
                                   seconds=time.monotonic() - t0)
            raise
        actions = [f"{c.action} {c.replica}" for c in result.containers if c.action != "unchanged"]
        self.progress.step(step.wave, step.service, step.node, DONE, detail=", ".join(actions) or "ready",
                           seconds=time.monotonic() - t0)
        return result

    def _journal_add(self, service: str, node: str, wave: int, records: list[dict], monitor: float,
                     one_shot: bool = False) -> None:
        with self._journal_lock:
            self.journal.add(service, node, wave, records)
            now = time.monotonic()
            for rec in records:
                # Watched even without a window (monitor 0, orch's default): checked once
                # when the last batch is through, so a replica that died meanwhile fails the update.
                if rec.get("old") is not None and rec.get("new"):
                    self._watch.append(MON.Watched(node, service, rec["replica"], rec["new"]["id"],
                                                now + monitor, monitor, one_shot))

    def _retire(self, wave: int, service: str, node: str, replicas: list[int] | None) -> None:
        self.progress.step(wave, service, node, "removing")
        request = M.RetireRequest(self.project.name, service, self.environment.name,
                                  None if replicas is None else tuple(replicas),
                                  _settings(self._ingress_args(service)))
        res = M.RetireResult.from_dict(self.nodes[node].call("retire", request.to_dict()))
        with self._journal_lock:
            self.journal.add(service, node, wave, [dict(r.to_dict(), new=None) for r in res.retired])
        self.progress.step(wave, service, node, "removed")

    def _retire_moved(self) -> None:
        """Services the plan takes off a node entirely: stopped and kept, like replaced ones."""
        plan = self.plan
        assert plan is not None
        moved = plan.rollout.moved
        if not moved:
            return
        wave = len(plan.waves) + 1
        count = sum(len(r.actions) for r in plan.removals if not r.orphan)
        self.progress.phase("cleanup", f"stopping {count} container(s) no longer placed there")
        _, errors = T.parallel(list(moved), lambda r: self._retire(wave, r.service, r.node, list(r.replicas)),
                               key=lambda r: f"{r.service}@{r.node}")
        if errors:
            failures = []
            for key, err in sorted(errors.items()):
                service, node = key.split("@", 1)
                failures.append(StepFailure(_Where(service, node), _as_orch_error(node, err)))
            raise self._failed(failures, [])

    def _monitor(self) -> None:
        """Swarm's monitor window: a replaced replica failing within `monitor` of its replacement fails
        the update. Waits for the last window (none unless a service sets `update_config.monitor`, as
        in docker-compose), then reads each node once: a replaced replica must still run at the end."""
        if not self._watch:
            return
        until = max(w.until for w in self._watch)
        left = until - time.monotonic()
        if left > 0:
            self.progress.phase("monitor", f"watching {len(self._watch)} new container(s) for {left:.0f}s "
                                "(update_config.monitor)")
            _sleep(left)
        # Every node when nothing changes after this read (no orphans to remove, no commit in here):
        # run() reuses it as the final view, a round trip less.
        watched = {w.node for w in self._watch}
        final = not self.options.commit and not any(r.orphan for r in self.plan.removals)
        states, errors = T.parallel(sorted(self.nodes if final else watched), lambda n: M.StateResult.from_dict(
            self.nodes[n].call("state", N.state_args(self.project.name))), key=lambda n: n)
        self._settled = dict(states) if final and not errors else None
        failures: list[StepFailure] = []
        for node, err in sorted(errors.items()):
            if node in watched:  # another node unreadable now is the final observe's to report
                failures.append(StepFailure(_Where("", node), _as_orch_error(node, err)))
        for w, bad in MON.problems(self._watch, states):
            failures.append(StepFailure(_Where(w.service, w.node), DeployError(
                MON.problem_text(w, bad),
                fix=f"see why in its logs (orch logs --env {self.environment.name} {w.service}); a re-run "
                "deploys the same containers, so fix the cause first",
                details={"service": w.service, "node": w.node, "replica": w.replica})))
        if failures:
            raise self._failed(failures, [])

    def _failed(self, failures: list[StepFailure], not_started: list[str]) -> DeployError:
        """The error for failures no policy tolerates, after the release was put back
        (failure_action rollback, orch's default) or left as it is (pause, continue)."""
        err = self._deploy_error(failures, not_started)
        # Several services failing at once: the safest of their actions (rollback first).
        actions = {self._policy(f.step.service).failure_action if f.step.service else "rollback" for f in failures}
        action = next(a for a in ("rollback", "pause", "continue") if a in actions)
        err.details["failure_action"] = action
        if action != "rollback":
            if self.journal:
                done = sorted({f"{e.service} on {e.node}" for e in self.journal.entries})
                err.message += (f"\nUpdate {'paused' if action == 'pause' else 'stopped'} (failure_action: {action}): "
                                f"{len(self.journal.entries)} replica(s) already run the new release "
                                f"({', '.join(done)}); re-run `orch up` to go on, or `orch rollback --to LIVE` (the live release's "
                                "id, see `orch history`) to put them back.")
            err.details["rolled_back"] = False
            await_stops(self)  # what was replaced stays kept: stopped, as after a successful up
            return err
        restored, problems = self.rollback() if self.journal else ([], [])
        # A failed batch is put back by its node's agent before it answers.
        for f in failures:
            where = f"{f.step.service} on {f.step.node}"
            if isinstance(f.error, T.AgentError) and f.error.details.get("restored") and where not in restored:
                restored.append(f"{where} (the failed batch, put back by the node's agent)")
        err.details["rolled_back"] = not problems
        err.details["restored"] = restored
        if problems:
            err.details["rollback_errors"] = problems
            err.message += ("\nRolled back, except: " + "; ".join(problems) +
                            ". Re-run `orch up` (or `orch rollback`) once the node is back.")
        elif restored:
            err.message += ("\nRolled back: every replica this release replaced is back on the previous release's "
                            f"container ({', '.join(restored)}).")
        else:
            err.message += "\nNothing had been replaced yet: the previous release still runs everywhere."
        return err

    def rollback(self) -> tuple[list[str], list[str]]:
        """Put back everything this release replaced, latest wave first: (what, problems)."""
        restored: list[str] = []
        problems: list[str] = []
        groups = self.journal.undo_order()
        total = sum(len(es) for g in groups for _, _, es in g)
        self.progress.phase("rollback", f"rolling back {total} replica(s) of {', '.join(self.journal.services())}")
        for group in groups:
            def one(item: tuple[str, str, list[Any]]) -> None:
                service, node, entries = item
                self.progress.step(entries[0].wave, service, node, RUNNING, detail="rolling back")
                request = M.RestoreRequest(self.project.name, service,
                                           tuple(M.RestoreItem(e.replica, e.was_running) for e in entries),
                                           self.environment.name,
                                           _settings(self._rollback_ingress_args(node, service)))
                M.RestoreResult.from_dict(self.nodes[node].call(
                    "restore", request.to_dict(),
                    on_event=lambda ev: self.progress.agent_event(entries[0].wave, service, node, ev)))
                self.progress.step(entries[0].wave, service, node, "rolled back")

            _, errors = T.parallel(group, one, key=lambda item: f"{item[0]} on {item[1]}")
            for name in sorted(f"{s} on {n}" for s, n, _ in group):
                if name in errors:
                    problems.append(f"{name}: {_first_line(_as_orch_error(name.rsplit(' ', 1)[-1], errors[name]))}")
                else:
                    restored.append(name)
        return restored, problems

    def has_kept(self) -> bool:
        """Whether the last observed state has containers kept for a rollback."""
        return any(c.retired for cs in self.observed.values() for c in cs)

    def commit(self) -> None:
        """The release is live: drop the containers kept for its rollback (best effort; the
        next deploy drops whatever is left)."""
        request = M.DiscardRequest(self.project.name, env=self.environment.name).to_dict()
        _, errors = T.parallel(list(self.nodes.items()), lambda item: M.DiscardResult.from_dict(item[1].call(
            "discard", request)), key=lambda item: item[0])
        for node, err in sorted(errors.items()):
            self.warn(discard_warning(node, err))

    def _optional(self, service: str) -> bool:
        """A failed service blocks nothing when every dependent has `required: false` on it."""
        deps = [bp.dependencies[service] for bp in self.blueprint.services.values() if service in bp.dependencies]
        return bool(deps) and all(not d.required for d in deps)

    def _deploy_error(self, failures: list[StepFailure], not_started: list[str]) -> DeployError:
        return deploy_error(f"deploy of {self.project.name} to {self.environment.name}", failures, not_started)

    def cleanup(self) -> None:
        """Orphans (with --remove-orphans): removed, they are not part of any release."""
        plan = self.plan
        assert plan is not None
        orphans = [r for r in plan.removals if r.orphan]
        if not orphans:
            return
        t0 = time.monotonic()
        self.progress.phase("cleanup", f"removing {sum(len(r.actions) for r in orphans)} orphan container(s)")
        wave = len(plan.waves) + 1

        def remove(r: Any) -> None:
            self.progress.step(wave, r.service, r.node, "removing")
            M.RemoveResult.from_dict(self.nodes[r.node].call("remove", M.RemoveRequest(
                self.project.name, r.service, env=self.environment.name).to_dict()))
            self.progress.step(wave, r.service, r.node, "removed")

        _, errors = T.parallel(orphans, remove, key=lambda r: f"{r.service}@{r.node}")
        self._timed("cleanup", t0)
        if errors:
            name, err = sorted(errors.items())[0]
            raise DeployError(f"removing {name} failed: {err}", fix="re-run `orch up`")

    def _run_hooks(self, name: str) -> None:
        for hook in self.hooks[name]:
            hook(self)

    def close(self) -> None:
        N.close_nodes(self.nodes)
        self.nodes = {}

    # -- the whole command -------------------------------------------------------------

    def run(self, close: bool = True) -> DeployResult:
        """The whole command. close=False leaves the connections open for the caller
        (orchestrator.app.pipeline records the release and verifies over them, then calls
        close()); an interrupted apply closes them anyway."""
        self._t0 = time.monotonic()
        self.prepare()
        try:
            self.connect()
            self.observe()
            plan = self.make_plan()
            if self.options.dry_run:
                return self._result("planned")
            if plan.is_noop and not any(s.needs_apply for s in plan.steps):
                if self.options.commit and self.has_kept():
                    self.commit()  # left by an earlier deploy that stopped before it was live
                return self._result("ok")
            self.apply()
            self.cleanup()
            if self.options.commit:
                self.commit()
            t0 = time.monotonic()
            if self._settled is not None:
                self.observed = N.observed_from(self._settled, self.environment.name)  # nothing changed since
            else:
                self.observed = N.observe_nodes(self.nodes, self.project.name, fresh=True, env=self.environment.name)
            self._timed("observe", t0)
            return self._result("ok")
        finally:
            if close:
                self.close()

    def _result(self, status: str) -> DeployResult:
        assert self.plan is not None
        hosts = {n.name: n.host for n in self.environment.nodes}
        rows = container_rows(self.observed, hosts)
        addresses = published_addresses(rows)
        for name, bp in (self.blueprint.services.items() if self.blueprint is not None else ()):
            if getattr(bp, "ingress", None) is not None and bp.ingress.published:  # served by each node's ingress
                nodes = sorted({r.node for r in rows if r.service == name and r.state == "running"},
                               key=lambda n: list(hosts).index(n) if n in hosts else 99)
                ip = bp.ingress.host_ip
                addresses[name] = sorted(set(addresses.get(name, [])) | {
                    f"{hosts.get(n, n) if ip in ('', '0.0.0.0') else ip}:{bp.ingress.published}" for n in nodes})
        from orchestrator.app.edge import addresses as edge_addresses

        for name, urls in edge_addresses([], self.edge.routes()).items():
            addresses[name] = sorted(set(addresses.get(name, [])) | set(urls))
        return DeployResult(
            project=self.project.name, environment=self.environment.name, status=status, plan=self.plan,
            changed=[] if status == "planned" else self.plan.changed_services(), containers=rows,
            addresses=dict(sorted(addresses.items())), duration_s=time.monotonic() - self._t0, timings=dict(self.timings),
            warnings=list(self.warnings), dry_run=status == "planned", degraded=list(self.degraded),
            certificates=self.edge.rows(),
        )


def _parallel_applies(plan: Plan) -> dict[str, int]:
    """Per node, the most `apply` calls any one wave makes there at once."""
    out: dict[str, int] = {}
    for i in range(1, len(plan.waves) + 1):
        per: dict[str, int] = {}
        for s in plan.wave_steps(i):
            if s.needs_apply:
                per[s.node] = per.get(s.node, 0) + 1
        for node, n in per.items():
            out[node] = max(out.get(node, 0), n)
    return out


@dataclass(frozen=True)
class _Where:
    """Where a failure happened when it is not one plan step (monitor, moved replicas)."""

    service: str
    node: str
    wave: int = 0

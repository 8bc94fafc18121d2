"""Deploying without a registry: the images a release needs moved onto the environment's nodes.

An environment whose file names no registry address has its built images moved by the
controller, under the deploy lock and before anything is planned, into each node's
loopback registry (agent.transfer, reached through io.transfer.Forward):

1. `transfer_start` on every node (Docker Distribution on 127.0.0.1:TRANSFER_PORT, kept
   running; its free disk space).
2. A built image (only on the controller's engine) is pushed by the engine, before the
   plan, to the first node the service's placement constraints allow (`seed_nodes`); the
   digest that node's registry gives it is the image's pin
   (`127.0.0.1:PORT/<project>/<service>@sha256:...`), in specs, releases and the ledger.
3. Once the plan has placed the replicas (just before anything is applied), every pinned
   image a node that runs it lacks is copied registry to registry, by digest, from a node
   that has it (this environment's, else the source environment's of a promotion): only the
   blobs the node lacks, streamed through the controller, to all such nodes in parallel.
   A node that runs no replica of a service does not get its image.

Images of other registries (`image: busybox`) are pulled by the nodes as with a registry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent.wire.transfer import TRANSFER_START, TRANSFER_STATUS, TransferInfo, is_transferred, loopback_ref, split_ref
from orchestrator.core.progress import Progress

EVENT_EVERY = 1.0  # seconds between progress events of one layer on one node


def registryless(env: Any) -> bool:
    return env is not None and not env.registry.address


def needs_transfer(env: Any, images: Mapping[str, str], local: Mapping[str, str]) -> bool:
    return registryless(env) and (bool(local) or any(is_transferred(ref) for ref in images.values()))


@dataclass
class TransferReport:
    pins: dict[str, str] = field(default_factory=dict)  # service -> 127.0.0.1:PORT/...@sha256 (built ones)
    moved: list[Any] = field(default_factory=list)  # io.transfer.Moved
    seconds: float = 0.0

    @property
    def bytes_sent(self) -> int:
        return sum(m.bytes_sent for m in self.moved)

    def to_json(self) -> dict:
        return {"bytes_sent": self.bytes_sent, "seconds": round(self.seconds, 2),
                "moves": [m.to_json() for m in self.moved]}


class Meter:
    """Progress per node and layer: bytes and rate, at most one event a second per layer."""

    def __init__(self, progress: Progress, image: str):
        self.progress = progress
        self.image = image
        self._lock = threading.Lock()
        self._start: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, node: str, layer: str, done: int, total: int) -> None:
        key = (node, layer)
        now = time.monotonic()
        with self._lock:
            start = self._start.setdefault(key, now)
            if done < total and now - self._last.get(key, 0.0) < EVENT_EVERY:
                return
            self._last[key] = now
        rate = done / max(now - start, 1e-3)
        short = layer.split(":")[-1][:12]
        if self.progress.json:
            self.progress.event("transfer", node=node, image=self.image, layer=short, bytes=done, total=total,
                                rate=round(rate))
        else:
            self.progress.phase("transfer", f"{node}: {self.image} layer {short} {done / 1e6:.1f}/{total / 1e6:.1f} MB "
                                f"({rate / 1e6:.1f} MB/s)")


def needed_on(images: Mapping[str, str], names: Iterable[str],
              placement: Mapping[str, Iterable[str]] | None = None) -> dict[str, list[str]]:
    """{loopback reference: the nodes that must hold it}: the nodes the placement puts the
    services using it on (placement None: every node)."""
    names = sorted(names)
    out: dict[str, set[str]] = {}
    for service, ref in images.items():
        if not is_transferred(ref):
            continue
        where = names if placement is None else [n for n in placement.get(service, ()) if n in names]
        out.setdefault(ref, set()).update(where)
    return {ref: sorted(where) for ref, where in sorted(out.items()) if where}


def seed_nodes(project: Any, env: Any, services: Iterable[str]) -> dict[str, str]:
    """{service: the node its built image is pushed to}: the first node of the environment
    that the service's placement constraints allow (the plan has not placed the replicas
    yet; a constrained service then needs no copy to a node that cannot run it)."""
    from orchestrator.core.placement import parse_constraint
    from orchestrator.core.specs.compile import node_infos

    nodes = node_infos(env)
    out = {}
    for name in services:
        svc = project.services.get(name)
        placement = svc.deploy.placement if svc is not None and svc.deploy else None
        constraints = [parse_constraint(t) for t in (placement.constraints if placement else [])]
        eligible = [n.name for n in nodes if all(c.matches(n) for c in constraints)]
        if eligible:
            out[name] = eligible[0]
    return out


def deliver(env: Any, nodes: Mapping[str, Any], images: Mapping[str, str], progress: Progress, *,
            local: Mapping[str, str] | None = None, source_env: Any = None,
            connector: Callable[..., dict] | None = None, engine: Any = None,
            placement: Mapping[str, Iterable[str]] | None = None, seeds: Mapping[str, str] | None = None
            ) -> TransferReport:
    """Make the nodes that run a service (placement: service -> nodes; None: every node of
    `nodes`) hold its image (see the module docstring); the built images in `local`
    (service -> the controller engine's repository:tag) are pushed to seeds[service] (else
    the first node) and pinned (TransferReport.pins)."""
    from orchestrator.io import transfer as X
    from orchestrator.io import transport as T

    t0 = time.monotonic()
    local = dict(local or {})
    report = TransferReport()
    names = sorted(nodes)
    progress.phase("transfer", f"starting the transfer registries on {', '.join(names)}")
    infos = _start(nodes)
    forwards = {n: X.Forward(nodes[n].conn.transport, n) for n in names}
    extra: list[Callable[[], None]] = []
    try:
        clients = {n: _client(forwards[n]) for n in names}
        if local:
            from orchestrator.io.images import docker_client

            engine = engine or docker_client()
            for service, ref in sorted(local.items()):
                seed = (seeds or {}).get(service)
                seed = seed if seed in forwards else names[0]
                repository, _, tag = ref.rpartition(":")
                progress.phase("transfer", f"{service}: pushing {ref} to {seed}")
                moved = X.push_from_engine(engine, ref, forwards[seed], repository, tag, Meter(progress, service))
                report.moved.append(moved)
                report.pins[service] = loopback_ref(repository, moved.digest)
                _done(progress, service, moved)
        wanted = needed_on({**images, **report.pins}, names, placement)
        for ref, targets in wanted.items():
            repository, digest = split_ref(ref)
            has, _ = T.parallel(names, lambda n: X.has_image(clients[n], repository, digest), key=lambda n: n)
            missing = [n for n in targets if not has.get(n)]
            if not missing:
                continue
            holders = [n for n in names if has.get(n)]
            if holders:
                src_name, src = holders[0], clients[holders[0]]
            else:
                src_name, src = _from_source(source_env, connector, progress, repository, digest, extra)
            label = repository.rsplit("/", 1)[-1]
            progress.phase("transfer", f"{label}: copying {digest[:19]} from {src_name} to {', '.join(missing)}")
            meter = Meter(progress, label)

            results, errors = X.copy_to_many(src, {n: clients[n] for n in missing}, repository, digest,
                                             free_bytes={n: infos[n].free_bytes for n in missing},
                                             on_layer=meter, source=src_name)
            for n in sorted(results):
                report.moved.append(results[n])
                _done(progress, label, results[n])
            if errors:
                raise errors[sorted(errors)[0]]
    finally:
        for fwd in forwards.values():
            fwd.close()
        for close in extra:
            close()
    report.seconds = time.monotonic() - t0
    return report


@contextmanager
def node_registries(nodes: Mapping[str, Any], start: bool = True
                    ) -> Iterator[tuple[dict[str, Any], dict[str, TransferInfo]]]:
    """Every node's loopback registry started (start=False: those already running) and
    reached through a forward: ({node: RegistryClient}, {node: TransferInfo}); the forwards
    close on exit."""
    from orchestrator.io import transfer as X

    infos = _start(nodes) if start else {n: i for n, i in statuses(nodes).items() if i.running}
    nodes = {n: nodes[n] for n in infos}
    forwards = {n: X.Forward(nodes[n].conn.transport, n) for n in sorted(nodes)}
    try:
        yield {n: _client(f) for n, f in forwards.items()}, infos
    finally:
        for fwd in forwards.values():
            fwd.close()


def statuses(nodes: Mapping[str, Any]) -> dict[str, TransferInfo]:
    """Each node's loopback registry as it is (nothing started)."""
    from orchestrator.io import transport as T

    results, errors = T.parallel(list(nodes), lambda n: TransferInfo.from_dict(nodes[n].call(TRANSFER_STATUS, {})),
                                 key=lambda n: n)
    if errors:
        raise errors[sorted(errors)[0]]
    return results


def _start(nodes: Mapping[str, Any]) -> dict[str, TransferInfo]:
    from orchestrator.io import transport as T

    results, errors = T.parallel(list(nodes), lambda n: TransferInfo.from_dict(nodes[n].call(TRANSFER_START, {})),
                                 key=lambda n: n)
    if errors:
        raise errors[sorted(errors)[0]]
    return results


def _client(forward: Any) -> Any:
    from orchestrator.io.registry_client import RegistryClient

    return RegistryClient(forward.address, scheme="http", timeout=120.0)


def _done(progress: Progress, image: str, moved: Any) -> None:
    rate = moved.bytes_sent / max(moved.seconds, 1e-3)
    progress.event("transferred", image=image, **moved.to_json(), rate=round(rate))
    if not progress.json:
        progress.phase("transfer", f"{moved.node}: {image} {moved.bytes_sent / 1e6:.1f} MB sent "
                       f"({moved.layers_sent} layer(s), {moved.layers_present} there already) in {moved.seconds:.1f}s")


def _from_source(source_env: Any, connector: Callable[..., dict] | None, progress: Progress, repository: str,
                 digest: str, cleanup: list) -> tuple[str, Any]:
    """A node of the promotion's source environment holding the image, through a forward."""
    from orchestrator.io import transfer as X
    from orchestrator.io.nodes import close_nodes, ssh_connect

    if source_env is None or not registryless(source_env):
        raise X.TransferFailed(
            f"no node holds {repository}@{digest}, and there is no registry-less source environment to take it from",
            fix="deploy the release again with `orch up` (it pushes the image from this machine), promote it from "
                "the environment where it runs, or load its archive first (`orch image load FILE --env ENV`).")
    progress.phase("transfer", f"fetching {repository}@{digest[:19]} from {source_env.name}")
    nodes = (connector or ssh_connect)(source_env, progress, None)
    cleanup.append(lambda: close_nodes(nodes))
    infos = _start(nodes)
    for name in sorted(nodes):
        if not infos[name].running:
            continue
        fwd = X.Forward(nodes[name].conn.transport, name)
        cleanup.insert(0, fwd.close)
        client = _client(fwd)
        if X.has_image(client, repository, digest):
            return f"{source_env.name}/{name}", client
    raise X.TransferFailed(f"no node of {source_env.name} holds {repository}@{digest} any more",
                           fix=f"deploy it again in {source_env.name} (`orch up --env {source_env.name}`), then "
                               "promote.")

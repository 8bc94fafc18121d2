"""Moving images to a node's loopback registry over SSH (deploying without a registry).

- `Forward`: a listening socket on the controller's 127.0.0.1 (an ephemeral port) whose
  every connection becomes a paramiko `direct-tcpip` channel, over the node's existing
  SSH connection, to the node's 127.0.0.1:TRANSFER_PORT (agent.transfer's Docker
  Distribution). It counts the bytes that go to the node.
- `push_from_engine`: the controller's Docker Engine pushes a built image through a
  forward (the engine trusts 127.0.0.0/8 registries without TLS); it sends only the layers
  the node's registry lacks (it asks the registry first).
- `copy_image`: registry to registry by digest (a node's registry to another's, through
  two forwards): only missing blobs, streamed, the manifest bytes kept, so the digest
  that passed one environment is exactly what the next one runs.
- `upload_failure`: a failed blob upload explained, naming node and layer (a full disk).
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.wire.transfer import TRANSFER_PORT
from orchestrator.errors import OrchError

CHUNK = 1 << 20
OPEN_TIMEOUT = 15.0  # seconds for the node's sshd to open a forwarded channel

# (node, layer digest, bytes done, layer size)
OnLayer = Callable[[str, str, int, int], None]


class TransferFailed(OrchError):
    """An image could not be moved to a node."""


class NodeOutOfDisk(TransferFailed):
    """The node's disk filled up (or would) while receiving a layer."""


# --------------------------------------------------------------------------- the forward


class Forward:
    """127.0.0.1:<port> on the controller -> the node's 127.0.0.1:<remote_port>, one SSH
    channel per accepted connection. `sent`: bytes that went to the node."""

    def __init__(self, transport: Any, node: str, remote_port: int = TRANSFER_PORT):
        self.transport = transport
        self.node = node
        self.remote_port = remote_port
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()
        self._open: list[tuple[Any, Any]] = []
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(32)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"orch-forward-{node}")
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, peer = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, peer), daemon=True,
                             name=f"orch-forward-{self.node}-{peer[1]}").start()

    def _serve(self, client: socket.socket, peer: tuple) -> None:
        try:
            chan = self.transport.open_channel("direct-tcpip", ("127.0.0.1", self.remote_port), peer,
                                               timeout=OPEN_TIMEOUT)
        except Exception:
            client.close()  # the HTTP client sees a reset: the caller names the node
            return
        with self._lock:
            self._open.append((client, chan))
        try:
            self._pump(client, chan)
        except (OSError, EOFError):
            pass  # either end closed (close() or the SSH connection went away)
        finally:
            with self._lock:
                if (client, chan) in self._open:
                    self._open.remove((client, chan))
            for end in (client, chan):
                try:
                    end.close()
                except Exception:
                    pass

    def _pump(self, client: socket.socket, chan: Any) -> None:
        while not self._closed.is_set():
            ready, _, _ = select.select([client, chan], [], [], 1.0)
            if client in ready:
                data = client.recv(CHUNK)
                if not data:
                    return
                with self._lock:
                    self.sent += len(data)
                chan.sendall(data)
            if chan in ready:
                data = chan.recv(CHUNK)
                if not data:
                    return
                with self._lock:
                    self.received += len(data)
                client.sendall(data)

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            pairs, self._open = list(self._open), []
        for client, chan in pairs:
            for end in (client, chan):
                try:
                    end.close()
                except Exception:
                    pass

    def __enter__(self) -> "Forward":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- errors


def upload_failure(node: str, layer: str, size: int, status: int | None, body: str) -> TransferFailed:
    """A blob that did not arrive, explained: a full disk (Distribution reports ENOSPC as
    "no space left on device" or as the errno 28 of its storage driver) names node and layer."""
    low = (body or "").lower()
    short = layer.split(":")[-1][:12]
    if "no space left" in low or '"err":28' in low.replace(" ", "") or "enospc" in low:
        return NodeOutOfDisk(
            f"{node} ran out of disk space while receiving layer {short} ({_mb(size)}): {_first_line(body)}",
            fix=f"free space on {node} (`orch prune --env ENV`, `docker system prune`) or grow its disk, then run the "
                "command again: the layers already there are not sent again.",
            details={"node": node, "layer": layer, "size": size})
    where = f"HTTP {status}" if status else "connection lost"
    return TransferFailed(
        f"{node}: sending layer {short} ({_mb(size)}) failed ({where}): {_first_line(body)}",
        fix="run the command again: the layers already on the node are not sent again, and a half-sent layer is "
            "discarded by the node's registry.",
        details={"node": node, "layer": layer, "size": size})


def check_room(node: str, missing: list[tuple[str, int]], free: int, margin: int = 64 << 20) -> None:
    """Refuse before sending when the node's free space cannot hold the missing blobs (their
    compressed sizes plus a margin); names the first layer that would not fit."""
    used = 0
    for digest, size in missing:
        used += size
        if used + margin > free:
            raise upload_failure(node, digest, size, None,
                                 f"no space left on device: {_mb(free)} free, {_mb(sum(s for _, s in missing))} to send")


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:300] if (text or "").strip() else "no answer"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------- engine push


@dataclass
class Moved:
    """What one image's move to one node did."""

    node: str
    digest: str
    bytes_sent: int = 0  # blob bytes uploaded (compressed)
    layers_sent: int = 0
    layers_present: int = 0
    seconds: float = 0.0
    via: str = ""  # "engine" or the source node's name

    def to_json(self) -> dict:
        return {"node": self.node, "digest": self.digest, "bytes_sent": self.bytes_sent,
                "layers_sent": self.layers_sent, "layers_present": self.layers_present,
                "seconds": round(self.seconds, 2), "via": self.via}


def push_from_engine(client: Any, local_ref: str, forward: Forward, repository: str, tag: str,
                     on_layer: OnLayer | None = None) -> Moved:
    """`docker push` of local_ref through the forward; the digest the node's registry gave it."""
    start = time.monotonic()
    target = f"{forward.address}/{repository}"
    on_layer = on_layer or (lambda *a: None)
    _drop_stale_tags(client, local_ref, repository)
    client.api.tag(local_ref, target, tag)
    statuses: dict[str, str] = {}
    done: dict[str, tuple[int, int]] = {}
    digest = ""
    try:
        for msg in client.api.push(target, tag=tag, stream=True, decode=True):
            if "error" in msg or "errorDetail" in msg:
                text = msg.get("error") or (msg.get("errorDetail") or {}).get("message", "push failed")
                lid = msg.get("id", "")
                size = done.get(lid, (0, 0))[1]
                raise upload_failure(forward.node, lid or "?", size, None, text)
            aux = msg.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
            status, lid = msg.get("status", ""), msg.get("id", "")
            detail = msg.get("progressDetail") or {}
            if status == "Pushing" and lid and detail.get("total"):
                done[lid] = (int(detail.get("current") or 0), int(detail["total"]))
                on_layer(forward.node, lid, *done[lid])
            elif lid and status in ("Pushed", "Layer already exists"):
                statuses[lid] = status
                if status == "Pushed" and lid in done:
                    on_layer(forward.node, lid, done[lid][1], done[lid][1])
    finally:
        try:
            client.api.remove_image(f"{target}:{tag}", noprune=True)  # the tag only; the image stays
        except Exception:
            pass
    if not digest:
        raise TransferFailed(f"{forward.node}: the engine pushed {local_ref} but reported no digest",
                             fix="run the command again.")
    return Moved(node=forward.node, digest=digest, bytes_sent=forward.sent,
                 layers_sent=sum(1 for s in statuses.values() if s == "Pushed"),
                 layers_present=sum(1 for s in statuses.values() if s == "Layer already exists"),
                 seconds=time.monotonic() - start, via="engine")


def _drop_stale_tags(client: Any, local_ref: str, repository: str) -> None:
    """Tags a killed transfer left (127.0.0.1:<old forward>/<repository>:...): untagged."""
    try:
        tags = client.api.inspect_image(local_ref).get("RepoTags") or []
    except Exception:
        return
    for t in tags:
        host, _, rest = t.partition("/")
        if host.startswith("127.0.0.1:") and rest.rpartition(":")[0] == repository:
            try:
                client.api.remove_image(t, noprune=True)
            except Exception:
                pass


# --------------------------------------------------------------------------- registry to registry


@dataclass
class Blob:
    digest: str
    size: int
    kind: str = "layer"


@dataclass
class ImageBlobs:
    media_type: str
    manifest: bytes
    blobs: list[Blob] = field(default_factory=list)


def image_blobs(src: Any, repository: str, digest: str) -> ImageBlobs:
    """The manifest (its bytes, as stored) and the config and layer blobs it names."""
    from orchestrator.io.registry_client import SINGLE_MANIFEST_TYPES

    m = src.manifest(repository, digest, accept=SINGLE_MANIFEST_TYPES)
    doc = m.json()
    if "layers" not in doc:
        raise TransferFailed(f"{repository}@{digest} is a manifest list; only single-platform images are moved",
                             fix="build for the nodes' platform only.")
    blobs = [Blob(doc["config"]["digest"], int(doc["config"].get("size", 0)), "config")]
    blobs += [Blob(ly["digest"], int(ly.get("size", 0))) for ly in doc["layers"]]
    return ImageBlobs(m.media_type, m.body, blobs)


def has_image(client: Any, repository: str, digest: str) -> bool:
    return client.manifest_digest(repository, digest) is not None


def copy_image(src: Any, dst: Any, repository: str, digest: str, node: str, *, free_bytes: int | None = None,
               on_layer: OnLayer | None = None, source: str = "") -> Moved:
    """Only the blobs dst lacks, streamed from src; then the manifest's own bytes, by digest."""
    moved, failed = copy_to_many(src, {node: dst}, repository, digest,
                                 free_bytes=None if free_bytes is None else {node: free_bytes},
                                 on_layer=on_layer, source=source)
    if failed:
        raise failed[node]
    return moved[node]


def copy_to_many(src: Any, dsts: dict[str, Any], repository: str, digest: str, *,
                 free_bytes: dict[str, int] | None = None, on_layer: OnLayer | None = None, source: str = ""
                 ) -> tuple[dict[str, Moved], dict[str, TransferFailed]]:
    """copy_image to several nodes at once, each blob read from src once and written to
    every node lacking it in parallel (the controller's link carries it in once, not once
    per node). (moved, failed) by node: a node that fails does not stop the others."""
    start = time.monotonic()
    on_layer = on_layer or (lambda *a: None)
    img = image_blobs(src, repository, digest)
    missing = {n: {b.digest for b in img.blobs if not c.blob_exists(repository, b.digest)} for n, c in dsts.items()}
    failed: dict[str, TransferFailed] = {}
    for n in dsts:
        if free_bytes and n in free_bytes:
            try:
                check_room(n, [(b.digest, b.size) for b in img.blobs if b.digest in missing[n]], free_bytes[n])
            except TransferFailed as err:
                failed[n] = err
    sent = {n: 0 for n in dsts}
    for blob in img.blobs:
        targets = [n for n in dsts if n not in failed and blob.digest in missing[n]]
        if not targets:
            continue
        for n, got in _fan_out(src, dsts, repository, blob, targets, on_layer, source).items():
            if isinstance(got, TransferFailed):
                failed[n] = got
            else:
                sent[n] += got
    moved: dict[str, Moved] = {}
    for n, client in dsts.items():
        if n in failed:
            continue
        try:
            got = client.put_manifest(repository, digest, img.media_type, img.manifest)
        except OrchError as err:
            failed[n] = upload_failure(n, digest, len(img.manifest), None, err.message)
            continue
        if got != digest:
            failed[n] = TransferFailed(f"{n}: its registry stored {repository}@{digest} as {got}",
                                       fix="run the command again; report a bug if it persists.")
            continue
        moved[n] = Moved(node=n, digest=digest, bytes_sent=sent[n], layers_sent=len(missing[n]),
                         layers_present=len(img.blobs) - len(missing[n]), seconds=time.monotonic() - start,
                         via=source)
    return moved, failed


QUEUE_CHUNKS = 8  # chunks buffered per node: the slowest node sets the pace, memory stays bounded


def _fan_out(src: Any, dsts: dict[str, Any], repository: str, blob: Blob, targets: list[str], on_layer: OnLayer,
             source: str) -> dict[str, Any]:
    """One blob from src into every target's registry at once: {node: bytes sent or TransferFailed}."""
    queues = {n: queue.Queue(maxsize=QUEUE_CHUNKS) for n in targets}
    results: dict[str, Any] = {}

    def upload(n: str) -> None:
        done = [0]

        def chunks() -> Any:
            on_layer(n, blob.digest, 0, blob.size)  # the rate counts from here
            while True:
                chunk = queues[n].get()
                if chunk is None:
                    return
                if isinstance(chunk, BaseException):
                    raise chunk
                done[0] += len(chunk)
                on_layer(n, blob.digest, done[0], blob.size)
                yield chunk

        try:
            bad = dsts[n].upload_blob(repository, blob.digest, chunks())
            results[n] = done[0] if bad is None else upload_failure(n, blob.digest, blob.size, bad.status_code,
                                                                   bad.text)
        except _SourceFailed as err:
            results[n] = TransferFailed(f"reading layer {blob.digest.split(':')[-1][:12]} from {source or 'the source'} "
                                        f"failed: {err}", fix="run the command again.")
        except Exception as err:  # the connection to the node broke
            results[n] = upload_failure(n, blob.digest, blob.size, None, getattr(err, "message", None) or str(err))

    threads = [threading.Thread(target=upload, args=(n,), daemon=True, name=f"orch-copy-{n}") for n in targets]
    for t in threads:
        t.start()
    end: Any = None
    try:
        resp = src.open_blob(repository, blob.digest)
        try:
            for chunk in resp.iter_content(CHUNK):
                for n in targets:
                    _put(queues[n], chunk, lambda n=n: n in results)
        finally:
            resp.close()
    except Exception as err:
        end = _SourceFailed(getattr(err, "message", None) or str(err))
    for n in targets:
        _put(queues[n], end, lambda n=n: n in results)
    for t in threads:
        t.join()
    return results


class _SourceFailed(Exception):
    pass


def _put(q: Any, item: Any, gone: Callable[[], bool]) -> None:
    """Hand item to a node's upload, unless that upload has ended (it failed)."""
    while not gone():
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


# --------------------------------------------------------------------------- building for a transfer


def prepare_local(project: Any, env: Any, *, version: str | None = None, build_images: bool = True,
                  services: Any = None, on_output: Any = None, environ: Any = None, client: Any = None) -> Any:
    """io.images.prepare_images for an environment without a registry: build here (or, with
    build_images=False, find the version's tags in this machine's engine) and pin `image:`
    references; the built images reach the nodes later, under the lock (app.transfer), which
    pins them. Until then ImageSet.pins holds their local tags (ImageSet.local)."""
    from orchestrator.core.images import plan_builds
    from orchestrator.io import images as I

    services = list(services) if services else None
    info = I.compute_version(I.version_paths(project, services), version)
    jobs = plan_builds(project, env, info.version, services, environ)
    builds = []
    if jobs:
        client = client or I.docker_client()
        builds = I.build(jobs, on_output, client) if build_images else []
        for job in jobs if not build_images else []:
            try:
                client.api.inspect_image(job.ref)
            except Exception:
                raise I.ImageNotFound(
                    f"{job.service}: {job.ref} is not in this machine's Docker Engine, and --no-build was given.",
                    fix="drop --no-build, or give the --version that was built here.",
                ) from None
    local = {job.service: job.ref for job in jobs}
    pins = dict(local)
    pins.update(I.resolve_images(project, env, services, environ=environ))
    return I.ImageSet(info, pins, builds, [], jobs, local=local)

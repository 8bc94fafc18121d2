"""Deploying without a registry: a 200 MB image moved to 1, 2 and 4 lab nodes.

For each node count N (dev-1, test-1, prod-1, prod-2 in that order) and each run, three
fresh images (new random bytes, so nothing is on any node or registry yet; the build is
not timed), 4 layers of 50 MB of random bytes on busybox, each moved until every one of
the N node engines holds it:

- orch without a registry (orchestrator.app.transfer.deliver, as `orch up` runs it): the
  engine pushes to the first node's loopback registry through an SSH forward, the
  controller copies the blobs from it to the other nodes' registries (in parallel), then
  every node's engine pulls from its own loopback, in parallel;
- baseline 1: `docker save IMAGE | ssh node docker load`, one pipeline per node in parallel
  (OpenSSH, the lab's key);
- baseline 2: a registry: `docker push` to the lab's registry, then every node pulls, in
  parallel.

Wall time from the start of the move until the last node's engine has the image. The
transfer registries' and nodes' copies are removed after each measurement.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.common import Row

NODES = ["dev-1", "test-1", "prod-1", "prod-2"]
COUNTS = (1, 2, 4)
LAYERS, LAYER_MB = 4, 50
DOCKERFILE = "FROM busybox\n" + "".join(
    f"RUN echo {{nonce}} > /n{i} && head -c {LAYER_MB * 1_000_000} /dev/urandom > /b{i}\n" for i in range(LAYERS))


def _client(base_url: str | None = None):
    import docker

    return docker.DockerClient(base_url=base_url, timeout=900) if base_url else docker.from_env(timeout=900)


def _build(host, repository: str, tag: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "Dockerfile").write_text(DOCKERFILE.format(nonce=uuid.uuid4().hex))
        host.images.build(path=d, tag=f"{repository}:{tag}", rm=True)
    return f"{repository}:{tag}"


def _parallel(fns) -> None:
    errors: list[BaseException] = []

    def run(fn):
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _env_file(lab, names: list[str], d: Path):
    from orchestrator.core.environments import load_environment

    (d / "environments").mkdir(parents=True, exist_ok=True)
    text = "name: xbench\nnodes:\n" + "".join(
        f"  - {{name: {n}, host: {lab.node(n).address}, user: {lab.ssh_user}, identity_file: {lab.ssh_key}, "
        "python: /usr/bin/python3}\n" for n in names) + f"ssh: {{known_hosts: {lab.known_hosts}}}\nregistry: none\n"
    (d / "environments" / "xbench.yaml").write_text(text)
    return load_environment("xbench", d / "environments")


def _registryless(lab, names: list[str], host, ref: str, work: Path, keep: bool = False
                  ) -> tuple[float, float, int]:
    """(seconds until every node's engine has it, of which the transfer, bytes sent)."""
    from orchestrator.app.transfer import deliver
    from orchestrator.core.progress import Progress
    from orchestrator.io.nodes import close_nodes, ssh_connect

    env = _env_file(lab, names, work)
    nodes = ssh_connect(env, Progress(), None)  # connected before the clock starts, as under `orch up`
    try:
        t0 = time.perf_counter()
        report = deliver(env, nodes, {}, Progress(), local={"blob": ref}, engine=host)
        moved = time.perf_counter() - t0
        pinned = report.pins["blob"]
        _parallel([lambda n=n: _client(lab.node(n).docker_host).api.pull(pinned) for n in names])
        took = time.perf_counter() - t0
    finally:
        close_nodes(nodes)
    if not keep:
        _forget(lab, names, pinned)
    return took, moved, report.bytes_sent


def _second(lab, host, work: Path) -> tuple[float, int, float, int]:
    """A one-line change on dev-1: (orch seconds, bytes sent, save|load seconds, tar bytes)."""
    first = _build(host, f"bench-xfer-{uuid.uuid4().hex[:10]}/blob", "v1")
    repo = first.rsplit(":", 1)[0]
    with tempfile.TemporaryDirectory() as d:
        Path(d, "Dockerfile").write_text(f"FROM {first}\nRUN echo {uuid.uuid4().hex} > /changed\n")
        host.images.build(path=d, tag=f"{repo}:v2", rm=True)
    second = f"{repo}:v2"
    try:
        _registryless(lab, ["dev-1"], host, first, work, keep=True)  # what the node had: not timed
        took, _, nbytes = _registryless(lab, ["dev-1"], host, second, work)
        tar = sum(len(c) for c in host.api.get_image(second))
        base = _save_load(lab, ["dev-1"], second)
    finally:
        for ref in (second, first):
            try:
                _client(lab.node("dev-1").docker_host).api.remove_image(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
            host.api.remove_image(ref, force=True)
    return took, nbytes, base, tar


def _save_load(lab, names: list[str], ref: str) -> float:
    ssh = ["ssh", "-i", str(lab.ssh_key), "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "BatchMode=yes"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["bash", "-o", "pipefail", "-c",
                               f"docker save {ref} | {' '.join(ssh)} {lab.ssh_user}@{lab.node(n).address} docker load"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in names]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode:
            raise RuntimeError(f"docker save | ssh docker load failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def _registry(lab, names: list[str], host, ref: str) -> float:
    from orchestrator.lab.registry import parse_env_file

    creds = parse_env_file(Path(lab.credentials_file).read_text())
    auth = {"username": creds["ORCH_REGISTRY_USER"], "password": creds["ORCH_REGISTRY_PASSWORD"],
            "serveraddress": lab.registry}
    remote = f"{lab.registry}/bench-xfer/blob"
    repo, tag = ref.rsplit(":", 1)
    host.api.tag(ref, remote, tag)
    t0 = time.perf_counter()
    for msg in host.api.push(remote, tag=tag, stream=True, decode=True, auth_config=auth):
        if "error" in msg:
            raise RuntimeError(msg["error"])
    _parallel([lambda n=n: _client(lab.node(n).docker_host).api.pull(remote, tag=tag, auth_config=auth)
               for n in names])
    took = time.perf_counter() - t0
    host.api.remove_image(f"{remote}:{tag}", noprune=True)
    for n in names:
        _client(lab.node(n).docker_host).api.remove_image(f"{remote}:{tag}", force=True)
    _delete_from_lab_registry(lab, auth, "bench-xfer/blob")
    return took


def _delete_from_lab_registry(lab, auth: dict, repository: str) -> None:
    """The bench's manifests out of the lab registry (its blobs go at the next garbage
    collection, `orch prune`'s)."""
    from orchestrator.core.environments import RegistryCredentials
    from orchestrator.io.registry_client import RegistryClient

    client = RegistryClient(lab.registry, ca_file=lab.ca_cert,
                            credentials=RegistryCredentials(auth["username"], auth["password"]))
    resp = client.session.get(f"{client.base}/v2/{repository}/tags/list", verify=str(lab.ca_cert),
                              auth=(auth["username"], auth["password"]), timeout=30)
    for tag in (resp.json().get("tags") or []) if resp.status_code == 200 else []:
        digest = client.manifest_digest(repository, tag)
        if digest:
            client.delete_manifest(repository, digest)


def _engine_floor(host) -> float:
    """The controller engine's push of a fresh 200 MB image to a Distribution on this
    machine's loopback (no SSH, no TLS): what any registry-based move costs at least
    (the engine gzips every layer)."""
    import socket

    with tempfile.TemporaryDirectory() as d:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = Path(d, "registry.json")
        cfg.write_text(f'{{"version": "0.1", "log": {{"level": "error"}}, "storage": {{"filesystem": '
                       f'{{"rootdirectory": "{d}/storage"}}}}, "http": {{"addr": "127.0.0.1:{port}"}}}}')
        proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            ref = _build(host, f"127.0.0.1:{port}/bench-xfer-{uuid.uuid4().hex[:10]}/blob", "v1")
            try:
                t0 = time.perf_counter()
                for msg in host.api.push(ref.rsplit(":", 1)[0], tag="v1", stream=True, decode=True):
                    if "error" in msg:
                        raise RuntimeError(msg["error"])
                return time.perf_counter() - t0
            finally:
                host.api.remove_image(ref, force=True)
        finally:
            proc.terminate()
            proc.wait(10)


def _forget(lab, names: list[str], pinned: str) -> None:
    """The bench image out of the nodes' engines and out of their transfer registries'
    repositories (its blob data goes at the end: _remove_blobs)."""
    import glob

    for n in names:
        try:
            _client(lab.node(n).docker_host).api.remove_image(pinned, force=True)
        except Exception:  # noqa: BLE001
            pass
    repo = pinned.split("/", 1)[1].split("@")[0]
    for d in glob.glob(f"/var/lib/orch-agent/engines/*/transfer/storage/docker/registry/v2/repositories/{repo}"):
        shutil.rmtree(d, ignore_errors=True)
        try:
            Path(d).parent.rmdir()  # bench-xfer-<id>/, now empty
        except OSError:
            pass


def _remove_blobs(before: set[str]) -> None:
    """Blob data the bench added to the transfer registries (random, never used again)."""
    import glob

    for d in glob.glob("/var/lib/orch-agent/engines/*/transfer/storage/docker/registry/v2/blobs/sha256/*/*"):
        if d not in before:
            shutil.rmtree(d, ignore_errors=True)


def transfer(runs: int) -> list[Row]:
    import glob

    from orchestrator.lab import lab_info

    lab = lab_info()
    host = _client()
    before = set(glob.glob("/var/lib/orch-agent/engines/*/transfer/storage/docker/registry/v2/blobs/sha256/*/*"))
    rows: list[Row] = []
    try:
        for count in COUNTS:
            names = NODES[:count]
            vs_save = Row(f"registry-less transfer of a 200 MB image (4 x 50 MB random layers) to {count} node(s) "
                          "vs `docker save | ssh docker load`", "s",
                          baseline_name="`docker save | ssh node docker load`, nodes in parallel")
            vs_reg = Row(f"the same vs a registry push + pull ({count} node(s))", "s", level=1,
                         baseline_name="docker push to the lab registry, then every node pulls, in parallel")
            moved_row = Row(f"of which the transfer into the nodes' loopback registries ({count} node(s))", "s",
                            level=1)
            sent: list[int] = []
            for _ in range(runs):
                with tempfile.TemporaryDirectory() as tmp:
                    tag = uuid.uuid4().hex[:10]
                    ref = _build(host, f"bench-xfer-{tag}/blob", "v1")
                    try:
                        took, moved, nbytes = _registryless(lab, names, host, ref, Path(tmp))
                    finally:
                        host.api.remove_image(ref, force=True)
                vs_save.samples.append(took)
                vs_reg.samples.append(took)
                moved_row.samples.append(moved)
                sent.append(nbytes)
                ref = _build(host, f"bench-xfer-{uuid.uuid4().hex[:10]}/blob", "v1")
                try:
                    vs_save.baseline.append(_save_load(lab, names, ref))
                finally:
                    for n in names:
                        try:
                            _client(lab.node(n).docker_host).api.remove_image(ref, force=True)
                        except Exception:  # noqa: BLE001
                            pass
                    host.api.remove_image(ref, force=True)
                ref = _build(host, f"bench-xfer-{uuid.uuid4().hex[:10]}/blob", "v1")
                try:
                    vs_reg.baseline.append(_registry(lab, names, host, ref))
                finally:
                    host.api.remove_image(ref, force=True)
            vs_save.note = (f"bytes sent over SSH (median): {sorted(sent)[len(sent) // 2]:,} B for {count} node(s); "
                            "orch: engine push to the first node, each blob read from it once and written to "
                            "the other nodes at once through the controller, then every node's engine pulls "
                            "from its own loopback; save | load sends the layers uncompressed (no gzip) and "
                            "every layer every time")
            rows += [vs_save, vs_reg, moved_row]
            if count == 1:
                floor = Row("floor: the controller engine's push of the same kind of image to a registry on its "
                            "own loopback (no SSH, no TLS)", "s", level=1,
                            note="what every registry-based move costs at least: the engine gzips each layer "
                                 "as it pushes (random bytes do not shrink)")
                floor.samples = [_engine_floor(host) for _ in range(runs)]
                rows.append(floor)
                again = Row("after a one-line change (a new 1-line layer on the same 200 MB), 1 node: orch "
                            "without a registry vs `docker save | ssh docker load`", "s",
                            baseline_name="`docker save | ssh node docker load` of the new image")
                sent2, tars = [], []
                for _ in range(runs):
                    with tempfile.TemporaryDirectory() as tmp:
                        took, nbytes, base, tar = _second(lab, host, Path(tmp))
                    again.samples.append(took)
                    again.baseline.append(base)
                    sent2.append(nbytes)
                    tars.append(tar)
                again.note = (f"bytes sent: orch {sorted(sent2)[len(sent2) // 2]:,} B (the changed layer, its "
                              f"config and manifest, HTTP), save | load {sorted(tars)[len(tars) // 2]:,} B "
                              "(the whole image, every time)")
                rows.append(again)
    finally:
        _remove_blobs(before)
    return rows

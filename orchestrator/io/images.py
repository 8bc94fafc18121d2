"""Build, tag, push and pin the project's images, so nodes only ever run `repo@sha256:...`.

Pure planning, effectful applying:

    version = compute_version(version_paths(project), override)      # git short hash (+ -dirty-<hash>)
    jobs = plan_builds(project, env, version.version)                # pure (core.images): tag, context, args, labels
    check_registry(env)                                              # fail fast: down / bad credentials
    built = build(jobs, on_output)                                   # controller's Docker Engine (SDK)
    pushed = push(jobs, env, on_output)                              # with the env's credentials; digest read back
    pins = resolve_images(project, env)                              # `image:` refs -> digests
    # or all of it at once:
    images = prepare_images(project, env, version=None, build=True, on_output=print_line)
    images.pins  # {"web": "10.250.0.1:5000/hello/web@sha256:...", "cache": "busybox@sha256:..."}

Tags are `<registry>/<project>/<service>:<version>`. A service with `build:` is always
tagged that way (its `image:` name, if any, is not used). The version is the git
commit's 12-digit short hash of the repository holding the project, with
`-dirty-<12 hex>` when the project's files differ from that commit (the suffix hashes
the diff and the untracked files, so the same edit gives the same tag); outside git,
`src-<12 hex>` hashes the build contexts. `--version` overrides all of it.

Built images carry only the Compose `labels:` plus io.orch.project / io.orch.service,
never the version: a service whose sources did not change rebuilds (from the cache) to
the same image, so its digest, and its containers, stay as they are.

`image:` references are pinned through the registry API: the environment's registry
with its credentials when the reference names it; Docker Hub names (`busybox`,
`debian:bookworm-slim`) through `registry.mirror` when the environment file sets one
(the lab: 10.250.0.1:5001, the nodes' registry-mirrors entry), else Docker Hub itself;
a registry listed under `registries:` with that entry's CA and credentials; any other
registry anonymously. The pin keeps the name as written: `busybox@sha256:..`,
which every node resolves through its own mirror setting to the same bytes.

Registry credentials go to the engine per request (the SDK's auth_config, an HTTP
header) and are never written to a file or printed; `pull_auth()` gives the agent
the same per-request credentials per image, and only those of the image's own registry.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.images import BuildJob, VersionInfo, _is_remote, check_version, plan_builds
from orchestrator.errors import InputError, OrchError, Problem
from orchestrator.limits import open_regular
from orchestrator.io.registry_client import (
    ImageNotFound,
    ImageRef,
    PingResult,
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    RegistryTLSError,
    RegistryUnavailable,
    parse_reference,
)

SHORT_HASH = 12
BUILD_TIMEOUT = 3600  # seconds the SDK waits on a quiet build step (a long RUN)
FAILED_STEP_LINES = 40

OnOutput = Callable[[str, str], None]  # (service, line)


# --------------------------------------------------------------------------- errors


class BuildFailed(OrchError):
    """A build step failed: the command fails with that step's output; nothing was pushed."""

    def __init__(self, service: str, step: str, error: str, output: list[str]):
        lines = output[-FAILED_STEP_LINES:]
        text = f"building {service} failed"
        if step:
            text += f" at {step}"
        text += f": {error.strip()}"
        if lines:
            text += f"\nOutput of that step (last {len(lines)} lines):\n" + "\n".join(f"  | {ln}" for ln in lines)
        super().__init__(
            text,
            fix="fix the Dockerfile or the sources and run the command again; nothing was pushed and no "
            "node was touched.",
            details={"service": service, "step": step, "error": error.strip(), "output": lines},
        )
        self.service = service
        self.step = step
        self.output = lines


class EngineUnavailable(OrchError):
    """The controller's Docker Engine (for building and pushing) cannot be reached."""


class PushFailed(OrchError):
    pass


# --------------------------------------------------------------------------- version


def version_paths(project: Any, services: Iterable[str] | None = None) -> list[Path]:
    """What the version describes: the project folder, plus build contexts outside it."""
    base = Path(project.working_dir).resolve()
    out = [base]
    wanted = set(services) if services else None
    for name, svc in sorted(project.services.items()):
        if svc.build is None or (wanted is not None and name not in wanted):
            continue
        ctx = svc.build.context
        if _is_remote(ctx):
            continue
        p = Path(ctx).resolve()
        if not any(p == q or q in p.parents for q in out):
            out.append(p)
    return out


def compute_version(paths: list[Path], override: str | None = None, *, run: Callable[..., Any] = subprocess.run
                    ) -> VersionInfo:
    """The version images are tagged with (see the module docstring)."""
    if override:
        return VersionInfo(check_version(override), "override")
    paths = [Path(p).resolve() for p in paths]
    top = _git(run, paths[0], "rev-parse", "--show-toplevel")
    commit = _git(run, paths[0], "rev-parse", "--verify", "-q", "HEAD^{commit}") if top else None
    if not top or not commit:
        return VersionInfo(f"src-{content_hash(paths)}", "content")
    top_path = Path(top.decode().strip()).resolve()
    inside = [str(p) for p in paths if p == top_path or top_path in p.parents]
    outside = [p for p in paths if str(p) not in inside]
    short = commit.decode().strip()[:SHORT_HASH]
    status = _git(run, top_path, "status", "--porcelain", "--untracked-files=all", "--", *inside) or b""
    if not status.strip() and not outside:
        return VersionInfo(short, "git", commit.decode().strip(), False)
    h = hashlib.sha256()
    h.update(_git(run, top_path, "diff", "--binary", "HEAD", "--", *inside) or b"")
    untracked = (_git(run, top_path, "ls-files", "-z", "--others", "--exclude-standard", "--", *inside) or b"")
    for rel in sorted(x for x in untracked.split(b"\0") if x):
        h.update(b"\0untracked\0" + rel + b"\0")
        _hash_file(h, top_path / rel.decode())
    if outside:
        h.update(b"\0outside\0" + content_hash(outside).encode())
    if not status.strip() and outside:
        # Contexts outside the repository are not versioned by the commit: always hash them.
        return VersionInfo(f"{short}-src-{content_hash(outside)}", "git", commit.decode().strip(), True)
    return VersionInfo(f"{short}-dirty-{h.hexdigest()[:SHORT_HASH]}", "git", commit.decode().strip(), True)


def _git(run: Callable[..., Any], cwd: Path, *args: str) -> bytes | None:
    try:
        cp = run(["git", "-C", str(cwd), *args], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return cp.stdout if cp.returncode == 0 else None


def content_hash(paths: Iterable[Path]) -> str:
    """Hash of every file's relative path and bytes under paths (skipping .git), 12 hex."""
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        if root.is_file():
            h.update(root.name.encode() + b"\0")
            _hash_file(h, root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            for name in sorted(filenames):
                p = Path(dirpath) / name
                rel = p.relative_to(root).as_posix()
                h.update(b"\0" + rel.encode() + b"\0")
                _hash_file(h, p)
    return h.hexdigest()[:SHORT_HASH]


def _hash_file(h: Any, path: Path) -> None:
    """Add a regular file's bytes to h, in chunks (build contexts may hold large files).

    Devices, FIFOs and sockets add nothing: /dev/zero or a FIFO in a context would
    make the read never end.
    """
    try:
        fd = open_regular(path)
    except OSError:
        return
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


# --------------------------------------------------------------------------- engine


def docker_client(timeout: float = BUILD_TIMEOUT) -> Any:
    """The controller's Docker Engine (DOCKER_HOST, else the local socket)."""
    try:
        import docker

        client = docker.from_env(timeout=int(timeout))
        client.api.ping()
        return client
    except Exception as err:  # DockerException, requests errors, OSError
        raise EngineUnavailable(
            f"cannot reach the Docker Engine on this machine to build and push images: {err}.",
            fix="start Docker Engine here (or point DOCKER_HOST at one), or run with --no-build when the "
            "images are already in the registry.",
        ) from None


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildResult:
    service: str
    ref: str  # repository:tag
    image_id: str  # sha256:... (the image config digest)
    seconds: float
    steps: int
    cached_steps: int


_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def build(jobs: Iterable[BuildJob], on_output: OnOutput | None = None, client: Any = None) -> list[BuildResult]:
    """Build each job in order with the controller's engine; stream output to on_output.

    The first failing step raises BuildFailed with that step's output.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    client = client or docker_client()
    return [_build_one(client, job, on_output or (lambda s, ln: None)) for job in jobs]


def _build_one(client: Any, job: BuildJob, on_output: OnOutput) -> BuildResult:
    start = time.monotonic()
    inline_file = None
    dockerfile = job.dockerfile
    if job.dockerfile_inline is not None:
        fd, inline_file = tempfile.mkstemp(prefix="orch-dockerfile-", suffix=".Dockerfile")
        with os.fdopen(fd, "w") as fh:
            fh.write(job.dockerfile_inline)
        dockerfile = inline_file  # outside the context: the SDK adds it to the context tarball
    kw: dict[str, Any] = dict(
        path=job.context, tag=job.ref, dockerfile=dockerfile, buildargs=dict(job.args) or None,
        labels=dict(job.labels) or None, target=job.target, rm=True, forcerm=True, decode=True,
        nocache=job.no_cache, pull=job.pull,
    )
    if job.network:
        kw["network_mode"] = job.network
    if job.shm_size:
        kw["shm_size"] = job.shm_size
    if job.extra_hosts:
        kw["extra_hosts"] = dict(job.extra_hosts)
    if job.cache_from:
        kw["cache_from"] = list(job.cache_from)
    step, step_lines, image_id = "", [], ""
    steps = cached = 0
    try:
        try:
            stream = client.api.build(**kw)
            for msg in stream:
                if "error" in msg or "errorDetail" in msg:
                    detail = msg.get("errorDetail") or {}
                    raise BuildFailed(job.service, step, msg.get("error") or detail.get("message", "build failed"),
                                      step_lines)
                aux = msg.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = aux["ID"]
                text = msg.get("stream")
                if not text:
                    continue
                for line in text.splitlines():
                    m = _STEP_RE.match(line)
                    if m:
                        step, step_lines = f"step {m.group(1)}/{m.group(2)} ({m.group(3).strip()})", []
                        steps += 1
                    else:
                        step_lines.append(line)
                        if line.strip() == "---> Using cache":
                            cached += 1
                    if line.strip():
                        on_output(job.service, line)
        except BuildFailed:
            raise
        except _engine_errors() as err:
            raise BuildFailed(job.service, step, _explain(err), step_lines) from None
    finally:
        if inline_file:
            os.unlink(inline_file)
    if not image_id:
        image_id = client.api.inspect_image(job.ref)["Id"]
    return BuildResult(job.service, job.ref, image_id, round(time.monotonic() - start, 2), steps, cached)


def _engine_errors() -> tuple[type[BaseException], ...]:
    """What the SDK raises when the engine refuses or the connection to it fails."""
    import docker.errors
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def _explain(err: Exception) -> str:
    explanation = getattr(err, "explanation", None)
    if explanation:
        return explanation if isinstance(explanation, str) else explanation.decode("utf-8", "replace")
    return str(err)


# --------------------------------------------------------------------------- registry


def registry_client(env: Any, *, environ: Mapping[str, str] | None = None, timeout: float = 10.0,
                    anonymous: bool = False) -> RegistryClient:
    """A client for the environment's registry, with its credentials (unless anonymous)."""
    spec = env.registry
    if not spec.address:
        raise InputError(Problem(
            f"environment {env.name} names no registry",
            file=spec.source or None, key="registry.address",
            fix="add `registry: {address: HOST:PORT, ca_file: ..., credentials_file: ...}` to the environment "
            "file (the lab's registry is 10.250.0.1:5000).",
        ))
    creds = None if anonymous else spec.credentials(environ)
    return RegistryClient(spec.address, ca_file=spec.ca_file, credentials=creds, timeout=timeout)


def check_registry(env: Any, *, environ: Mapping[str, str] | None = None, client: RegistryClient | None = None,
                   timeout: float = 5.0) -> PingResult:
    """Preflight: the registry answers and accepts the credentials, else raise (exit 1).

    Takes about a round trip when all is well, and fails within `timeout` when the
    registry is down; call it before building, pushing or touching any node.
    """
    client = client or registry_client(env, environ=environ, timeout=timeout)
    result = client.ping()
    where = f"registry {client.address} (environment {env.name})"
    untouched = "Nothing was built or pushed and no node was touched."
    if result.status == "ok":
        return result
    if result.status == "down":
        raise RegistryUnavailable(
            f"{where} is not reachable: {result.detail}. {untouched}",
            registry=client.address,
            fix="start the registry (the lab: `orch lab up`) or fix registry.address in "
            f"{env.registry.source or 'the environment file'}, then run the command again.",
        )
    if result.status == "tls":
        raise RegistryTLSError(
            f"{where}: {result.detail}. {untouched}",
            registry=client.address,
            fix="point registry.ca_file at the CA that signed the registry's certificate (the lab: "
            "/var/lib/orch-lab/ca.crt).",
        )
    if result.status == "unauthorized":
        source = _credential_source(env.registry)
        raise RegistryAuthError(
            f"{where}: {result.detail}{source}. {untouched}",
            registry=client.address,
            fix="set the right user and password (CI: as secret variables) or fix the credentials file; "
            "`docker login` with the same values shows whether they work.",
        )
    raise RegistryUnavailable(f"{where}: {result.detail}. {untouched}", registry=client.address,
                              fix="check registry.address in the environment file and the registry's logs.")


def _credential_source(spec: Any) -> str:
    parts = []
    if spec.username_env or spec.password_env:
        parts.append(" / ".join(x for x in (spec.username_env, spec.password_env) if x))
    if spec.credentials_file:
        parts.append(f"credentials_file {spec.credentials_file}")
    if spec.password_file:
        parts.append(f"password_file {spec.password_file}")
    return f" (from {', '.join(parts)})" if parts else ""


def pull_auth(env: Any, image: str, *, environ: Mapping[str, str] | None = None,
              cache: dict[str, Any] | None = None) -> dict[str, str] | None:
    """The `auth` of an agent `rollout`/`apply` for this image: the credentials of the
    registry entry (`registry:` or `registries:`) whose address is the image's registry,
    else None. They never go elsewhere (another registry, Docker Hub behind a mirror).
    `cache` (address -> credentials) resolves each entry's credentials once."""
    from agent.wire.protocol import BadRequest, image_registry

    try:
        registry = image_registry(image)
    except BadRequest:
        return None
    spec = env.registry_for(registry) if env is not None else None
    if spec is None:
        return None
    if cache is None:
        creds = spec.credentials(environ)
    else:
        if spec.address not in cache:
            cache[spec.address] = spec.credentials(environ)
        creds = cache[spec.address]
    if creds is None:
        return None
    return {"username": creds.username, "password": creds.password, "serveraddress": spec.address}


# --------------------------------------------------------------------------- push


@dataclass(frozen=True)
class PushResult:
    service: str
    ref: str  # repository:tag as pushed
    digest: str  # sha256:... read back from the registry
    bytes_pushed: int  # compressed bytes of layers uploaded + config (if new) + manifest
    layers_pushed: int
    layers_reused: int  # already in the repository
    layers_mounted: int  # mounted from another repository of the registry (no bytes travel)
    image_bytes: int  # compressed size of all layers (what a first push would send)
    seconds: float

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def pinned(self) -> str:
        return f"{self.repository}@{self.digest}"

    def to_json(self) -> dict:
        return {"service": self.service, "tag": self.ref, "digest": self.digest, "image": self.pinned,
                "bytes_pushed": self.bytes_pushed, "layers_pushed": self.layers_pushed,
                "layers_reused": self.layers_reused, "layers_mounted": self.layers_mounted,
                "image_bytes": self.image_bytes, "seconds": self.seconds}


def push(jobs: Iterable[BuildJob], env: Any, on_output: OnOutput | None = None, client: Any = None,
         registry: RegistryClient | None = None, environ: Mapping[str, str] | None = None) -> list[PushResult]:
    """Push each job's built image with the environment's credentials; read back digests.

    The image must exist in the controller's engine (build first).
    """
    jobs = list(jobs)
    if not jobs:
        return []
    registry = registry or registry_client(env, environ=environ)
    creds = env.registry.credentials(environ)
    auth = {"username": creds.username, "password": creds.password,
            "serveraddress": env.registry.address} if creds else None
    client = client or docker_client()
    out = on_output or (lambda s, ln: None)
    return [_push_one(client, registry, job, auth, out) for job in jobs]


def _push_one(client: Any, registry: RegistryClient, job: BuildJob, auth: dict | None, on_output: OnOutput
              ) -> PushResult:
    start = time.monotonic()
    try:
        image_id = client.api.inspect_image(job.ref)["Id"]
    except Exception:
        raise PushFailed(
            f"{job.service}: the image {job.ref} is not in this machine's Docker Engine.",
            fix="build it first (`orch build --env ENV`), with the same --version if you gave one.",
        ) from None
    config_new = not registry.blob_exists(job.registry_path, image_id)
    statuses: dict[str, str] = {}
    aux_digest, manifest_size = None, 0
    try:
        stream = client.api.push(job.repository, tag=job.tag, stream=True, decode=True, auth_config=auth)
        for msg in stream:
            if "error" in msg or "errorDetail" in msg:
                text = msg.get("error") or (msg.get("errorDetail") or {}).get("message", "push failed")
                raise _push_error(job, text)
            aux = msg.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                aux_digest, manifest_size = aux["Digest"], int(aux.get("Size") or 0)
            status, lid = msg.get("status", ""), msg.get("id", "")
            if lid and (status in ("Pushed", "Layer already exists") or status.startswith("Mounted from")):
                statuses[lid] = status
            if status and status not in ("Pushing", "Waiting", "Preparing"):
                on_output(job.service, f"{lid}: {status}" if lid else status)
    except (PushFailed, RegistryError):
        raise
    except _engine_errors() as err:
        raise _push_error(job, _explain(err)) from None
    digest = registry.manifest_digest(job.registry_path, job.tag)
    if digest is None:
        raise PushFailed(f"{job.service}: pushed {job.ref}, but the registry does not list that tag.",
                         fix="check the registry's storage and logs, then push again.")
    if aux_digest and aux_digest != digest:
        raise PushFailed(f"{job.service}: the engine pushed {aux_digest} but the registry now serves {digest} for "
                         f"{job.ref} (another push of the same tag at the same time?).",
                         fix="push again; use distinct --version values for concurrent builds.")
    layers = registry.layers(job.registry_path, digest)
    pushed_ids = {lid for lid, st in statuses.items() if st == "Pushed"}
    mounted = sum(1 for st in statuses.values() if st.startswith("Mounted from"))
    pushed_layers = [ly for ly in layers if ly.diff_id.split(":")[-1][:12] in pushed_ids]
    config_size = 0
    if config_new:
        doc = registry.manifest(job.registry_path, digest).json()
        config_size = int((doc.get("config") or {}).get("size", 0))
    return PushResult(
        service=job.service, ref=job.ref, digest=digest,
        bytes_pushed=sum(ly.size for ly in pushed_layers) + config_size + manifest_size,
        layers_pushed=len(pushed_layers), layers_reused=len(layers) - len(pushed_layers) - mounted,
        layers_mounted=mounted, image_bytes=sum(ly.size for ly in layers),
        seconds=round(time.monotonic() - start, 2),
    )


def _push_error(job: BuildJob, text: str) -> OrchError:
    low = text.lower()
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        return RegistryAuthError(
            f"{job.service}: the registry refused the push of {job.ref}: {text.strip()}",
            registry=job.registry,
            fix="check the registry credentials in the environment file and the user's push rights.",
        )
    if "connection refused" in low or "no such host" in low or "timeout" in low:
        return RegistryUnavailable(f"{job.service}: pushing {job.ref} failed: {text.strip()}",
                                   registry=job.registry, fix="check that the registry is up, then push again.")
    return PushFailed(f"{job.service}: pushing {job.ref} failed: {text.strip()}",
                      fix="check the registry's logs and free space, then push again.")


# --------------------------------------------------------------------------- pinning


def resolve_images(project: Any, env: Any, services: Iterable[str] | None = None, *,
                   environ: Mapping[str, str] | None = None,
                   clients: dict[str, RegistryClient] | None = None) -> dict[str, str]:
    """{service: "name@sha256:..."} for services with `image:` and no `build:`.

    See the module docstring for which registry answers for which reference. Raises
    ImageNotFound (exit 2) for a tag that does not exist, RegistryError otherwise.
    """
    clients = {} if clients is None else clients
    wanted = set(services) if services else None
    pins: dict[str, str] = {}
    cache: dict[str, str] = {}
    for name in sorted(project.services):
        svc = project.services[name]
        if svc.build is not None or not svc.image or (wanted is not None and name not in wanted):
            continue
        try:
            ref = parse_reference(svc.image)
        except ValueError as err:
            raise InputError(project.problem(str(err), f"services.{name}.image",
                                             fix="write e.g. `image: busybox:1.36` or `image: REGISTRY/NAME:TAG`."))
        if ref.digest:
            pins[name] = ref.pinned(ref.digest)
            continue
        if svc.image in cache:
            pins[name] = cache[svc.image]
            continue
        client, via = _client_for(ref, env, environ, clients)
        try:
            digest = client.manifest_digest(ref.repository, ref.reference)
        except RegistryError as err:
            err.message = f"service {name}: cannot pin image {svc.image} ({via}): {err.message}"
            raise
        if digest is None:
            hint = ""
            if via.startswith("mirror"):
                hint = " The mirror serves only what was published to it (the lab: busybox and debian)."
            raise ImageNotFound(
                f"service {name}: image {svc.image} does not exist ({via}).{hint}",
                fix="check the image name and tag in the Compose file.",
                details={"service": name, "image": svc.image},
            )
        cache[svc.image] = pins[name] = ref.pinned(digest)
    return pins


def client_for_image(ref: ImageRef, env: Any, clients: dict[str, RegistryClient],
                     environ: Mapping[str, str] | None = None) -> RegistryClient:
    """The client for the registry that holds REF, as ENV reaches it (its registry with its
    credentials, its mirror for docker.io, a `registries:` entry, else anonymous); one per
    registry in CLIENTS."""
    return _client_for(ref, env, environ, clients)[0]


def _client_for(ref: ImageRef, env: Any, environ: Mapping[str, str] | None, clients: dict[str, RegistryClient]
                ) -> tuple[RegistryClient, str]:
    spec = env.registry if env is not None else None
    other = env.registry_for(ref.registry) if env is not None else None
    if spec is not None and spec.address and ref.registry == spec.address:
        key, via = "env", f"registry {spec.address}"
        if key not in clients:
            clients[key] = registry_client(env, environ=environ)
    elif spec is not None and spec.mirror and (ref.is_docker_hub or ref.registry == spec.mirror):
        key, via = "mirror", f"mirror {spec.mirror} of docker.io"
        if key not in clients:
            clients[key] = RegistryClient(spec.mirror, ca_file=spec.ca_file)
    elif other is not None:  # a `registries:` entry: its own CA and credentials, for its host only
        key, via = f"registries:{other.address}", f"registry {other.address} ({other.key})"
        if key not in clients:
            clients[key] = RegistryClient(other.address, ca_file=other.ca_file,
                                          credentials=other.credentials(environ))
    else:
        key, via = ref.registry, f"registry {ref.registry}"
        if key not in clients:
            clients[key] = RegistryClient(ref.registry)
    return clients[key], via


# --------------------------------------------------------------------------- all at once


@dataclass
class ImageSet:
    """What `orch up` deploys: every service's pinned image."""

    version: VersionInfo
    pins: dict[str, str]  # service -> repo@sha256:... (built and `image:` services)
    builds: list[BuildResult] = field(default_factory=list)
    pushes: list[PushResult] = field(default_factory=list)
    jobs: list[BuildJob] = field(default_factory=list)
    # Without a registry: service -> the controller engine's repository:tag, moved to the
    # nodes under the lock (app.transfer), which pins it; pins holds that tag until then.
    local: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"version": self.version.version, "version_source": self.version.source,
                "images": dict(sorted(self.pins.items())), "pushed": [p.to_json() for p in self.pushes]}


def prepare_images(project: Any, env: Any, *, version: str | None = None, build_images: bool = True,
                   services: Iterable[str] | None = None, on_output: OnOutput | None = None,
                   environ: Mapping[str, str] | None = None, client: Any = None,
                   registry: RegistryClient | None = None) -> ImageSet:
    """Check the registry, build and push (or, with build_images=False, look the version's
    tags up in the registry) and pin `image:` references: nothing touches a node."""
    if not env.registry.address and any(s.build is not None for s in project.services.values()):
        from orchestrator.io.transfer import prepare_local  # no registry: the nodes get them over SSH

        return prepare_local(project, env, version=version, build_images=build_images, services=services,
                             on_output=on_output, environ=environ, client=client)
    services = list(services) if services else None
    info = compute_version(version_paths(project, services), version)
    jobs = plan_builds(project, env, info.version, services, environ)
    registry = registry or (registry_client(env, environ=environ) if env.registry.address else None)
    if jobs or _uses_env_registry(project, env, services):
        check_registry(env, environ=environ, client=registry)
    pins: dict[str, str] = {}
    builds: list[BuildResult] = []
    pushes: list[PushResult] = []
    if jobs and build_images:
        client = client or docker_client()
        builds = build(jobs, on_output, client)
        pushes = push(jobs, env, on_output, client, registry, environ)
        pins.update({p.service: p.pinned for p in pushes})
    for job in jobs if not build_images else []:
        digest = registry.manifest_digest(job.registry_path, job.tag)
        if digest is None:
            raise ImageNotFound(
                f"{job.service}: {job.ref} is not in the registry, and --no-build was given.",
                fix="build and push it (drop --no-build, or run `orch push --env ENV`), or give the --version "
                "that was pushed.",
            )
        pins[job.service] = f"{job.repository}@{digest}"
    clients = {"env": registry} if registry is not None else {}
    pins.update(resolve_images(project, env, services, environ=environ, clients=clients))
    return ImageSet(info, pins, builds, pushes, jobs)


def _uses_env_registry(project: Any, env: Any, services: list[str] | None) -> bool:
    address = env.registry.address
    if not address:
        return False
    for name, svc in project.services.items():
        if services and name not in services:
            continue
        if svc.build is None and svc.image:
            try:
                if parse_reference(svc.image).registry == address:
                    return True
            except ValueError:
                continue
    return False

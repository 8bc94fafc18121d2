"""A thin wrapper over the docker SDK: the only module that talks to Docker Engine.

Operations (agent.operations) use this interface and nothing below it, so unit tests
swap in an in-memory fake with the same methods. Containers are created from a raw
Engine API body built by agent.create (pure data, unit-tested), not from SDK kwargs.
Registry credentials are passed to the engine per pull (X-Registry-Auth header) and
never written to disk.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from agent.wire import labels as L
from agent.wire.protocol import ENGINE, MAX_LOG_LINE, NOT_FOUND, PULL, AgentError, split_image

NS = 1_000_000_000


@dataclass
class ContainerInfo:
    id: str
    name: str
    labels: Dict[str, str]
    image: str  # the reference it was created from
    image_id: str  # sha256:... of the local image
    state: str  # created | running | restarting | paused | exited | dead | removing
    health: str = ""  # "" (no healthcheck) | starting | healthy | unhealthy
    exit_code: int = 0
    restart_count: int = 0
    oom_killed: bool = False
    error: str = ""
    ports: List[Dict[str, Any]] = field(default_factory=list)
    created: str = ""
    started_at: str = ""
    finished_at: str = ""
    # The effective healthcheck (from the spec or the image), seconds; None when none.
    healthcheck: Optional[Dict[str, Any]] = None
    health_log: List[str] = field(default_factory=list)  # the last probes' output, oldest first
    health_streak: int = 0  # consecutive failed probes (Docker's FailingStreak)
    health_exit: Optional[int] = None  # exit code of the last probe; None when none finished
    networks: List[str] = field(default_factory=list)
    binds: List[str] = field(default_factory=list)  # host paths bind-mounted (secret/config files among them)

    @property
    def project(self) -> str:
        return self.labels.get(L.PROJECT, "")

    @property
    def service(self) -> str:
        return self.labels.get(L.SERVICE, "")

    @property
    def replica(self) -> int:
        try:
            return int(self.labels.get(L.REPLICA, "0"))
        except ValueError:
            return 0

    @property
    def config_hash(self) -> str:
        return self.labels.get(L.CONFIG_HASH, "")

    def summary(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "project": self.project,
            "service": self.service,
            "replica": self.replica,
            "env": self.labels.get(L.ENV, ""),
            "release": self.labels.get(L.RELEASE, ""),
            "config_hash": self.config_hash,
            "config_parts": self.config_parts,
            "image": self.image,
            "image_id": self.image_id,
            "state": self.state,
            "health": self.health,
            "exit_code": self.exit_code,
            "restart_count": self.restart_count,
            "ports": self.ports,
            "created": self.created,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "networks": self.networks,
            "retired": L.is_retired(self.name),
        }

    @property
    def config_parts(self) -> Dict[str, str]:
        import json

        try:
            parts = json.loads(self.labels.get(L.CONFIG_PARTS) or "{}")
        except ValueError:
            return {}
        return parts if isinstance(parts, dict) else {}


def _last_probe_exit(log: Any) -> Optional[int]:
    if not log or not isinstance(log[-1], dict) or not isinstance(log[-1].get("ExitCode"), int):
        return None
    return log[-1]["ExitCode"]


def _secs(ns: Any, default: float) -> float:
    return (ns / NS) if isinstance(ns, (int, float)) and ns > 0 else default


def info_from_inspect(attrs: Dict[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    health = state.get("Health") or {}
    hc = config.get("Healthcheck") or None
    healthcheck = None
    if hc and hc.get("Test") and hc["Test"][0] != "NONE":
        # Docker's defaults when a field is 0: 30s interval, 30s timeout, 3 retries.
        healthcheck = {
            "interval": _secs(hc.get("Interval"), 30.0),
            "timeout": _secs(hc.get("Timeout"), 30.0),
            "retries": hc.get("Retries") or 3,
            "start_period": _secs(hc.get("StartPeriod"), 0.0),
        }
    ports = []
    for key, bindings in sorted(((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items()):
        target, _, proto = key.partition("/")
        for b in bindings or []:
            ports.append(
                {"target": int(target), "protocol": proto or "tcp", "host_ip": b.get("HostIp", ""),
                 "published": int(b["HostPort"]) if b.get("HostPort") else None}
            )
    return ContainerInfo(
        id=attrs.get("Id", ""),
        name=(attrs.get("Name") or "").lstrip("/"),
        labels=config.get("Labels") or {},
        image=config.get("Image", ""),
        image_id=attrs.get("Image", ""),
        state=state.get("Status", ""),
        health=health.get("Status", "") if health else "",
        exit_code=state.get("ExitCode", 0) or 0,
        restart_count=attrs.get("RestartCount", 0) or 0,
        oom_killed=bool(state.get("OOMKilled")),
        error=state.get("Error", "") or "",
        ports=ports,
        created=attrs.get("Created", ""),
        started_at=state.get("StartedAt", ""),
        finished_at=state.get("FinishedAt", ""),
        healthcheck=healthcheck,
        health_log=[(h.get("Output") or "").strip() for h in (health.get("Log") or [])][-3:],
        health_streak=int(health.get("FailingStreak") or 0),
        health_exit=_last_probe_exit(health.get("Log")),
        networks=sorted(((attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys()),
        binds=sorted(m["Source"] for m in attrs.get("Mounts") or [] if m.get("Type") == "bind" and m.get("Source")),
    )


def listed_from(summaries: Any) -> List[Tuple[str, Dict[str, str]]]:
    """(name, labels) of the Engine API's container list entries, by name."""
    out = [(((s.get("Names") or ["/"])[0]).lstrip("/"), dict(s.get("Labels") or {})) for s in summaries or []]
    return sorted(out, key=lambda item: item[0])


class Engine:
    """Docker Engine through the docker SDK (DOCKER_HOST etc. from the environment)."""

    def __init__(self, client: Any = None):
        import docker

        self._docker = docker
        self._errors = docker.errors
        try:
            self.client = client or docker.from_env(timeout=120)
            self.api = self.client.api
            self.api.ping()
        except Exception as exc:  # the SDK raises DockerException, requests errors, OSError
            raise AgentError(
                ENGINE,
                "cannot reach Docker Engine: %s" % exc,
                {"fix": "start Docker Engine on the node (systemctl start docker) and check DOCKER_HOST"},
            )

    def _call(self, what: str, fn: Callable, *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except self._errors.NotFound as exc:
            raise AgentError(NOT_FOUND, "%s: %s" % (what, _explain(exc)))
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "%s: %s" % (what, _explain(exc)))
        except Exception as exc:
            if isinstance(exc, AgentError):
                raise
            raise AgentError(ENGINE, "%s: %s" % (what, exc))

    # ------------------------------------------------------------------ engine

    def info(self) -> Dict[str, Any]:
        info = self._call("docker info", self.api.info)
        version = self._call("docker version", self.api.version)
        return {
            "id": info.get("ID", ""),
            "name": info.get("Name", ""),
            "version": version.get("Version", ""),
            "api_version": version.get("ApiVersion", ""),
            "os": info.get("OperatingSystem", ""),
            "arch": info.get("Architecture", ""),
            "kernel": info.get("KernelVersion", ""),
            "ncpu": info.get("NCPU", 0),
            "memory": info.get("MemTotal", 0),
            "root_dir": info.get("DockerRootDir", ""),
            "containers": info.get("Containers", 0),
        }

    def engine_id(self) -> str:
        return self._call("docker info", self.api.info).get("ID", "")

    # ------------------------------------------------------------------ containers

    def containers(self, label_filters: List[str]) -> List[ContainerInfo]:
        summaries = self._call(
            "list containers", self.api.containers, all=True, filters={"label": label_filters}
        )
        out = []
        for s in summaries:
            info = self.container(s["Id"])
            if info is not None:
                out.append(info)
        return sorted(out, key=lambda c: (c.project, c.service, c.replica, c.name))

    def listed(self, label_filters: List[str]) -> List[Tuple[str, Dict[str, str]]]:
        """(name, labels) of each container with these labels, from the list alone: an
        inspect waits while the engine starts or stops that container, a list does not
        (another service's rollout on this node must not wait for this one's start)."""
        summaries = self._call("list containers", self.api.containers, all=True, filters={"label": label_filters})
        return listed_from(summaries)

    def container(self, ref: str) -> Optional[ContainerInfo]:
        try:
            return info_from_inspect(self.api.inspect_container(ref))
        except self._errors.NotFound:
            return None
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "inspect container %s: %s" % (ref, _explain(exc)))

    def inspect(self, ref: str) -> Optional[Dict[str, Any]]:
        """The Engine API's inspect document (None: no such container)."""
        try:
            return self.api.inspect_container(ref)
        except self._errors.NotFound:
            return None
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "inspect container %s: %s" % (ref, _explain(exc)))

    def top(self, ref: str) -> Optional[Dict[str, Any]]:
        """{"Titles": [...], "Processes": [[...], ...]} of a running container (None: no such container)."""
        try:
            return self.api.top(ref)
        except self._errors.NotFound:
            return None
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "top of container %s: %s" % (ref[:12], _explain(exc)))

    def stats(self, ref: str) -> Optional[Dict[str, Any]]:
        """One Engine API stats document (stream=false: precpu_stats filled; about a second)."""
        try:
            return self.api.stats(ref, stream=False)
        except self._errors.NotFound:
            return None
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "stats of container %s: %s" % (ref[:12], _explain(exc)))

    def create(self, name: str, body: Dict[str, Any], extra_networks: List[Tuple[str, List[str]]]) -> str:
        """Create from a raw Engine API body; attach further networks before it starts."""
        created = self._call("create container %s" % name, self.api.create_container_from_config, body, name)
        cid = created["Id"]
        for net, aliases in extra_networks:
            self._call(
                "connect %s to network %s" % (name, net),
                self.api.connect_container_to_network, cid, net, aliases=aliases or None,
            )
        return cid

    def start(self, cid: str) -> None:
        self._call("start container %s" % cid[:12], self.api.start, cid)

    def rename(self, cid: str, name: str) -> None:
        self._call("rename container %s to %s" % (cid[:12], name), self.api.rename, cid, name)

    def stop(self, cid: str, timeout: Optional[float] = None) -> None:
        """Stop; timeout None lets the engine use the container's own StopTimeout."""
        try:
            self.api.stop(cid, timeout=None if timeout is None else int(timeout))
        except self._errors.NotFound:
            pass
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "stop container %s: %s" % (cid[:12], _explain(exc)))

    def remove(self, cid: str) -> None:
        try:
            self.api.remove_container(cid, force=True, v=False)
        except self._errors.NotFound:
            pass
        except self._errors.APIError as exc:
            if "already in progress" in str(exc):
                return
            raise AgentError(ENGINE, "remove container %s: %s" % (cid[:12], _explain(exc)))

    def logs(self, cid: str, tail: int) -> List[str]:
        try:
            raw = self.api.logs(cid, stdout=True, stderr=True, tail=tail, timestamps=False)
        except self._errors.APIError:
            return []
        # For failure messages: a very long line is cut (LineSplitter keeps all of it for `logs`).
        return [ln if len(ln) <= MAX_LOG_LINE else ln[:MAX_LOG_LINE] + "..."
                for ln in raw.decode("utf-8", "replace").splitlines()[-tail:]]

    def stream_logs(self, cid: str, tail: Any, follow: bool, since: Optional[int], timestamps: bool):
        """A closeable iterator of raw byte chunks (stdout and stderr interleaved)."""
        kw = {"stdout": True, "stderr": True, "stream": True, "follow": follow, "tail": tail,
              "timestamps": timestamps}
        if since:
            kw["since"] = since
        return self._call("logs of %s" % cid[:12], self.api.logs, cid, **kw)

    def exec_run(
        self, cid: str, cmd: List[str], env: Dict[str, str], user: str, workdir: str
    ) -> Tuple[Iterator[Tuple[Optional[bytes], Optional[bytes]]], Callable[[], int], Callable[[], None]]:
        """Start cmd in the container: (chunks of (stdout, stderr), exit_code(), close())."""
        kw: Dict[str, Any] = {"stdout": True, "stderr": True, "environment": env or None}
        if user:
            kw["user"] = user
        if workdir:
            kw["workdir"] = workdir
        ex = self._call("exec in %s" % cid[:12], self.api.exec_create, cid, cmd, **kw)
        stream = self._call("exec in %s" % cid[:12], self.api.exec_start, ex["Id"], stream=True, demux=True)

        def exit_code() -> int:
            code = self._call("exec inspect", self.api.exec_inspect, ex["Id"]).get("ExitCode")
            return -1 if code is None else int(code)

        def close() -> None:
            try:
                stream.close()  # type: ignore[attr-defined]
            except Exception:
                pass

        return stream, exit_code, close

    # ------------------------------------------------------------------ networks, volumes

    def networks(self, label_filters: List[str]) -> List[Dict[str, Any]]:
        nets = self._call("list networks", self.api.networks, filters={"label": label_filters})
        return sorted(
            ({"name": n["Name"], "id": n["Id"], "driver": n.get("Driver", ""), "labels": n.get("Labels") or {}}
             for n in nets),
            key=lambda n: n["name"],
        )

    def network(self, name: str) -> Optional[Dict[str, Any]]:
        try:
            n = self.api.inspect_network(name)
        except self._errors.NotFound:
            return None
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "inspect network %s: %s" % (name, _explain(exc)))
        subnets = [c.get("Subnet", "") for c in ((n.get("IPAM") or {}).get("Config") or []) if c.get("Subnet")]
        return {"name": n["Name"], "id": n["Id"], "driver": n.get("Driver", ""), "labels": n.get("Labels") or {},
                "containers": sorted((n.get("Containers") or {}).keys()), "subnets": subnets}

    def create_network(self, name: str, driver: str, internal: bool, attachable: bool, labels: Dict[str, str],
                       subnet: str = "", gateway: str = "", options: Optional[Dict[str, str]] = None) -> None:
        ipam = None
        if subnet:
            from docker.types import IPAMConfig, IPAMPool

            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet, gateway=gateway or None)])
        self._call(
            "create network %s" % name, self.api.create_network, name, driver=driver, internal=internal,
            attachable=attachable, labels=labels, check_duplicate=True, ipam=ipam, options=options or None,
        )

    def remove_network(self, name: str) -> None:
        try:
            self.api.remove_network(name)
        except self._errors.NotFound:
            pass
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "remove network %s: %s" % (name, _explain(exc)))

    def volumes(self, label_filters: List[str]) -> List[Dict[str, Any]]:
        vols = (self._call("list volumes", self.api.volumes, filters={"label": label_filters}) or {}).get("Volumes") or []
        return sorted(
            ({"name": v["Name"], "driver": v.get("Driver", ""), "labels": v.get("Labels") or {}} for v in vols),
            key=lambda v: v["name"],
        )

    def volume(self, name: str) -> Optional[Dict[str, Any]]:
        try:
            v = self.api.inspect_volume(name)
        except self._errors.NotFound:
            return None
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "inspect volume %s: %s" % (name, _explain(exc)))
        return {"name": v["Name"], "driver": v.get("Driver", ""), "labels": v.get("Labels") or {}}

    def create_volume(self, name: str, driver: str, driver_opts: Dict[str, str], labels: Dict[str, str]) -> None:
        self._call(
            "create volume %s" % name, self.api.create_volume, name, driver=driver,
            driver_opts=driver_opts or None, labels=labels,
        )

    def remove_volume(self, name: str) -> None:
        try:
            self.api.remove_volume(name)
        except self._errors.NotFound:
            pass
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "remove volume %s: %s" % (name, _explain(exc)))

    # ------------------------------------------------------------------ images

    def image_exists(self, ref: str) -> bool:
        try:
            self.api.inspect_image(ref)
            return True
        except self._errors.NotFound:
            return False
        except self._errors.APIError as exc:
            raise AgentError(ENGINE, "inspect image %s: %s" % (ref, _explain(exc)))

    def pull(self, ref: str, auth: Optional[Dict[str, str]], progress: Callable[[Dict[str, Any]], None]) -> None:
        repo, tag, digest = split_image(ref)
        kw: Dict[str, Any] = {"tag": digest or tag or "latest", "stream": True, "decode": True}
        if auth:
            kw["auth_config"] = auth  # sent as X-Registry-Auth, never stored
        try:
            for msg in self.api.pull(repo, **kw):
                if msg.get("error"):
                    raise AgentError(PULL, "pull %s: %s" % (ref, msg["error"]), {"image": ref})
                progress(msg)
        except (self._errors.APIError, self._errors.DockerException) as exc:
            raise AgentError(PULL, "pull %s: %s" % (ref, _explain(exc)), {"image": ref})
        if not self.image_exists(ref):
            raise AgentError(PULL, "pull %s finished but the image is not there" % ref, {"image": ref})

    def prune_images(self) -> Dict[str, Any]:
        res = self._call("prune images", self.api.prune_images, filters={"dangling": True}) or {}
        return {"deleted": len(res.get("ImagesDeleted") or []), "reclaimed": res.get("SpaceReclaimed", 0)}

    def list_images(self, label_filters: List[str]) -> List[Dict[str, Any]]:
        """Images carrying these labels: {id, repo_digests, repo_tags, labels, size}."""
        found = self._call("list images", self.api.images, filters={"label": label_filters}) or []
        return [{"id": i.get("Id", ""), "repo_digests": list(i.get("RepoDigests") or []),
                 "repo_tags": [t for t in (i.get("RepoTags") or []) if t != "<none>:<none>"],
                 "labels": dict(i.get("Labels") or {}), "size": int(i.get("Size") or 0)} for i in found]

    def image_users(self) -> List[str]:
        """Image IDs some container (any state, anyone's) was created from."""
        found = self._call("list containers", self.api.containers, all=True) or []
        return sorted({c.get("ImageID", "") for c in found if c.get("ImageID")})

    def container_users(self) -> List[Dict[str, Any]]:
        """Every container on the engine (anyone's, any state), from one list call:
        {name, image_id, volumes: [names of the volumes it mounts]} (for prune)."""
        found = self._call("list containers", self.api.containers, all=True) or []
        return [{"name": ((c.get("Names") or [""])[0] or "").lstrip("/"), "image_id": c.get("ImageID", ""),
                 "volumes": sorted(m["Name"] for m in c.get("Mounts") or []
                                   if m.get("Type") == "volume" and m.get("Name"))} for c in found]

    def remove_image(self, image_id: str) -> None:
        # force: an image pulled under several repositories has several references
        # (the caller checked that no container uses it).
        self._call("remove image %s" % image_id[:19], self.api.remove_image, image_id, force=True)


def engine_id_from_socket(environ: Optional[Dict[str, str]] = None, timeout: float = 5.0) -> Optional[str]:
    """The engine's ID (`docker info` ID) straight from its unix socket, stdlib only: no
    docker SDK import (a few hundred ms). For operations that need only the per-engine
    data directory (the deploy lock). None when DOCKER_HOST is not a unix socket or the
    engine does not answer (the caller falls back to the SDK)."""
    import json
    import os
    import socket

    host = (os.environ if environ is None else environ).get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(host[len("unix://"):])
        sock.sendall(b"GET /info HTTP/1.0\r\nHost: docker\r\n\r\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if not head.split(b" ", 2)[1:2] == [b"200"]:
            return None
        return json.loads(body.decode("utf-8")).get("ID") or None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def _explain(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return explanation if isinstance(explanation, str) else explanation.decode("utf-8", "replace")
    return str(exc)


class LineSplitter:
    """Turns byte chunks into text lines (a chunk may end mid-line), in linear time. A
    line longer than max_line bytes comes out as several lines of at most max_line bytes
    each, cut at a UTF-8 character boundary: nothing is dropped, and a container writing
    without newlines holds at most max_line bytes here (docs/operations.md, "The agent's wire")."""

    def __init__(self, max_line: int = MAX_LOG_LINE) -> None:
        self.max_line = max(4, max_line)  # room for one UTF-8 character
        self._buf = bytearray()
        self._lock = threading.Lock()

    def feed(self, chunk: bytes) -> List[str]:
        out: List[bytes] = []
        with self._lock:
            start = 0
            end = chunk.find(b"\n")
            while end >= 0:  # each byte is searched once
                self._buf += chunk[start:end]
                out.extend(self._cut(bytes(self._buf), final=True)[0])
                self._buf = bytearray()
                start, end = end + 1, chunk.find(b"\n", end + 1)
            self._buf += chunk[start:]
            if len(self._buf) > self.max_line:
                pieces, rest = self._cut(bytes(self._buf), final=False)
                out.extend(pieces)
                self._buf = bytearray(rest)
        return [ln.decode("utf-8", "replace") for ln in out]

    def flush(self) -> List[str]:
        with self._lock:
            rest, self._buf = bytes(self._buf), bytearray()
        return [ln.decode("utf-8", "replace") for ln in self._cut(rest, final=True)[0]] if rest else []

    def _cut(self, data: bytes, final: bool) -> Tuple[List[bytes], bytes]:
        """Pieces of at most max_line bytes; the rest (at most max_line) unless final."""
        pieces, pos = [], 0
        while len(data) - pos > self.max_line:
            cut = pos + self.max_line
            while cut > pos + 1 and (data[cut] & 0xC0) == 0x80:  # a continuation byte starts no piece
                cut -= 1
            pieces.append(data[pos:cut])
            pos = cut
        if final:
            return pieces + [data[pos:]], b""
        return pieces, data[pos:]

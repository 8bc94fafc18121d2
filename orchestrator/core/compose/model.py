"""The loaded project as typed objects, in canonical form.

Canonical means: ports and volumes in long form, depends_on as a map, secrets and
configs references in long form, durations as float seconds, byte sizes as int bytes,
paths absolute, environment and labels as maps of strings. Keys that orch does not
model field by field are kept, validated, in `Service.other`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import Problem
from orchestrator.core.yamlsrc import Loc, YMap, locate as _locate

CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")


@dataclass(slots=True)
class DependsOn:
    condition: str = "service_started"
    required: bool = True
    restart: bool = False


@dataclass(slots=True)
class PortMapping:
    target: int
    published: str | None = None  # "8080", a range "8000-8001", or None (random)
    protocol: str = "tcp"
    host_ip: str | None = None
    mode: str = "ingress"
    name: str | None = None
    app_protocol: str | None = None


@dataclass(slots=True)
class VolumeMount:
    type: str  # volume | bind | tmpfs | npipe | cluster | image
    source: str | None  # volume name, absolute host path, or None (anonymous / tmpfs)
    target: str
    read_only: bool = False
    consistency: str | None = None
    # bind
    propagation: str | None = None
    create_host_path: bool | None = None
    selinux: str | None = None
    # volume
    nocopy: bool | None = None
    subpath: str | None = None
    # tmpfs
    tmpfs_size: int | None = None
    tmpfs_mode: int | None = None


@dataclass(slots=True)
class FileRef:
    """A service's use of a secret or config (long form)."""

    source: str
    target: str
    uid: str | None = None
    gid: str | None = None
    mode: int | None = None


@dataclass(slots=True)
class BuildConfig:
    context: str  # absolute path, or a URL (git, http)
    dockerfile: str | None = "Dockerfile"
    dockerfile_inline: str | None = None
    target: str | None = None
    args: dict[str, str | None] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[str] = field(default_factory=list)
    network: str | None = None
    shm_size: int | None = None
    platforms: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    secrets: list[FileRef] = field(default_factory=list)
    pull: bool | None = None
    no_cache: bool | None = None
    additional_contexts: dict[str, str] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)  # ssh, extra_hosts, ulimits, ...


@dataclass(slots=True)
class Healthcheck:
    test: list[str] | None = None  # ["CMD", ...], ["CMD-SHELL", "..."], ["NONE"]
    interval: float | None = None
    timeout: float | None = None
    retries: int | None = None
    start_period: float | None = None
    start_interval: float | None = None
    disable: bool = False


@dataclass(slots=True)
class ResourceSpec:
    cpus: float | None = None
    memory: int | None = None  # bytes
    pids: int | None = None
    devices: list[dict] = field(default_factory=list)
    generic_resources: list[dict] = field(default_factory=list)


@dataclass(slots=True)
class RestartPolicy:
    condition: str | None = None  # none | on-failure | any
    delay: float | None = None
    max_attempts: int | None = None
    window: float | None = None


@dataclass(slots=True)
class UpdateConfig:
    parallelism: int | None = None
    delay: float | None = None
    failure_action: str | None = None  # continue | pause | rollback
    monitor: float | None = None
    max_failure_ratio: float | None = None
    order: str | None = None  # start-first | stop-first


@dataclass(slots=True)
class Placement:
    constraints: list[str] = field(default_factory=list)
    preferences: list[dict] = field(default_factory=list)
    max_replicas_per_node: int | None = None


@dataclass(slots=True)
class Deploy:
    mode: str | None = None  # replicated | global
    replicas: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, ResourceSpec] = field(default_factory=dict)  # limits, reservations
    restart_policy: RestartPolicy | None = None
    update_config: UpdateConfig | None = None
    rollback_config: UpdateConfig | None = None
    placement: Placement | None = None
    endpoint_mode: str | None = None


@dataclass(slots=True)
class ServiceNetwork:
    aliases: list[str] = field(default_factory=list)
    ipv4_address: str | None = None
    ipv6_address: str | None = None
    priority: int | None = None
    other: dict[str, Any] = field(default_factory=dict)  # link_local_ips, mac_address, ...


@dataclass(slots=True)
class Logging:
    driver: str | None = None
    options: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class EnvFile:
    path: str  # absolute
    required: bool = True
    format: str | None = None


@dataclass(slots=True)
class Service:
    name: str
    loc: Loc | None = None  # where the service is defined (its key)
    image: str | None = None
    build: BuildConfig | None = None
    command: list[str] | None = None  # None: the image's default
    entrypoint: list[str] | None = None
    environment: dict[str, str | None] = field(default_factory=dict)
    env_file: list[EnvFile] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    volumes: list[VolumeMount] = field(default_factory=list)
    volumes_from: list[str] = field(default_factory=list)
    networks: dict[str, ServiceNetwork | None] = field(default_factory=dict)
    network_mode: str | None = None
    ipc: str | None = None
    pid: str | None = None
    links: list[str] = field(default_factory=list)
    depends_on: dict[str, DependsOn] = field(default_factory=dict)  # explicit only
    healthcheck: Healthcheck | None = None
    restart: str | None = None
    deploy: Deploy | None = None
    scale: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    secrets: list[FileRef] = field(default_factory=list)
    configs: list[FileRef] = field(default_factory=list)
    container_name: str | None = None
    hostname: str | None = None
    domainname: str | None = None
    user: str | None = None
    working_dir: str | None = None
    extra_hosts: list[str] = field(default_factory=list)  # "host=ip"
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    stop_signal: str | None = None
    stop_grace_period: float | None = None
    logging: Logging | None = None
    init: bool | None = None
    tty: bool | None = None
    stdin_open: bool | None = None
    privileged: bool | None = None
    read_only: bool | None = None
    other: dict[str, Any] = field(default_factory=dict)  # other valid Compose keys
    extensions: dict[str, Any] = field(default_factory=dict)  # x-* keys

    @property
    def replicas(self) -> int:
        """How many containers to run: deploy.replicas, else scale, else 1."""
        if self.deploy is not None and self.deploy.replicas is not None:
            return self.deploy.replicas
        if self.scale is not None:
            return self.scale
        return 1

    def implicit_dependencies(self) -> dict[str, DependsOn]:
        """Dependencies Compose adds: links, volumes_from, network_mode/ipc/pid service:X."""
        out: dict[str, DependsOn] = {}
        for link in self.links:
            out.setdefault(link.split(":", 1)[0], DependsOn("service_started", True, True))
        for mode in (self.network_mode, self.ipc, self.pid):
            if mode and mode.startswith("service:"):
                out.setdefault(mode[len("service:"):], DependsOn("service_started", True, True))
        for ref in self.volumes_from:
            if ref.startswith("container:"):
                continue
            out.setdefault(ref.split(":", 1)[0], DependsOn("service_started", True, False))
        return out

    def dependencies(self) -> dict[str, DependsOn]:
        """Explicit depends_on plus the implicit ones (explicit entries win)."""
        out = dict(self.depends_on)
        if not (self.links or self.volumes_from or _service_mode(self)):
            return out
        for name, dep in self.implicit_dependencies().items():
            out.setdefault(name, dep)
        return out


def _service_mode(s: Service) -> bool:
    for mode in (s.network_mode, s.ipc, s.pid):
        if mode and mode.startswith("service:"):
            return True
    return False


@dataclass(slots=True)
class Network:
    name: str  # the engine-level name, e.g. shop_default
    driver: str | None = None
    driver_opts: dict[str, str] = field(default_factory=dict)
    external: bool = False
    internal: bool | None = None
    attachable: bool | None = None
    enable_ipv6: bool | None = None
    ipam: dict | None = None
    labels: dict[str, str] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)
    loc: Loc | None = None


@dataclass(slots=True)
class Volume:
    name: str  # the engine-level name, e.g. shop_data
    driver: str | None = None
    driver_opts: dict[str, str] = field(default_factory=dict)
    external: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)
    loc: Loc | None = None


@dataclass(slots=True)
class Secret:
    """A top-level secret or config: from a file, an environment variable, or external."""

    name: str
    file: str | None = None  # absolute
    environment: str | None = None
    content: str | None = None  # configs only
    external: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)
    loc: Loc | None = None


Config = Secret


@dataclass
class Project:
    name: str
    working_dir: Path
    files: list[Path]
    services: dict[str, Service] = field(default_factory=dict)  # enabled services only
    networks: dict[str, Network] = field(default_factory=dict)
    volumes: dict[str, Volume] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)
    configs: dict[str, Secret] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)  # active profiles
    disabled_services: dict[str, Service] = field(default_factory=dict)  # off by profile
    raw: YMap | None = field(default=None, repr=False)  # merged located tree

    def locate(self, path: str | list) -> Loc | None:
        """Where a key path (e.g. "services.web.depends_on") is written.

        Returns the location of the deepest part of the path that exists.
        """
        if self.raw is None:
            return None
        return _locate(self.raw, path)

    def problem(self, message: str, path: str, fix: str | None = None) -> Problem:
        """A Problem located at a key path, for errors found after loading."""
        loc = self.locate(path)
        if loc is None:
            return Problem(message, key=path, fix=fix)
        return Problem(message, file=loc.file, line=loc.line, column=loc.column, key=path, fix=fix)

    def to_dict(self) -> dict:
        from .render import project_to_dict

        return project_to_dict(self)

    def to_yaml(self) -> str:
        from .render import project_to_yaml

        return project_to_yaml(self)

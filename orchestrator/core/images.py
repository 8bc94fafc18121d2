"""The image plan (pure): which services build, their tags `<registry>/<project>/<service>:<version>`,
contexts, build args and labels (`plan_builds`), and the version tag's rules. Building,
pushing and pinning: orchestrator.io.images."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import InputError, Problem

LABEL_PROJECT = "io.orch.project"
LABEL_SERVICE = "io.orch.service"


# --------------------------------------------------------------------------- version


@dataclass(frozen=True)
class VersionInfo:
    version: str  # the image tag: "a1b2c3d4e5f6", "a1b2c3d4e5f6-dirty-0123456789ab", "src-...", or the override
    source: str  # "override" | "git" | "content"
    commit: str | None = None  # full commit hash when from git
    dirty: bool = False


_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


def check_version(version: str) -> str:
    if not _TAG_RE.match(version):
        raise InputError(Problem(
            f"--version {version!r} is not a valid image tag",
            fix="use letters, digits, '_', '.' and '-' (up to 128, not starting with '.' or '-'), e.g. 1.4.2.",
        ))
    return version


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class BuildJob:
    """Everything needed to build and push one service's image (pure data)."""

    service: str
    repository: str  # "10.250.0.1:5000/hello/web" (no tag)
    tag: str  # the version
    context: str  # absolute path or a remote (git/http) URL
    dockerfile: str | None = "Dockerfile"  # relative to the context, or absolute
    dockerfile_inline: str | None = None
    target: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    network: str | None = None
    shm_size: int | None = None
    extra_hosts: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    pull: bool = False
    cache_from: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def registry(self) -> str | None:
        first, sep, _ = self.repository.partition("/")
        return first if sep and ("." in first or ":" in first or first == "localhost") else None

    @property
    def registry_path(self) -> str:
        """The repository inside the registry ("hello/web")."""
        reg = self.registry
        return self.repository[len(reg) + 1:] if reg else self.repository


def repo_component(name: str) -> str:
    """A Compose name as a valid (lowercase) repository path component."""
    out = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return out or "x"


def image_repository(registry: str | None, project: str, service: str) -> str:
    path = f"{repo_component(project)}/{repo_component(service)}"
    return f"{registry}/{path}" if registry else path


def plan_builds(project: Any, env: Any, version: str, services: Iterable[str] | None = None,
                environ: Mapping[str, str] | None = None) -> list[BuildJob]:
    """One BuildJob per service with `build:` (only `services` when given), sorted by name.

    Pure: reads no file and touches no engine. Build args without a value take the
    controller's environment variable of that name, or are left out (as Compose does).
    """
    environ = os.environ if environ is None else environ
    registry = env.registry.address if env is not None else None
    wanted = list(services) if services else None
    if wanted:
        unknown = [s for s in wanted if s not in project.services]
        if unknown:
            raise InputError(Problem(
                f"no service named {', '.join(repr(s) for s in unknown)} in project {project.name}",
                fix=f"use one of: {', '.join(sorted(project.services))}.",
            ))
    jobs = []
    for name in sorted(project.services):
        svc = project.services[name]
        if svc.build is None or (wanted is not None and name not in wanted):
            continue
        b = svc.build
        args = {}
        for k, v in b.args.items():
            if v is None:
                v = environ.get(k)
            if v is not None:
                args[k] = str(v)
        labels = dict(b.labels)
        labels[LABEL_PROJECT] = project.name
        labels[LABEL_SERVICE] = name
        hosts = {}
        for entry in b.other.get("extra_hosts") or []:
            host, sep, ip = str(entry).partition("=") if "=" in str(entry) else str(entry).partition(":")
            if sep:
                hosts[host] = ip
        jobs.append(BuildJob(
            service=name,
            repository=image_repository(registry, project.name, name),
            tag=version,
            context=b.context,
            dockerfile=b.dockerfile if not b.dockerfile_inline else None,
            dockerfile_inline=b.dockerfile_inline,
            target=b.target,
            args=args,
            labels=labels,
            network=b.network,
            shm_size=b.shm_size,
            extra_hosts=hosts,
            no_cache=bool(b.no_cache),
            pull=bool(b.pull),
            cache_from=tuple(b.cache_from),
        ))
    return jobs


def _is_remote(context: str) -> bool:
    return context.startswith(("http://", "https://", "git://", "github.com/", "git@"))

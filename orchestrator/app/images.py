"""`orch build` and `orch push`: the image version and build plan (orchestrator.core.images),
then the controller's Docker Engine and the environment's registry (orchestrator.io.images)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def plan_images(project: Any, environment: Any, services: Iterable[str] | None, version: str | None) -> tuple:
    """(io.images VersionInfo, the core.images BuildJobs) for the services with build:."""
    from orchestrator.core.images import plan_builds
    from orchestrator.io import images

    info = images.compute_version(images.version_paths(project, services), version)
    return info, plan_builds(project, environment, info.version, services)


def build_images(jobs: list, on_output: Callable[[str, str], None]) -> list:
    """Build with this machine's Docker Engine; one io.images.BuildResult per job."""
    from orchestrator.io import images

    return images.build(jobs, on_output)


def push_images(environment: Any, jobs: list, on_output: Callable[[str, str], None]) -> list:
    """Registry checked first (fail fast), then each image pushed with the environment's
    credentials; one io.images.PushResult per job (digest read back)."""
    from orchestrator.io import images

    registry = images.registry_client(environment)
    images.check_registry(environment, client=registry)
    return images.push(jobs, environment, on_output, registry=registry)

"""Resolve what a command works on: the Compose project, optionally with an environment.

This is the one place that ties compose loading, environment files and overlays
together, so every command (config, graph, up, promote...) sees the same project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.environments import Environment, load_environment


@dataclass
class ProjectOptions:
    files: list[Path] = field(default_factory=list)
    project_name: str | None = None
    env_files: list[Path] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    env_name: str | None = None
    environments_dir: Path | None = None
    working_dir: Path | None = None

    def project_dir(self) -> Path:
        """The first Compose file's folder, else the working directory."""
        if self.files:
            return Path(self.files[0]).resolve().parent
        return Path(self.working_dir or Path.cwd()).resolve()


@dataclass
class Workspace:
    project: object  # orchestrator.core.compose.Project
    environment: Environment | None


def load_workspace(opts: ProjectOptions, environ=None) -> Workspace:
    from orchestrator.core.compose import LoadOptions, load_project

    environment = None
    overlays = []
    if opts.env_name:
        environment = load_environment(opts.env_name, opts.environments_dir, opts.project_dir())
        overlay = environment.overlay()
        if overlay is not None:
            overlays.append(overlay)
    project = load_project(
        LoadOptions(
            files=[Path(f) for f in opts.files],
            working_dir=Path(opts.working_dir or Path.cwd()),
            project_name=opts.project_name,
            env_files=[Path(f) for f in opts.env_files],
            profiles=list(opts.profiles),
            services=list(opts.services),
            environ=os.environ if environ is None else environ,
            overlays=overlays,
        )
    )
    return Workspace(project=project, environment=environment)

"""Resolve what a command works on: the Compose project, optionally with an environment.

This is the one place that ties compose loading, environment files and overlays
together, so every command (config, graph, up, promote...) sees the same project:
load_workspace (the project with the environment's overlay), load_with_base (and the
same files without it), resolve_project (a deployed project by name, with or without
its Compose file: history, rollback), load_today (promote's project of today, if any).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.core.environments import Environment, load_environment
from orchestrator.errors import InputError, Problem


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


def load_with_base(opts: ProjectOptions, environ=None) -> tuple[Workspace, Any]:
    """The workspace (the project with the environment's overlay) and the base project: the
    same files without the overlay, which a release records as its base (`up`, `plan`)."""
    workspace = load_workspace(opts, environ)
    return workspace, load_workspace(replace(opts, env_name=None), environ).project


def compose_at_hand(opts: ProjectOptions) -> bool:
    """Is there a Compose file to read today's secrets (and the project folder) from: -f,
    else a default file name in the working directory or one of its parents?"""
    from orchestrator.core.compose.discovery import DEFAULT_FILES

    if opts.files:
        return True
    cwd = Path(opts.working_dir or Path.cwd()).resolve()
    return any((folder / name).is_file() for folder in [cwd, *cwd.parents] for name in DEFAULT_FILES)


def load_today(opts: ProjectOptions, environ=None) -> Any:
    """Today's Compose project (no environment's overlay) when a Compose file is at hand, else
    None: where promote takes secrets from (the ledger keeps only their hashes)."""
    return load_workspace(replace(opts, env_name=None), environ).project if compose_at_hand(opts) else None


@dataclass
class DeployedProject:
    """What a command on a project's releases works on: its name and environment, and today's
    Compose project when one was loaded (None with -p NAME alone)."""

    name: str
    environment: Environment
    project: Any = None
    working_dir: Path | None = None


def resolve_project(opts: ProjectOptions, *, today: bool = False, environ=None) -> DeployedProject:
    """The project by name (-p NAME, no Compose file needed: only the environment is loaded),
    or loaded with the environment's overlay: with -f FILE, without -p, or, when `today` (a
    command that re-applies a release and takes secrets from today's files), whenever a
    Compose file is at hand. With `today`, neither a Compose file nor a name is bad input."""
    if opts.project_name and not (opts.files or (today and compose_at_hand(opts))):
        environment = load_environment(opts.env_name, opts.environments_dir, opts.project_dir())
        return DeployedProject(opts.project_name, environment, None, opts.project_dir())
    if today and not opts.project_name and not compose_at_hand(opts):
        raise InputError(Problem("no Compose file here and no project name",
                                 fix="run it in the project's folder, or pass -f FILE or -p NAME"))
    ws = load_workspace(opts, environ)
    return DeployedProject(ws.project.name, ws.environment, ws.project, ws.project.working_dir)

"""Which files, which variables, which project name — as `docker compose` decides.

Files: -f (repeatable), else COMPOSE_FILE (split on COMPOSE_PATH_SEPARATOR or ":"),
else compose.yaml / compose.yml / docker-compose.yml / docker-compose.yaml in the
working directory or the nearest parent that has one, plus the first of
compose.override.yml / compose.override.yaml / docker-compose.override.yml /
docker-compose.override.yaml next to it.

Variables: --env-file (repeatable, relative to the working directory) or else `.env`
in the project directory (the first file's folder); the shell environment wins.

Project name: -p, then COMPOSE_PROJECT_NAME (shell or .env), then `name:`, then the
project folder's name normalised. An explicit name that is not valid is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from orchestrator.errors import InputError, Problem
from orchestrator.limits import present
from orchestrator.core.yamlsrc import Loc

from .envfile import read_dotenv
from .problems import Collector

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES = (
    "compose.override.yml", "compose.override.yaml",
    "docker-compose.override.yml", "docker-compose.override.yaml",
)
PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def display_name(path: Path, working_dir: Path) -> str:
    """How a file is named in messages: relative to the working directory if inside."""
    try:
        return str(path.relative_to(working_dir))
    except ValueError:
        return str(path)


def find_files(
    files: list[Path], working_dir: Path, environ: Mapping[str, str], problems: Collector
) -> list[Path]:
    """The Compose files to load, absolute. Reports missing files to `problems`."""
    wd = working_dir
    if not files and environ.get("COMPOSE_FILE"):
        sep = environ.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        files = [Path(p) for p in environ["COMPOSE_FILE"].split(sep) if p]
    if files:
        out = []
        for f in files:
            p = Path(os.path.normpath(wd / Path(f).expanduser()))
            if not p.exists():
                problems.error(
                    f"Compose file not found: {f}", file=str(f),
                    fix="check the path given with -f (relative paths start from the working directory)",
                )
            elif p.is_dir():
                problems.error(f"{f} is a directory, not a Compose file", file=str(f),
                               fix="name the file, e.g. -f " + str(Path(f) / "compose.yaml"))
            else:
                out.append(p)
        return out
    for folder in [wd, *wd.parents]:
        found = [folder / n for n in DEFAULT_FILES if present(folder / n)]
        if not found:
            continue
        if len(found) > 1:
            problems.warn(
                "found several Compose files: " + ", ".join(p.name for p in found)
                + f"; using {found[0].name}",
                file=display_name(found[0], wd),
                fix="remove the ones you do not use, or pick one with -f",
            )
        out = [found[0]]
        for n in OVERRIDE_FILES:
            if present(folder / n):
                out.append(folder / n)
                break
        return out
    problems.error(
        f"no Compose file found in {wd} or its parents",
        fix="create compose.yaml (or docker-compose.yml), or pass one with -f FILE",
    )
    return []


def load_variables(
    project_dir: Path,
    env_files: list[Path],
    working_dir: Path,
    environ: Mapping[str, str],
    problems: Collector,
) -> tuple[dict[str, str], dict[str, str]]:
    """(variables for interpolation, values read from env files). Shell wins."""
    from_files: dict[str, str] = {}

    paths: list[tuple[Path, str]] = []
    if env_files:
        for f in env_files:
            p = Path(os.path.normpath(working_dir / Path(f).expanduser()))
            paths.append((p, display_name(p, working_dir) if not Path(f).is_absolute() else str(f)))
    else:
        dotenv = project_dir / ".env"
        if present(dotenv):
            paths.append((dotenv, display_name(dotenv, working_dir)))
    for p, shown in paths:
        try:
            from_files.update(read_dotenv(p, shown, environ.get, from_files.get))
        except InputError as err:
            problems.extend(err.problems)
    variables = dict(from_files)
    variables.update(environ)
    return variables, from_files


def normalize_project_name(name: str) -> str:
    name = re.sub(r"[^a-z0-9_-]", "", name.lower())
    return name.lstrip("_-")


def _invalid_name(name: str, source: str, loc: Loc | None) -> Problem:
    fixed = normalize_project_name(name)
    fix = "use lowercase letters, digits, '-' and '_', starting with a letter or digit"
    if fixed:
        fix += f", e.g. {fixed!r}"
    msg = f"invalid project name {name!r} (from {source})"
    if loc is not None:
        return loc.problem(msg, key="name", fix=fix)
    return Problem(msg, fix=fix)


def project_name(
    explicit: str | None,
    variables: Mapping[str, str],
    from_file: str | None,
    from_file_loc: Loc | None,
    project_dir: Path,
    problems: Collector,
) -> str:
    candidates = [
        (explicit, "-p", None),
        (variables.get("COMPOSE_PROJECT_NAME") or None, "COMPOSE_PROJECT_NAME", None),
        (from_file or None, "the name: key", from_file_loc),
    ]
    for value, source, loc in candidates:
        if value:
            if not PROJECT_NAME_RE.match(value):
                problems.add(_invalid_name(value, source, loc))
                return normalize_project_name(value) or "invalid"
            return value
    name = normalize_project_name(project_dir.name)
    if not name:
        problems.error(
            f"cannot derive a project name from the folder name {project_dir.name!r}",
            fix="set one with -p NAME, COMPOSE_PROJECT_NAME, or name: in the Compose file",
        )
        return "default"
    return name

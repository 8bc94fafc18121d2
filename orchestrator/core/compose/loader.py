"""load_project(): files -> variables -> per-file read/interpolate/include/extends ->
merge (+ overlays) -> validate -> name -> profiles -> normalise -> cross-checks.

Every problem found along the way is collected; one InputError lists them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agent.wire.redact import secret_name
from orchestrator.errors import InputError
from orchestrator.limits import YAML_MAX_BYTES, present, read_bounded
from orchestrator.core.yamlsrc import Loc, YMap, decode_utf8, no_gc, parse_yaml

from .checks import check_services, has_dependency_cycle
from .discovery import display_name, find_files, load_variables, project_name
from .extends import apply_extends
from .include import apply_include
from .interpolate import interpolate_tree
from .merge import clean, deep_copy, merge
from .model import Network, Project
from .normalize import Normalizer
from .paths import absolutize_tree
from .problems import Collector, did_you_mean
from .profiles import active_profiles, enabled_services
from .schema import validate


@dataclass
class Overlay:
    """An already-parsed, located Compose fragment merged over the Compose files last.

    `file` names it in error messages (the locations inside `data` name their own file).
    Relative paths resolve against the project directory. Its strings are taken as
    they are (an environment overlay is templated with Jinja2 before it gets here, and
    may carry values with a literal `$`); set `interpolate=True` to apply Compose's
    ${VAR} interpolation to it as well.
    """

    data: YMap
    file: str
    interpolate: bool = False


@dataclass
class LoadOptions:
    files: list[Path] = field(default_factory=list)
    working_dir: Path = field(default_factory=Path.cwd)
    project_name: str | None = None
    env_files: list[Path] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)  # named on the command line
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    overlays: list[Overlay] = field(default_factory=list)


class Loader:
    def __init__(self, opts: LoadOptions):
        self.opts = opts
        self.problems = Collector()
        self.working_dir = Path(os.path.abspath(opts.working_dir))
        self.environ = opts.environ
        self.home = opts.environ.get("HOME") or os.path.expanduser("~")
        self._extends_cache: dict[str, YMap | None] = {}
        self._extends_done: dict[str, set] = {}
        self.extends_failed: set = set()  # (file, service) whose extends could not resolve

    def shown(self, path: Path | str) -> str:
        return display_name(Path(path), self.working_dir)

    # -- reading ------------------------------------------------------------------------
    def read(self, path: Path, variables: Mapping[str, str]) -> tuple[YMap | None, bool]:
        """Parse and interpolate one file; (None, False) after reporting a problem."""
        shown = self.shown(path)
        try:
            raw = read_bounded(path, YAML_MAX_BYTES, "a Compose file")
        except OSError as err:
            self.problems.error(f"cannot read {shown}: {err.strerror or err}", file=shown,
                                fix=getattr(err, "fix", None) or "check that the file exists and is readable")
            return None, False
        try:
            text = decode_utf8(raw, shown)
            tree = parse_yaml(text, shown)
        except InputError as err:
            self.problems.extend(err.problems)
            return None, False
        if tree is None:
            self.problems.error(
                "the Compose file is empty", file=shown,
                fix="add at least a services: section, e.g. services: {web: {image: nginx}}",
            )
            return None, False
        if not isinstance(tree, YMap):
            kind = "a list" if isinstance(tree, list) else f"a single value ({tree!r})"
            self.problems.error(
                f"the top level of a Compose file must be a mapping, not {kind}",
                loc=getattr(tree, "loc", None) or Loc(shown, 1, 1),
                fix="start the file with keys such as services:, networks:, volumes:",
            )
            return None, False
        interpolate_tree(tree, variables, self.problems)
        tagged = "!reset" in text or "!override" in text
        return tree, tagged

    def load_file(self, path: Path, base_dir: str, variables: Mapping[str, str],
                  stack: tuple) -> tuple[YMap | None, bool]:
        tree, tagged = self.read(path, variables)
        if tree is None:
            return None, False
        if "include" in tree:
            apply_include(self, tree, path, base_dir, dict(variables), stack)
        apply_extends(self, tree, path, base_dir, dict(variables))
        absolutize_tree(tree, base_dir, self.home)
        return tree, tagged

    def load_files(self, files: list[Path], base_dir: str, variables: Mapping[str, str],
                   stack: tuple = ()) -> YMap | None:
        merged: YMap | None = None
        for f in files:
            tree, tagged = self.load_file(f, base_dir, variables, stack)
            if tree is None:
                continue
            if merged is None:
                merged = clean(tree, tagged) if tagged else tree
            else:
                merged = merge(merged, tree, (), tagged)
        return merged

    def load_extends_file(self, path: Path, variables: Mapping[str, str], loc: Loc | None,
                          keypath: tuple) -> YMap | None:
        key = str(path)
        if key in self._extends_cache:
            return self._extends_cache[key]
        if not present(path):
            self.problems.error(f"extends file not found: {self.shown(path)}", loc=loc,
                                path=keypath, fix="correct file: (relative to the declaring file's folder)")
            self._extends_cache[key] = None
            return None
        tree, tagged = self.read(path, variables)
        if tree is not None:
            if tagged:
                clean(tree, True)
            absolutize_tree(tree, str(path.parent), self.home)
        self._extends_cache[key] = tree
        return tree

    def extends_done(self, path: Path) -> set:
        return self._extends_done.setdefault(str(path), set())


def load_project(opts: LoadOptions) -> Project:
    """Load, merge, validate and normalise a Compose project. Raises InputError."""
    import gc

    with no_gc():
        project = _load(opts)
        # The loaded objects live as long as the command; keep the collector from
        # scanning them again and again (they are still freed when unreferenced).
        gc.freeze()
    return project


def _load(opts: LoadOptions) -> Project:
    loader = Loader(opts)
    problems = loader.problems
    wd = loader.working_dir
    files = find_files(list(opts.files), wd, opts.environ, problems)
    problems.raise_if_any()
    project_dir = files[0].parent
    variables, _ = load_variables(project_dir, list(opts.env_files), wd, opts.environ, problems)
    problems.hide(v for k, v in variables.items() if secret_name(k))
    problems.raise_if_any()

    merged = loader.load_files(files, str(project_dir), variables)
    for ov in opts.overlays:
        data = deep_copy(ov.data)
        if not isinstance(data, YMap):
            if data is not None:
                problems.error("an environment overlay must be a mapping", file=ov.file,
                               fix="write the overlay as Compose keys: services: {...}")
            continue
        if ov.interpolate:
            interpolate_tree(data, variables, problems)
        absolutize_tree(data, str(project_dir), loader.home)
        merged = merge(merged, data, (), True) if merged is not None else clean(data, True)
    if merged is None:
        problems.raise_if_any()
        merged = YMap()

    if "version" in merged:
        problems.warn(
            "the `version` key is obsolete and ignored", loc=merged.loc_of("version"),
            path="version", fix="remove it",
        )
    validate(merged, problems)

    raw_name = merged.get("name") if isinstance(merged.get("name"), str) else None
    name = project_name(opts.project_name, variables, raw_name,
                        merged.loc_of("name") if raw_name else None, project_dir, problems)
    variables.setdefault("COMPOSE_PROJECT_NAME", name)

    services_raw = merged.get("services")
    if not isinstance(services_raw, YMap):
        services_raw = YMap()
    for wanted in opts.services:
        if wanted not in services_raw:
            near = did_you_mean(wanted, list(services_raw))
            msg = f"no such service: {wanted}"
            if near:
                msg += f"; did you mean {near!r}?"
            problems.error(msg, fix="name a service defined in the Compose files: "
                           + (", ".join(services_raw) or "(none)"))
    active = active_profiles(opts.profiles, variables)
    enabled_names, active = enabled_services(services_raw, active, opts.services)

    norm = Normalizer(name, variables, problems, wd)
    enabled: dict = {}
    disabled: dict = {}
    for sname, raw in services_raw.items():
        is_on = sname in enabled_names
        svc = norm.service(str(sname), raw, services_raw.loc_of(sname), is_on)
        (enabled if is_on else disabled)[svc.name] = svc

    declared = {
        section: set(merged[section]) if isinstance(merged.get(section), YMap) else set()
        for section in ("networks", "volumes", "secrets", "configs")
    }
    broken = {n for _, n in loader.extends_failed}
    check_services(enabled, disabled, services_raw, declared, problems, skip_image=broken)

    project = Project(name=name, working_dir=project_dir, files=files, services=enabled,
                      disabled_services=disabled, variables=variables, profiles=active,
                      raw=merged)
    _top_level(project, merged, norm, enabled)
    project.extensions = {k: _plain(v) for k, v in merged.items()
                          if isinstance(k, str) and k.startswith("x-")}
    problems.raise_if_any()
    if has_dependency_cycle(enabled):  # refused by every command, `orch config` too (as docker compose does)
        from orchestrator.core.graph import build_graph

        build_graph(project)  # raises the cycle's InputError, worded as `orch graph` words it
    project.warnings = list(problems.warnings)
    return project


def _plain(v: Any) -> Any:
    from orchestrator.core.yamlsrc import to_plain

    return to_plain(v)


def _top_level(project: Project, merged: YMap, norm: Normalizer, enabled: dict) -> None:
    """Top-level resources used by enabled services (like `docker compose config`)."""
    from orchestrator.core.edge import tls_secrets

    used: dict[str, set] = {"networks": set(), "volumes": set(), "secrets": set(), "configs": set()}
    for s in enabled.values():
        used["networks"].update(s.networks)
        used["volumes"].update(v.source for v in s.volumes if v.type == "volume" and v.source)
        used["secrets"].update(r.source for r in s.secrets)
        used["configs"].update(r.source for r in s.configs)
        if s.build is not None:
            used["secrets"].update(r.source for r in s.build.secrets)
        used["secrets"].update(tls_secrets(s.extensions.get("x-orch")))  # x-orch.ingress.tls's {secret: NAME}
    for section in ("networks", "volumes", "secrets", "configs"):
        entries = merged.get(section)
        if not isinstance(entries, YMap):
            continue
        target = getattr(project, section)
        for key, raw in entries.items():
            loc = entries.loc_of(key)
            if section == "networks":
                obj = norm.network(key, raw, loc)
            elif section == "volumes":
                obj = norm.volume(key, raw, loc)
            else:
                obj = norm.secret(section, key, raw, loc)
            if key in used[section]:
                target[key] = obj
    if "default" in used["networks"] and "default" not in project.networks:
        project.networks["default"] = Network(name=f"{project.name}_default")

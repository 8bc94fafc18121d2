"""`include`: other Compose projects imported into this one.

    include:
      - ../common/compose.yaml                  # short form
      - path: [a.yaml, a.override.yaml]        # long form
        project_directory: ../common
        env_file: ../common/.env

Each entry is loaded as its own project (paths relative to the including file's base
directory; its relative paths resolve against its project directory, by default the
folder of its first file; its variables are the including project's, plus its
env_file / .env for names not already set). Its services, networks, volumes, secrets
and configs are added to the including file; defining the same one differently on
both sides is an error, as in Compose. Include loops are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InputError
from orchestrator.limits import present
from orchestrator.core.yamlsrc import YList, YMap, to_plain

from .envfile import read_dotenv
from .paths import resolve

if TYPE_CHECKING:  # pragma: no cover
    from .loader import Loader

SECTIONS = ("services", "networks", "volumes", "secrets", "configs")


def apply_include(loader: "Loader", tree: YMap, file: Path, base_dir: str, variables: dict,
                  stack: tuple) -> None:
    entries = tree.get("include")
    if entries is None:
        tree.pop("include", None)
        return
    if not isinstance(entries, YList):
        loader.problems.error("include must be a list", loc=tree.value_loc("include"),
                              path=("include",), fix="write include: [path/to/compose.yaml]")
        tree.pop("include", None)
        return
    for i, entry in enumerate(entries):
        path = ("include", i)
        loc = entries.loc_of(i)
        paths, project_dir, env_files = _parse(entry)
        if not paths:
            loader.problems.error("an include entry needs a path", loc=loc, path=path,
                                  fix="write - path/to/compose.yaml or - path: [a.yaml]")
            continue
        files = [Path(resolve(p, base_dir, loader.home)) for p in paths]
        missing = [f for f in files if not present(f)]
        if missing:
            loader.problems.error(
                f"included file not found: {loader.shown(missing[0])}", loc=loc, path=path,
                fix="correct the path (relative to the including file's project directory)",
            )
            continue
        chain_stack = stack + (str(file),)
        loop = [f for f in files if str(f) in chain_stack]
        if loop:
            chain = [loader.shown(Path(p)) for p in chain_stack[chain_stack.index(str(loop[0])):]]
            chain.append(loader.shown(loop[0]))
            loader.problems.error(
                "include loop: " + " -> ".join(chain), loc=loc, path=path,
                fix="remove the include that leads back to a file already being included",
            )
            continue
        pdir = Path(resolve(project_dir, base_dir, loader.home)) if project_dir else files[0].parent
        sub_vars = dict(variables)
        env_paths = ([Path(resolve(e, base_dir, loader.home)) for e in env_files] if env_files
                     else ([pdir / ".env"] if present(pdir / ".env") else []))
        for ep in env_paths:
            try:
                values = read_dotenv(ep, loader.shown(ep), sub_vars.get)
            except InputError as err:
                loader.problems.extend(err.problems)
                continue
            for k, v in values.items():
                sub_vars.setdefault(k, v)
        sub = loader.load_files(files, str(pdir), sub_vars, chain_stack)
        if sub is None:
            continue
        _import(loader, tree, sub, file)
    tree.pop("include", None)


def _parse(entry: Any) -> tuple[list[str], str | None, list[str]]:
    if isinstance(entry, str):
        return [entry], None, []
    if isinstance(entry, dict):
        p = entry.get("path")
        paths = [p] if isinstance(p, str) else [x for x in (p or []) if isinstance(x, str)]
        pd = entry.get("project_directory")
        ef = entry.get("env_file")
        envs = [ef] if isinstance(ef, str) else [x for x in (ef or []) if isinstance(x, str)]
        return paths, (pd if isinstance(pd, str) else None), envs
    return [], None, []


def _import(loader: "Loader", tree: YMap, sub: YMap, file: Path) -> None:
    for section in SECTIONS:
        incoming = sub.get(section)
        if not isinstance(incoming, YMap):
            continue
        target = tree.get(section)
        if not isinstance(target, YMap):
            target = YMap()
            target._pos = incoming._pos
            tree[section] = target
            tree.copy_meta(section, sub)
        for k, v in incoming.items():
            if k in target:
                if to_plain(target[k]) != to_plain(v):
                    loc = target.loc_of(k)
                    other = incoming.loc_of(k)
                    loader.problems.error(
                        f"{section[:-1]} {k!r} is defined both here and in the included file "
                        f"{other.file if other else '?'}" + (f" (line {other.line})" if other else ""),
                        loc=loc, path=(section, k),
                        fix=f"rename one of them, or define {k!r} in one place only",
                    )
                continue
            target[k] = v
            target.copy_meta(k, incoming)

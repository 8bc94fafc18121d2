"""`extends`: a service built on another one, in the same file or in another file.

As in Compose, extends is resolved within each file, before the files are merged:
`extends: base` (or {service: base}) names a service of the same file;
{service: base, file: other.yaml} one of another file (relative to the declaring
file's base directory), whose relative paths are resolved against that file's own
folder. The result is the base service merged with the extending service by the usual
merge rules. Chains are followed; a loop is an error that prints it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core.yamlsrc import YMap

from .merge import deep_copy, merge
from .paths import resolve
from .problems import did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from .loader import Loader


def apply_extends(loader: "Loader", tree: YMap, file: Path, base_dir: str,
                  variables: dict) -> None:
    services = tree.get("services")
    if not isinstance(services, YMap):
        return
    done: set[str] = set()
    for name in list(services):
        svc = services[name]
        if isinstance(svc, YMap) and "extends" in svc:
            _resolve(loader, services, name, file, base_dir, variables, [], done)


def _parse(ext: Any) -> tuple[str | None, str | None]:
    if isinstance(ext, str):
        return ext, None
    if isinstance(ext, dict):
        svc = ext.get("service")
        f = ext.get("file")
        return (svc if isinstance(svc, str) else None), (f if isinstance(f, str) else None)
    return None, None


def _resolve(loader: "Loader", services: YMap, name: str, file: Path, base_dir: str,
             variables: dict, stack: list, done: set) -> YMap | None:
    """Resolve the extends chain of services[name] in place; return the result."""
    svc = services.get(name)
    if not isinstance(svc, YMap):
        return None
    key = (str(file), name)
    if "extends" not in svc or key in done:
        return svc
    if key in loader.extends_failed:
        return None
    if key in stack:
        cycle = stack[stack.index(key):]
        chain = [n for _, n in cycle] + [name]
        last_file, last = cycle[-1]
        last_svc = services.get(last) if last_file == str(file) else None
        where = last_svc if isinstance(last_svc, YMap) else svc
        loader.problems.error(
            "extends loop: " + " -> ".join(chain),
            loc=where.loc_of("extends"), path=("services", last, "extends"),
            fix="break the loop: a service cannot extend itself, directly or through others",
        )
        loader.extends_failed.update(cycle)
        return None
    ext = svc["extends"]
    base_name, other = _parse(ext)
    path = ("services", name, "extends")
    if base_name is None:
        return None  # the schema reports the shape
    stack = stack + [key]
    if other is not None:
        other_path = Path(resolve(other, base_dir, loader.home))
        loaded = loader.load_extends_file(other_path, variables, svc.value_loc("extends"), path)
        if loaded is None:
            loader.extends_failed.add(key)
            return None
        other_services = loaded.get("services")
        if not isinstance(other_services, YMap) or base_name not in other_services:
            known = list(other_services) if isinstance(other_services, YMap) else []
            _undefined(loader, svc, name, base_name, loader.shown(other_path), known)
            loader.extends_failed.add(key)
            return None
        base = _resolve(loader, other_services, base_name, other_path, str(other_path.parent),
                        variables, stack, loader.extends_done(other_path))
    else:
        if base_name not in services:
            _undefined(loader, svc, name, base_name, loader.shown(file), list(services))
            loader.extends_failed.add(key)
            return None
        base = _resolve(loader, services, base_name, file, base_dir, variables, stack, done)
    if base is None:
        loader.extends_failed.add(key)
        return None
    result = deep_copy(base)
    result.pop("extends", None)
    own = svc.shallow()
    own.pop("extends", None)
    merged = merge(result, own, ("services", name))
    merged._pos = svc._pos
    services[name] = merged
    done.add(key)
    return merged


def _undefined(loader: "Loader", svc: YMap, name: str, base: str, where: str, known: list) -> None:
    near = did_you_mean(base, [k for k in known if k != name])
    msg = f"service {name!r} extends {base!r}, which is not defined in {where}"
    if near:
        msg += f"; did you mean {near!r}?"
    loader.problems.error(
        msg, loc=svc.value_loc("extends"), path=("services", name, "extends"),
        fix="name a service defined in that file" + (", or add file: PATH for one in another file"),
    )

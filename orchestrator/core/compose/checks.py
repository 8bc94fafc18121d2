"""Cross-reference checks on the normalised project (enabled services only).

- every service has an image or a build;
- network_mode excludes networks;
- networks, named volumes, secrets and configs a service uses are declared;
- depends_on targets exist and are enabled (a `required: false` dependency on a
  missing or disabled service is dropped, with a warning when it is missing);
- implicit dependencies (links, volumes_from, network_mode/ipc/pid: service:X) too.
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.yamlsrc import YList, YMap

from .model import Service
from .problems import Collector, did_you_mean


def _declared_fix(section: str, name: str) -> str:
    return f"declare it at the top level: {section}: {{{name}: {{}}}}"


def check_services(
    enabled: dict[str, Service],
    disabled: dict[str, Service],
    raw_services: Any,
    declared: dict[str, set],
    problems: Collector,
    skip_image: set = frozenset(),
) -> None:
    all_names = list(enabled) + list(disabled)
    for name, s in enabled.items():
        raw = raw_services.get(name) if isinstance(raw_services, dict) else None
        raw = raw if isinstance(raw, YMap) else YMap()
        path = ("services", name)
        misspelt = (path + ("image",) in problems.near_misses
                    or path + ("build",) in problems.near_misses)
        if s.image is None and s.build is None and name not in skip_image and not misspelt:
            problems.error(
                f"service {name!r} has neither an image nor a build",
                loc=s.loc, path=path,
                fix="add image: NAME[:TAG] to run an existing image, or build: ./DIR to build one",
            )
        if s.network_mode is not None and raw.get("networks") is not None:
            problems.error(
                f"service {name!r} sets both network_mode and networks, which exclude each other",
                loc=raw.loc_of("networks"), path=path + ("networks",),
                fix="remove networks: (network_mode decides the whole network stack), or remove network_mode:",
            )
        _check_refs(name, s, raw, declared, problems)
        _check_dependencies(name, s, raw, enabled, disabled, all_names, problems)


def _check_refs(name: str, s: Service, raw: YMap, declared: dict[str, set],
                problems: Collector) -> None:
    path = ("services", name)
    nets = raw.get("networks")
    for net in s.networks:
        if net == "default" or net in declared["networks"]:
            continue
        loc = nets.loc_of(list(nets).index(net)) if isinstance(nets, YList) and net in nets else (
            nets.loc_of(net) if isinstance(nets, YMap) else raw.loc_of("networks"))
        near = did_you_mean(net, declared["networks"])
        msg = f"service {name!r} uses network {net!r}, which is not declared"
        if near:
            msg += f"; did you mean {near!r}?"
        problems.error(msg, loc=loc, path=path + ("networks", net), fix=_declared_fix("networks", net))
    vols = raw.get("volumes")
    for i, vm in enumerate(s.volumes):
        if vm.type != "volume" or not vm.source:
            continue
        if vm.source in declared["volumes"]:
            continue
        idx = _find_volume_index(vols, vm.source, vm.target)
        loc = vols.loc_of(idx) if isinstance(vols, YList) and idx is not None else raw.loc_of("volumes")
        near = did_you_mean(vm.source, declared["volumes"])
        msg = f"service {name!r} mounts the named volume {vm.source!r}, which is not declared"
        if near:
            msg += f"; did you mean {near!r}?"
        fix = _declared_fix("volumes", vm.source)
        if not near:
            fix += f", or use ./{vm.source} for a folder on the host (a bind mount)"
        problems.error(msg, loc=loc, path=path + ("volumes", idx if idx is not None else i), fix=fix)
    for section in ("secrets", "configs"):
        refs = getattr(s, section)
        raw_refs = raw.get(section)
        for i, ref in enumerate(refs):
            if ref.source in declared[section]:
                continue
            idx = _find_ref_index(raw_refs, ref.source)
            loc = raw_refs.loc_of(idx) if isinstance(raw_refs, YList) and idx is not None else raw.loc_of(section)
            near = did_you_mean(ref.source, declared[section])
            msg = f"service {name!r} uses {section[:-1]} {ref.source!r}, which is not declared"
            if near:
                msg += f"; did you mean {near!r}?"
            problems.error(msg, loc=loc, path=path + (section, idx if idx is not None else i),
                           fix=f"declare it at the top level: {section}: {{{ref.source}: {{file: ./{ref.source}.txt}}}}")


def _find_volume_index(vols: Any, source: str, target: str) -> int | None:
    if not isinstance(vols, list):
        return None
    for i, v in enumerate(vols):
        if isinstance(v, str) and v.split(":", 1)[0] == source:
            return i
        if isinstance(v, dict) and v.get("source") == source:
            return i
    return None


def _find_ref_index(refs: Any, source: str) -> int | None:
    if not isinstance(refs, list):
        return None
    for i, v in enumerate(refs):
        if v == source or (isinstance(v, dict) and v.get("source") == source):
            return i
    return None


def _check_dependencies(name: str, s: Service, raw: YMap, enabled: dict, disabled: dict,
                        all_names: list, problems: Collector) -> None:
    path = ("services", name)
    deps_raw = raw.get("depends_on")
    drop = []
    for dep_name, dep in s.depends_on.items():
        loc = _dep_loc(deps_raw, dep_name) or raw.loc_of("depends_on")
        dpath = path + ("depends_on", dep_name)
        if dep_name in enabled:
            continue
        if dep_name in disabled:
            if dep.required:
                profiles = ", ".join(disabled[dep_name].profiles)
                problems.error(
                    f"service {name!r} depends on {dep_name!r}, which is disabled by its profiles ({profiles})",
                    loc=loc, path=dpath,
                    fix=f"enable it with --profile {disabled[dep_name].profiles[0]} (or COMPOSE_PROFILES), "
                        f"or mark the dependency optional: depends_on: {{{dep_name}: {{required: false}}}}",
                )
            else:
                drop.append(dep_name)
            continue
        if not dep.required:
            problems.warn(
                f"service {name!r} depends on {dep_name!r}, which is not defined; ignored (required: false)",
                loc=loc, path=dpath,
            )
            drop.append(dep_name)
            continue
        near = did_you_mean(dep_name, [n for n in all_names if n != name])
        msg = f"service {name!r} depends on undefined service {dep_name!r}"
        if near:
            msg += f"; did you mean {near!r}?"
        problems.error(msg, loc=loc, path=dpath,
                       fix="define that service, or remove it from depends_on")
    for d in drop:
        del s.depends_on[d]
    for dep_name, why, key in _implicit(s):
        if dep_name in enabled:
            continue
        loc = raw.loc_of(key)
        if dep_name in disabled:
            profiles = ", ".join(disabled[dep_name].profiles)
            problems.error(
                f"service {name!r} needs {dep_name!r} ({why}), which is disabled by its profiles ({profiles})",
                loc=loc, path=path + (key,),
                fix=f"enable it with --profile {disabled[dep_name].profiles[0]}",
            )
            continue
        near = did_you_mean(dep_name, [n for n in all_names if n != name])
        msg = f"service {name!r} refers to undefined service {dep_name!r} ({why})"
        if near:
            msg += f"; did you mean {near!r}?"
        problems.error(msg, loc=loc, path=path + (key,), fix="define that service or correct the name")


def _implicit(s: Service):
    for link in s.links:
        yield link.split(":", 1)[0], "links", "links"
    for ref in s.volumes_from:
        if not ref.startswith("container:"):
            yield ref.split(":", 1)[0], "volumes_from", "volumes_from"
    for key in ("network_mode", "ipc", "pid"):
        mode = getattr(s, key)
        if mode and mode.startswith("service:"):
            yield mode[len("service:"):], f"{key}: {mode}", key


def _dep_loc(deps_raw: Any, dep: str):
    if isinstance(deps_raw, YMap) and dep in deps_raw:
        return deps_raw.loc_of(dep)
    if isinstance(deps_raw, YList):
        for i, v in enumerate(deps_raw):
            if v == dep:
                return deps_raw.loc_of(i)
    return None


def has_dependency_cycle(services: dict[str, Service]) -> bool:
    """Whether the enabled services' dependencies (explicit and implicit) form a cycle.

    Plain depth-first search, so loading needs no networkx; the caller then asks
    orchestrator.core.graph to word the cycle exactly as `orch graph` does.
    """
    done: set[str] = set()
    for root in services:
        if root in done:
            continue
        on_path = {root}
        stack = [(root, iter(services[root].dependencies()))]
        while stack:
            name, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                on_path.discard(name)
                done.add(name)
            elif dep in on_path:
                return True
            elif dep in services and dep not in done:
                on_path.add(dep)
                stack.append((dep, iter(services[dep].dependencies())))
    return False

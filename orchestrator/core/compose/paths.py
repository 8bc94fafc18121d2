"""Making the relative paths of a raw (located) Compose tree absolute.

Each file is made absolute against its own base directory right after it is read
(the project directory for -f files, the included project's directory for include,
the other file's directory for extends.file), so merging never mixes bases.

Paths: build (string) / build.context (default "." when build is a mapping),
build.additional_contexts, env_file, label_file, bind-mount sources (short syntax
starting with ".", "/" or "~"; long syntax type: bind), and the file of top-level
secrets and configs. "~" is the user's home (HOME).
"""

from __future__ import annotations

import os
from orchestrator.core.yamlsrc import YList, YMap

_URL_PREFIXES = ("http://", "https://", "git://", "git@", "ssh://", "github.com/")
_CONTEXT_PREFIXES = _URL_PREFIXES + ("docker-image://", "target:", "service:", "oci-layout://")


def is_url(value: str) -> bool:
    return value.startswith(_URL_PREFIXES) or ("://" in value and value.endswith(".git"))


def resolve(path: str, base: str, home: str | None) -> str:
    """Absolute, normalised path for `path` relative to `base`."""
    if path.startswith("~") and home and (path == "~" or path[1] in "/\\"):
        path = home + path[1:]
    if not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.normpath(path)


def is_host_path(source: str) -> bool:
    return source[:1] in (".", "/", "~")


def split_volume_spec(spec: str) -> tuple[str | None, str, str | None]:
    """'src:/tgt:ro' -> ('src', '/tgt', 'ro'); '/tgt' -> (None, '/tgt', None)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return None, parts[0], None
    if len(parts) == 2:
        return parts[0], parts[1], None
    return parts[0], parts[1], ":".join(parts[2:])


def absolutize_tree(tree: YMap, base: str, home: str | None) -> None:
    """Make every relative path in a file's tree absolute against `base` (in place)."""
    services = tree.get("services")
    if isinstance(services, YMap):
        for svc in services.values():
            if isinstance(svc, YMap):
                absolutize_service(svc, base, home)
    for section in ("secrets", "configs"):
        entries = tree.get(section)
        if isinstance(entries, YMap):
            for entry in entries.values():
                if isinstance(entry, YMap) and isinstance(entry.get("file"), str):
                    entry["file"] = resolve(entry["file"], base, home)


def absolutize_service(svc: YMap, base: str, home: str | None) -> None:
    build = svc.get("build")
    if isinstance(build, str):
        if not is_url(build):
            svc["build"] = resolve(build, base, home)
    elif isinstance(build, YMap):
        ctx = build.get("context")
        if ctx is None and "context" not in build:
            build["context"] = base
        elif isinstance(ctx, str) and not is_url(ctx):
            build["context"] = resolve(ctx, base, home)
        extra = build.get("additional_contexts")
        if isinstance(extra, YMap):
            for k, v in extra.items():
                if isinstance(v, str) and not v.startswith(_CONTEXT_PREFIXES):
                    extra[k] = resolve(v, base, home)
    env_file = svc.get("env_file")
    if isinstance(env_file, str):
        svc["env_file"] = resolve(env_file, base, home)
    elif isinstance(env_file, YList):
        for i, item in enumerate(env_file):
            if isinstance(item, str):
                env_file[i] = resolve(item, base, home)
            elif isinstance(item, YMap) and isinstance(item.get("path"), str):
                item["path"] = resolve(item["path"], base, home)
    label_file = svc.get("label_file")
    if isinstance(label_file, str):
        svc["label_file"] = resolve(label_file, base, home)
    elif isinstance(label_file, YList):
        for i, item in enumerate(label_file):
            if isinstance(item, str):
                label_file[i] = resolve(item, base, home)
    volumes = svc.get("volumes")
    if isinstance(volumes, YList):
        for i, item in enumerate(volumes):
            if isinstance(item, str):
                src, tgt, mode = split_volume_spec(item)
                if src and is_host_path(src):
                    new = resolve(src, base, home) + ":" + tgt
                    volumes[i] = new + (":" + mode if mode is not None else "")
            elif isinstance(item, YMap):
                src = item.get("source")
                if item.get("type") == "bind" and isinstance(src, str) and src:
                    item["source"] = resolve(src, base, home)

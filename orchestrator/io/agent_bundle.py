"""Build the node agent as one file: a zipapp of agent/ and its pure-Python dependencies.

The bytes are deterministic (sorted entries, fixed timestamps and permissions, fixed
compression), so the file's SHA-256 names it: orch-agent-<sha256[:16]>.pyz. Nodes
keep bundles by that name and the controller uploads one only when a node lacks it.
Built bundles are cached under ~/.cache/orch/agent/ ($XDG_CACHE_HOME respected).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchError

# The docker SDK and what it imports at run time, and Jinja2 (the ingress renders its
# HAProxy config from agent/templates/) with MarkupSafe: all pure Python once the optional
# compiled speed-ups of charset_normalizer and markupsafe are left out; both fall back to
# their .py (markupsafe._native).
DEPENDENCIES = ("docker", "requests", "urllib3", "idna", "charset_normalizer", "certifi", "jinja2", "markupsafe")
AGENT_PACKAGE = "agent"
# The agent's own floor; a dependency's Requires-Python may raise it.
AGENT_MIN_PYTHON = (3, 9)
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
SHEBANG = b"#!/usr/bin/env python3\n"
_SKIP_DIRS = {"__pycache__", "tests", "test"}
_KEEP_SUFFIXES = {".py", ".pem", ".typed", ".txt", ".json", ".j2"}  # .j2: agent/templates/

# Runs first on the node, on whatever python3 is there: so it must parse on old
# Pythons too, and answers too-old with a protocol error line rather than a traceback.
# Then it runs the agent from an unpacked copy beside the bundle (orch-agent-HASH.d/):
# zipimport never caches bytecode, so from the zip every agent start compiled ~25
# modules again (0.12 s of a 0.25 s start); unpacked, Python keeps their .pyc there.
MAIN_TEMPLATE = '''\
import sys
MIN = {min_python!r}
if sys.version_info[:2] < MIN:
    sys.stdout.write('{{"id": null, "error": {{"kind": "python", "message": '
                     '"python3 %d.%d is too old for the orch agent (needs %d.%d or newer)", '
                     '"details": {{}}}}}}\\n' % (sys.version_info[0], sys.version_info[1], MIN[0], MIN[1]))
    sys.exit(3)


def _unpacked(bundle):
    import os
    target = bundle[:-len(".pyz")] + ".d"
    if os.path.isfile(os.path.join(target, "__main__.py")):
        return target
    import shutil
    import zipfile
    tmp = "%s.tmp-%d" % (target, os.getpid())
    try:
        with zipfile.ZipFile(bundle) as zf:
            zf.extractall(tmp)
        os.rename(tmp, target)  # whole or not at all; another agent may have won the race
    except (OSError, zipfile.BadZipFile):
        shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.isfile(os.path.join(target, "__main__.py")):
        return None  # a read-only state dir: run from the zip
    folder = os.path.dirname(bundle)
    import time
    for name in os.listdir(folder):  # copies of bundles that were pruned, halves of crashed unpacks
        path = os.path.join(folder, name)
        if not name.startswith("orch-agent-"):
            continue
        try:
            if (name.endswith(".d") and not os.path.exists(path[:-2] + ".pyz")) \\
                    or (".d.tmp-" in name and time.time() - os.path.getmtime(path) > 3600):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # gone meanwhile
    return target


if sys.path and sys.path[0].endswith(".pyz"):
    try:  # in use: a controller's prune leaves bundles used lately alone (their mtime)
        import os
        os.utime(sys.path[0])
    except OSError:
        pass
    _dir = _unpacked(sys.path[0])
    if _dir is not None:
        sys.path[0] = _dir
from agent.__main__ import main
sys.exit(main())
'''


class BundleError(OrchError):
    pass


@dataclass(frozen=True)
class AgentBundle:
    path: Path
    sha256: str
    size: int
    min_python: tuple[int, int]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def digest(self) -> str:
        return self.sha256[:16]


def bundle_name(sha256: str) -> str:
    return f"orch-agent-{sha256[:16]}.pyz"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(
            f"cannot build the node agent: the Python package '{name}' is not installed here.",
            fix="reinstall orch (pip install -e .) so its dependencies are present.",
        )
    return Path(list(spec.submodule_search_locations)[0])


def _package_files(root: Path, arc_prefix: str) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            if path.suffix not in _KEEP_SUFFIXES:
                continue  # compiled extensions (.so), bytecode, stray files
            rel = path.relative_to(root).as_posix()
            out.append((f"{arc_prefix}/{rel}", path))
    return out


_SPEC_RE = re.compile(r">=\s*(\d+)\.(\d+)")


def _requires_python(dist_name: str) -> tuple[int, int] | None:
    try:
        meta = importlib.metadata.metadata(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    m = _SPEC_RE.search(meta.get("Requires-Python") or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _dist_version(dist_name: str) -> str:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def collect(agent_dir: Path | None = None) -> tuple[list[tuple[str, Path]], dict]:
    """(archive name, source path) pairs and the manifest, in a fixed order."""
    agent_root = agent_dir or _package_dir(AGENT_PACKAGE)
    files = _package_files(agent_root, AGENT_PACKAGE)
    min_python = AGENT_MIN_PYTHON
    versions = {}
    for dep in DEPENDENCIES:
        files += _package_files(_package_dir(dep), dep)
        dist = dep.replace("_", "-")
        versions[dist] = _dist_version(dist)
        req = _requires_python(dist)
        if req and req > min_python:
            min_python = req
    manifest = {"dependencies": versions, "min_python": list(min_python)}
    return sorted(files, key=lambda f: f[0]), manifest


def _zipinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # Unix, whatever the build machine
    return info


def _archive(contents: list[tuple[str, bytes]], manifest: dict) -> bytes:
    """The zipapp of (archive name, bytes) pairs and the manifest."""
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        entries = [("__main__.py", MAIN_TEMPLATE.format(min_python=tuple(manifest["min_python"])).encode())]
        entries.append(("orch-agent.json", (json.dumps(manifest, sort_keys=True) + "\n").encode()))
        entries += contents
        for name, data in sorted(entries, key=lambda e: e[0]):
            zf.writestr(_zipinfo(name), data, compresslevel=6)
    return buf.getvalue()


def _read(files: list[tuple[str, Path]]) -> list[tuple[str, bytes]]:
    return [(name, path.read_bytes()) for name, path in files]


def build_bytes(agent_dir: Path | None = None) -> tuple[bytes, dict]:
    files, manifest = collect(agent_dir)
    return _archive(_read(files), manifest), manifest


# Bump when _archive's output changes for the same inputs (it names the cache index).
_FORMAT = 1


def inputs_key(contents: list[tuple[str, bytes]], manifest: dict) -> str:
    """SHA-256 of everything the archive is made of: hashing the ~200 files takes ~15 ms
    where compressing them takes ~140 ms, so a command that finds this key in the
    cache's index skips building."""
    h = hashlib.sha256(f"{_FORMAT}\0{SHEBANG!r}\0{MAIN_TEMPLATE}\0".encode())
    h.update(json.dumps(manifest, sort_keys=True).encode())
    for name, data in contents:
        h.update(f"\0{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "orch" / "agent"


_built: dict[Path, AgentBundle] = {}


def build_bundle(directory: Path | None = None, agent_dir: Path | None = None) -> AgentBundle:
    """Build (or find in the cache) the agent bundle for the code installed here."""
    directory = Path(directory or cache_dir())
    files, manifest = collect(agent_dir)
    contents = _read(files)  # read once: for the key, and for the archive when the index has none
    index = directory / f"index-{inputs_key(contents, manifest)[:32]}.json"
    bundle = _indexed(directory, index)
    if bundle is None:
        data = _archive(contents, manifest)
        sha = hashlib.sha256(data).hexdigest()
        path = directory / bundle_name(sha)
        if not path.is_file() or path.stat().st_size != len(data):
            _write_atomically(path, data)
        bundle = AgentBundle(path=path, sha256=sha, size=len(data), min_python=tuple(manifest["min_python"]))
        _write_atomically(index, json.dumps({"name": path.name, "sha256": sha, "size": len(data),
                                             "min_python": list(bundle.min_python)}).encode())
    _built[directory] = bundle
    return bundle


def _indexed(directory: Path, index: Path) -> AgentBundle | None:
    """The bundle the index names, if that file is still there whole."""
    try:
        meta = json.loads(index.read_text())
        path = directory / meta["name"]
        if path.name != bundle_name(meta["sha256"]) or path.stat().st_size != meta["size"]:
            return None
        return AgentBundle(path=path, sha256=meta["sha256"], size=int(meta["size"]),
                           min_python=tuple(meta["min_python"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no index yet, or a damaged one: build


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def current_bundle(directory: Path | None = None) -> AgentBundle:
    """build_bundle(), once per process per cache directory."""
    key = Path(directory or cache_dir())
    if key not in _built:
        build_bundle(key)
    return _built[key]

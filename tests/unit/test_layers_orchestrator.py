"""The controller's layers, read from the imports (ast), and the size of its files.

    orchestrator/core/  pure: no io/, app/, cli/, and no socket, subprocess, paramiko,
                        docker or requests
    orchestrator/io/    touches the world; no app/ or cli/
    orchestrator/app/   use cases; no cli/
    orchestrator/cli/   parse arguments -> app -> render: no paramiko, socket, subprocess,
                        and no io/ (beyond the allowlist below)
    errors.py, limits.py  shared leaf modules at the top, importable from every layer
    lab/                a separate tool package (`orch lab`), outside the layer rules

Every import counts for the layer rules, also the ones inside functions (the CLI imports
heavy modules lazily to keep `orch --help` fast). Cycles are between files, counting
module-level imports only. The allowlists name today's known violations, each with its
reason: they must only shrink (a test fails when an entry is no longer needed).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "orchestrator"

FORBIDDEN = {
    "core": ("orchestrator.io", "orchestrator.app", "orchestrator.cli",
             "socket", "subprocess", "paramiko", "docker", "requests"),
    "io": ("orchestrator.app", "orchestrator.cli"),
    "app": ("orchestrator.cli",),
    "cli": ("paramiko", "socket", "subprocess", "orchestrator.io"),
}

# (importing module, imported module): known violations still to split. Must only shrink.
ALLOWED: set[tuple[str, str]] = set()  # none left: add an entry only with its reason

# Import cycles between files allowed (as sets of modules). None today: the Compose
# include/extends recursion (loader -> include/extends -> loader) imports lazily, inside
# functions, so it is no cycle between files; add it here if it ever moves to module level.
ALLOWED_CYCLES: list[set[str]] = []

MAX_LINES = 700
# Files over MAX_LINES today, with their size when listed: must only shrink (and leave).
TOO_LONG: dict[str, int] = {}  # none left: add an entry only with its reason


# --------------------------------------------------------------------------- the checker


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> tuple[set[str], set[str]]:
    """(every imported module, the module-level ones) of one file. `from a import b` counts
    as a.b when that is a module of the project, else as a."""
    tree = ast.parse(source)
    everything: set[str] = set()
    top: set[str] = set()

    def names(node: ast.AST) -> set[str]:
        out: set[str] = set()
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
        return out

    def walk(body: list[ast.stmt], module_level: bool) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found = names(node)
                everything.update(found)
                if module_level:
                    top.update(found)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        everything.update(names(inner))
            elif isinstance(node, (ast.If, ast.Try, ast.With)) and module_level:
                for field in ("body", "orelse", "finalbody"):
                    walk(getattr(node, field, []) or [], True)
                for h in getattr(node, "handlers", []):
                    walk(h.body, True)
            else:
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        everything.update(names(inner))

    walk(tree.body, True)
    return everything, top


def read_tree(root: Path, package: str = PACKAGE) -> dict[str, tuple[str, bool, str]]:
    """module -> (source, is_package, path relative to root)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        out[module_name(path, root)] = (path.read_text(), path.name == "__init__.py",
                                        path.relative_to(root).as_posix())
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == PACKAGE and parts[1] in FORBIDDEN else None


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_violations(tree: dict[str, tuple[str, bool, str]]) -> set[tuple[str, str]]:
    known = set(tree)
    found = set()
    for module, (source, is_pkg, _) in tree.items():
        layer = layer_of(module)
        if layer is None:
            continue
        everything, _ = imports_of(source, module, is_pkg, known)
        for name in everything:
            if any(_under(name, bad) for bad in FORBIDDEN[layer]):
                found.add((module, name))
    return found


def import_cycles(tree: dict[str, tuple[str, bool, str]]) -> list[set[str]]:
    """Strongly connected components (more than one file) of the module-level import graph."""
    known = set(tree)
    graph: dict[str, set[str]] = {}
    for module, (source, is_pkg, _) in tree.items():
        _, top = imports_of(source, module, is_pkg, known)
        graph[module] = {m for m in top if m in known and m != module}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def long_files(tree: dict[str, tuple[str, bool, str]], limit: int = MAX_LINES) -> dict[str, int]:
    return {path: source.count("\n") for source, _, path in tree.values() if source.count("\n") > limit}


# --------------------------------------------------------------------------- the rules


def test_layer_rules_hold_except_the_listed_known_violations():
    found = layer_violations(read_tree(ROOT))
    new = sorted(found - ALLOWED)
    assert not new, "imports that break the layer rules (see this file's docstring):\n" + "\n".join(
        f"  {a} imports {b}" for a, b in new)
    gone = sorted(ALLOWED - found)
    assert not gone, "fixed, so take them off ALLOWED:\n" + "\n".join(f"  {a} -> {b}" for a, b in gone)


def test_no_import_cycle_between_files():
    cycles = [c for c in import_cycles(read_tree(ROOT)) if not any(c <= ok for ok in ALLOWED_CYCLES)]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_no_source_file_over_700_lines_except_the_shrinking_list():
    found = long_files(read_tree(ROOT))
    new = {p: n for p, n in found.items() if p not in TOO_LONG}
    assert not new, f"files over {MAX_LINES} lines: {new}"
    grown = {p: (TOO_LONG[p], n) for p, n in found.items() if p in TOO_LONG and n > TOO_LONG[p]}
    assert not grown, f"listed long files grew (was, now): {grown}"
    gone = sorted(set(TOO_LONG) - set(found))
    assert not gone, f"no longer over {MAX_LINES} lines, take them off TOO_LONG: {gone}"


# --------------------------------------------------------------------------- the checker catches


def _fake_tree(tmp_path: Path, files: dict[str, str]) -> dict[str, tuple[str, bool, str]]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in {p.parent for p in tmp_path.rglob("*.py")}:
        (d / "__init__.py").touch()
    return read_tree(tmp_path)


def test_checker_reports_each_kind_of_layer_violation(tmp_path):
    tree = _fake_tree(tmp_path, {
        "orchestrator/core/a.py": "import subprocess\nfrom orchestrator.io import b\n",
        "orchestrator/core/lazy.py": "def f():\n    import paramiko\n    from ..app import c\n",
        "orchestrator/core/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import requests\n",
        "orchestrator/io/b.py": "from orchestrator.app.c import run\n",
        "orchestrator/app/c.py": "from orchestrator.cli import render\ndef run(): pass\n",
        "orchestrator/cli/render.py": "import socket\nfrom orchestrator.io.b import x\n",
        "orchestrator/cli/ok.py": "from orchestrator.app import c\nfrom orchestrator.errors import OrchError\n",
        "orchestrator/errors.py": "import socket\n",
    })
    assert layer_violations(tree) == {
        ("orchestrator.core.a", "subprocess"), ("orchestrator.core.a", "orchestrator.io.b"),
        ("orchestrator.core.lazy", "paramiko"), ("orchestrator.core.lazy", "orchestrator.app.c"),
        ("orchestrator.core.typed", "requests"),
        ("orchestrator.io.b", "orchestrator.app.c"),
        ("orchestrator.app.c", "orchestrator.cli.render"),
        ("orchestrator.cli.render", "socket"), ("orchestrator.cli.render", "orchestrator.io.b"),
    }


def test_checker_reports_a_cycle_between_files_but_not_lazy_imports(tmp_path):
    tree = _fake_tree(tmp_path, {
        "orchestrator/core/x.py": "from orchestrator.core import y\n",
        "orchestrator/core/y.py": "import orchestrator.core.z\n",
        "orchestrator/core/z.py": "from . import x\n",
        "orchestrator/core/p.py": "from orchestrator.core import q\n",
        "orchestrator/core/q.py": "def f():\n    from orchestrator.core import p\n",
    })
    assert import_cycles(tree) == [{"orchestrator.core.x", "orchestrator.core.y", "orchestrator.core.z"}]


def test_checker_reports_a_long_file(tmp_path):
    tree = _fake_tree(tmp_path, {"orchestrator/app/big.py": "x = 1\n" * 701, "orchestrator/app/ok.py": "x = 1\n" * 700})
    assert long_files(tree) == {"orchestrator/app/big.py": 701}

"""The layers, checked by reading the imports (ast), not by running the code.

The checker is a few small functions: `modules()` maps the .py files of packages to
module names, `imports()` lists what one file imports (`import x`, `from x import y`,
relative imports, and imports inside functions, each marked as such), and `graph()`
builds the import graph. Each rule is a test of its own; rules for other layers go
beside them, using the same functions.

Rules of the agent side and the contract:
  - orchestrator/ imports nothing of agent/ but agent.wire (the contract). The lab
    (orchestrator/lab) is a test tool but follows the rule too: it starts agents as
    processes, from the bundle, like a node does, and imports none of their code.
  - agent/wire imports only the standard library and agent.wire: it runs on both sides.
  - no import cycle between agent modules (imports at module level).
  - every agent module parses as Python 3.9 (the nodes' floor).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT_FLOOR = (3, 9)


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name of the importing file
    target: str  # dotted name imported (a module, or a module's attribute as written)
    line: int
    toplevel: bool  # False: inside a function or method (runs only when called)


def modules(root: Path, packages: Iterable[str]) -> Dict[str, Path]:
    """{dotted module name: path} for every .py file under root/<package>."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports(module: str, path: Path, known: Iterable[str] = ()) -> List[Import]:
    """What `module` (the file at path) imports. Relative imports are resolved; with
    `from pkg import name`, pkg.name is the target when it is a known module, else pkg."""
    known = set(known)
    tree = ast.parse(path.read_text(), filename=str(path))
    out: List[Import] = []

    def visit(node: ast.AST, toplevel: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = toplevel and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend(Import(module, a.name, child.lineno, toplevel) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = _package_of(module, path).split(".")
                    pkg = pkg[:len(pkg) - (child.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                for a in child.names:
                    sub = "%s.%s" % (base, a.name)
                    out.append(Import(module, sub if sub in known else base, child.lineno, toplevel))
            visit(child, inner)

    visit(tree, True)
    return out


def graph(mods: Dict[str, Path], toplevel_only: bool = True) -> nx.DiGraph:
    """The import graph between the given modules (edges to other modules left out)."""
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        for imp in imports(name, path, mods):
            if imp.target in mods and imp.target != name and (imp.toplevel or not toplevel_only):
                g.add_edge(name, imp.target, line=imp.line)
    return g


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


def shown(found: List[Import], mods: Dict[str, Path]) -> str:
    return "\n".join("%s:%d imports %s" % (mods[i.importer].relative_to(ROOT), i.line, i.target) for i in found)


MODULES = modules(ROOT, ("orchestrator", "agent"))


# ----------------------------------------------------------------------------- the checker itself


def test_the_checker_resolves_relative_and_nested_imports_and_finds_cycles(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom . import b\nfrom .sub import c as C\n",
        "pkg/b.py": "def f():\n    from pkg.a import thing\n    return thing\n",
        "pkg/sub/__init__.py": "from .. import a\n",
        "pkg/sub/c.py": "from ..b import f\nclass K:\n    def m(self):\n        import json\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    mods = modules(tmp_path, ["pkg"])
    assert set(mods) == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    got = {(i.importer, i.target, i.toplevel) for m, p in mods.items() for i in imports(m, p, mods)}
    assert got == {("pkg.a", "os", True), ("pkg.a", "pkg.b", True), ("pkg.a", "pkg.sub.c", True),
                   ("pkg.b", "pkg.a", False), ("pkg.sub", "pkg.a", True), ("pkg.sub.c", "pkg.b", True),
                   ("pkg.sub.c", "json", False)}
    assert nx.is_directed_acyclic_graph(graph(mods))  # b -> a only inside a function
    assert not nx.is_directed_acyclic_graph(graph(mods, toplevel_only=False))


# ----------------------------------------------------------------------------- the agent side and the contract


def test_the_controller_imports_only_the_contract_of_the_agent():
    found = [i for m, p in MODULES.items() if within(m, "orchestrator") for i in imports(m, p, MODULES)
             if within(i.target, "agent") and not within(i.target, "agent.wire")]
    assert not found, "orchestrator/ may import agent.wire only:\n" + shown(found, MODULES)


def test_the_contract_imports_only_the_standard_library():
    wire = {m: p for m, p in MODULES.items() if within(m, "agent.wire")}
    assert {"agent.wire.protocol", "agent.wire.spec", "agent.wire.labels", "agent.wire.ingress",
            "agent.wire.ledger", "agent.wire.redact"} <= set(wire)
    found = [i for m, p in wire.items() for i in imports(m, p, MODULES)
             if not (is_stdlib(i.target) or within(i.target, "agent.wire"))]
    assert not found, "agent/wire may import the standard library and agent.wire only:\n" + shown(found, MODULES)


def test_no_import_cycle_between_agent_modules():
    g = graph({m: p for m, p in MODULES.items() if within(m, "agent")})
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "import cycles in agent/: %s" % ["  ->  ".join(c + c[:1]) for c in cycles]


def test_the_bundle_is_built_without_importing_agent_code(tmp_path):
    """The controller finds the agent's files by the package path (no agent code runs)."""
    code = ("import sys; from orchestrator.io import agent_bundle as b; b.collect(); "
            "print(sorted(m for m in sys.modules if m == 'agent' or m.startswith('agent.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- the agent runs on python3 >= 3.9


def python39_problems(source: str, filename: str = "<source>") -> List[str]:
    """Why this source would not run on Python 3.9: syntax newer than 3.9 (match, except*,
    ...), or `X | Y` in an annotation without `from __future__ import annotations`
    (evaluated at definition time, a TypeError before 3.10)."""
    try:
        tree = ast.parse(source, filename=filename, feature_version=AGENT_FLOOR)
    except SyntaxError as exc:
        return ["%s:%s: %s" % (filename, exc.lineno, exc.msg)]
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                 and any(a.name == "annotations" for a in n.names) for n in tree.body)
    if future:
        return []
    out = []
    for node in ast.walk(tree):
        notes = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            notes = [a.annotation for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs]
            notes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            notes = [node.annotation]
        for note in notes:
            if note is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                        for n in ast.walk(note)):
                out.append("%s:%d: X | Y annotation needs from __future__ import annotations" % (filename, note.lineno))
    return out


def test_the_python39_check_catches_newer_code():
    assert python39_problems("from typing import Optional\ndef f(x: Optional[int]) -> int:\n    return 1\n") == []
    assert python39_problems("match x:\n    case 1:\n        pass\n")  # 3.10 syntax
    assert python39_problems("try:\n    pass\nexcept* ValueError:\n    pass\n")  # 3.11 syntax
    assert python39_problems("def f(x: int | None) -> None:\n    pass\n")  # 3.10 at run time
    assert python39_problems("from __future__ import annotations\ndef f(x: int | None) -> None:\n    pass\n") == []


def test_every_agent_module_runs_on_python39():
    agent = {m: p for m, p in MODULES.items() if within(m, "agent")}
    assert len(agent) >= 20  # all of agent/, not a chosen few
    problems = [x for m, p in sorted(agent.items()) for x in python39_problems(p.read_text(), str(p.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.skipif(not Path("/root/.pyenv/versions/3.9.18/bin/python").exists(), reason="no python3.9 here")
def test_every_agent_module_compiles_with_a_real_python39(tmp_path):
    files = [str(p) for m, p in sorted(MODULES.items()) if within(m, "agent")]
    code = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f).read(), f, 'exec')\n"
    out = subprocess.run(["/root/.pyenv/versions/3.9.18/bin/python", "-I", "-c", code, *files],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

"""No test module imports another test module: shared fakes and helpers live in
tests/unit/fakes.py (fixtures in tests/unit/conftest.py) and tests/e2e/helpers.py, so a
test file can be moved, renamed or run alone without pulling in (and collecting the
fixtures of) another one."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _module(path: Path, root: Path) -> list[str]:
    return list(path.relative_to(root).with_suffix("").parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file, relative imports resolved against
    its package (root is the folder that holds the top package, `tests`)."""
    package = _module(path, root)[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            out.append((node.lineno, ".".join(module)))
            # `from tests.unit import test_x` / `from . import test_x` import modules too
            out += [(node.lineno, ".".join(module + [a.name])) for a in node.names]
    return out


def find_test_module_imports(root: Path) -> list[str]:
    """Every import of a test_*.py module by a file under root/tests, as "file:line: module"."""
    problems = []
    for path in sorted((root / "tests").rglob("*.py")):
        for line, module in imported_modules(path, root):
            parts = module.split(".")
            if parts[0] == "tests" and any(p.startswith("test_") for p in parts[1:]):
                if (root / Path(*parts)).with_suffix(".py").is_file():
                    problems.append(f"{path.relative_to(root)}:{line}: {module}")
    return problems


def test_no_test_module_imports_another():
    assert find_test_module_imports(TESTS.parent) == []


def test_the_check_finds_every_form_of_the_import(tmp_path):
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "e2e").mkdir()
    for name in ("unit/test_a.py", "unit/fakes.py", "e2e/test_b.py", "e2e/helpers.py"):
        (tmp_path / "tests" / name).write_text("X = 1\n")
    (tmp_path / "tests" / "unit" / "test_c.py").write_text(
        "from .test_a import X\n"
        "import tests.unit.test_a\n"
        "from tests.unit import test_a\n"
        "from . import fakes, test_a as A\n"
        "from .fakes import X\n"
        "from ..e2e.test_b import X\n"
        "from tests.e2e.helpers import X\n")
    assert find_test_module_imports(tmp_path) == [
        "tests/unit/test_c.py:1: tests.unit.test_a",
        "tests/unit/test_c.py:2: tests.unit.test_a",
        "tests/unit/test_c.py:3: tests.unit.test_a",
        "tests/unit/test_c.py:4: tests.unit.test_a",
        "tests/unit/test_c.py:6: tests.e2e.test_b",
    ]

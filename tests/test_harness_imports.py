"""The tests share their servers and stories through tests/harness/, never through one
another: no test module (nor the harness) imports a `test_*` module, at the top or inside a
function."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_imported_modules_reads_every_import(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("import os, test_a\nfrom test_b import x\n\ndef f():\n    from test_c.d import y\n")
    assert {"os", "test_a", "test_b", "test_c.d"} <= imported_modules(sample)


def test_no_test_module_imports_another():
    modules = sorted(TESTS.glob("test_*.py")) + sorted((TESTS / "harness").glob("*.py"))
    assert len(modules) > 50
    offenders = {f"{path.relative_to(TESTS)} imports {name}"
                 for path in modules for name in imported_modules(path)
                 if name.split(".")[0].startswith("test_")}
    assert not offenders, "move what is shared into tests/harness/:\n" + "\n".join(sorted(offenders))

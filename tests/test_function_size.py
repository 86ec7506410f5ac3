"""No function in gateway/ is over MAX_LINES lines or of radon's complexity grade D or
worse (cyclomatic complexity over 20), unless a comment on the line above its def (or on
its def) says why: ``# long: …`` for the length, ``# complex: …`` for the complexity
(``# long, complex: …`` for both).  The exceptions are listed when this fails, and kept few."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from radon.complexity import cc_rank, cc_visit

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
_WHY = re.compile(r"#\s*((?:long|complex)(?:\s*,\s*(?:long|complex))?)\s*:\s*\S")


def excused(lines: list[str], node: ast.AST) -> set[str]:
    """The kinds (long, complex) a comment on the line above the def, or on its
    signature's lines, excuses."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    span = lines[first - 2:node.body[0].lineno - 1] if first >= 2 else lines[:node.body[0].lineno - 1]
    kinds: set[str] = set()
    for line in span:
        match = _WHY.search(line)
        if match:
            kinds.update(k.strip() for k in match.group(1).split(","))
    return kinds


def problems(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    grades = {(block.lineno, block.name): block.complexity for block in _blocks(cc_visit(source))}
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        complexity = grades.get((node.lineno, node.name), 0)
        kinds = excused(lines, node)
        where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
        if length > MAX_LINES and "long" not in kinds:
            found.append(f"{where}: {length} lines")
        if cc_rank(complexity) >= "D" and "complex" not in kinds:
            found.append(f"{where}: complexity {complexity} ({cc_rank(complexity)})")
    return found


def _blocks(blocks):
    for block in blocks:
        yield block
        yield from _blocks(getattr(block, "methods", ()))
        yield from _blocks(getattr(block, "closures", ()))


def test_the_rule_sees_long_and_complex_functions_and_their_reasons(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(25))
    body = "".join(f"    y = {i}\n" for i in range(MAX_LINES))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def tangled(x):\n{branches}\n\ndef longer():\n{body}\n\n"
                      f"# complex: a table\ndef excused(x):\n{branches}\n\n"
                      f"def also(x):  # long, complex: both\n{branches}{body}")
    found = problems(sample)
    assert any("tangled: complexity 26 (D)" in p for p in found), found
    assert any("longer: 81 lines" in p for p in found), found
    assert not any("excused" in p or "also" in p for p in found), found


def test_no_function_is_too_long_or_too_complex_without_a_reason():
    found = [p for path in sorted((ROOT / "gateway").rglob("*.py")) for p in problems(path)]
    assert not found, "split these, or say why on the line above the def (# long: / # complex:):\n" + "\n".join(found)


def test_the_exceptions_stay_few():
    excused_count = sum(len(_WHY.findall(path.read_text())) for path in (ROOT / "gateway").rglob("*.py"))
    assert excused_count <= 10, f"{excused_count} functions excused: split some"

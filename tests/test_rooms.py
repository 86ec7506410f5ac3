"""The rooms of the code import only what ARCHITECTURE.md says they may: the ingest side
and the outbound side never import each other (what ingest decides reaches the outbound
side as an outbox row, store.notifications); the store imports no gateway module; the
actions (the one layer every face calls) no face.  Read from the source (ast), every
import, at the top or inside a function, absolute or relative."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each room (a folder) and the modules it must not import (a name and what is under it).
FACES = ("gateway.http", "gateway.commands", "gateway.cli", "gateway.service", "gateway.app")
FORBIDDEN = {
    "gateway/ingest": ("gateway.outbound", "gateway.actions", *FACES),
    "gateway/outbound": ("gateway.ingest", "gateway.actions", *FACES),
    "gateway/actions": FACES,
    "store": ("gateway",),
}


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, by its full name; ``from a import b`` counts as
    both ``a`` and ``a.b`` (b may be a module)."""
    package = module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def breaks(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def test_the_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    room = tmp_path / "gateway" / "ingest"
    room.mkdir(parents=True)
    sample = room / "sample.py"
    sample.write_text("import gateway.outbound.render\nfrom gateway import outbound\n"
                      "def f():\n    from ..outbound.compose import x\n    from . import parse\n")
    names = imported(sample)
    assert {"gateway.outbound.render", "gateway.outbound", "gateway.outbound.compose",
            "gateway.ingest.parse"} <= names
    assert breaks("gateway.outbound.compose", FORBIDDEN["gateway/ingest"])
    assert not breaks("gateway.outboundish", ("gateway.outbound",))


def test_no_room_imports_what_it_must_not():
    offenders = []
    for room, forbidden in FORBIDDEN.items():
        files = sorted((ROOT / room).rglob("*.py"))
        assert files, room
        for path in files:
            offenders += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(imported(path))
                          if breaks(name, forbidden)]
    assert not offenders, "\n".join(offenders)

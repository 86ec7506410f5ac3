"""Lines starting with "--" (parse._delimiter_lines) and boundary parameters
(parse._boundaries) found by literal searches, with exactly what the patterns tried at
every byte found before, in the same order."""

from __future__ import annotations

import random
import re

from conftest import CORPUS

from gateway.ingest.parse import (_BOUNDARY, _DASHES_FIRST, _DASHES_NEXT, _DELIMITER_FIRST, _DELIMITER_NEXT,
                                  _boundaries, _delimiter_lines)

OLD_DASHES = re.compile(rb"^--([^\r\n]{1,204})", re.MULTILINE)
OLD_DELIMITER = re.compile(rb"^--([^\r\n]{1,204})(?=\r?\n|\r?\Z)", re.MULTILINE)


def _same(raw: bytes) -> None:
    assert list(_delimiter_lines(raw, _DASHES_FIRST, _DASHES_NEXT)) == [
        (m.start(), m.end(), m.group(1)) for m in OLD_DASHES.finditer(raw)]
    assert list(_delimiter_lines(raw, _DELIMITER_FIRST, _DELIMITER_NEXT)) == [
        (m.start(), m.end(), m.group(1)) for m in OLD_DELIMITER.finditer(raw)]


def test_same_lines_as_the_multiline_patterns_on_random_text():
    rng = random.Random(8)
    pieces = [b"--", b"-", b"\n", b"\r", b"\r\n", b"b1", b" ", b"--b1--", b"x" * 210, b"\n--\n", b""]
    for _ in range(5000):
        _same(b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30))))


def test_same_lines_as_the_multiline_patterns_on_the_corpus():
    files = [p for p in CORPUS.rglob("*") if p.is_file()]
    assert files
    for path in files:
        _same(path.read_bytes())


def _old_boundaries(raw: bytes) -> set[bytes]:
    return {(a or b).strip() for a, b in _BOUNDARY.findall(raw)}


def test_boundaries_as_findall_found_them():
    rng = random.Random(9)
    pieces = [b"boundary=", b"BOUNDARY = ", b"Boundary=\"", b'"', b"b1", b"x" * 199, b"y" * 230, b";", b" ",
              b"\r\n", b"boundaryboundary=z", b"bound", b"ary=q"]
    for _ in range(3000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        assert _boundaries(raw) == _old_boundaries(raw), raw
    for path in (p for p in CORPUS.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        assert _boundaries(raw) == _old_boundaries(raw), path


def test_boundaries_found_across_the_one_megabyte_pieces():
    for offset in range(-12, 4):
        raw = b"a" * ((1 << 20) + offset) + b'bOuNdArY="cut-here"\r\n' + b"b" * 100 + b"boundary=late"
        assert _boundaries(raw) == {b"cut-here", b"late"} == _old_boundaries(raw), offset

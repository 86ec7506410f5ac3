"""Lines starting with "--" are found by a literal search (parse._delimiter_lines), with
exactly what the ``^--`` patterns with re.MULTILINE found, in the same order."""

from __future__ import annotations

import random
import re

from conftest import CORPUS

from gateway.ingest.parse import (_DASHES_FIRST, _DASHES_NEXT, _DELIMITER_FIRST, _DELIMITER_NEXT,
                                  _delimiter_lines)

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

"""``sender_problem`` skips the strict parser for From shapes both readings agree on
(``_SIMPLE_FROM``).  Whatever that shortcut accepts, the full comparison must find no
problem either: checked on every From of the corpus and on generated shapes."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest import parse as parse_mod
from gateway.ingest.parse import _SIMPLE_FROM, raw_headers, sender_problem


def slow(values: list[str]) -> str | None:
    """The full comparison, with the shortcut switched off."""
    saved = parse_mod._SIMPLE_FROM
    parse_mod._SIMPLE_FROM = _NEVER
    try:
        return sender_problem(values)
    finally:
        parse_mod._SIMPLE_FROM = saved


class _Never:
    @staticmethod
    def match(_value):
        return None


_NEVER = _Never()


def check(values: list[str]) -> bool:
    """True when the shortcut took the value (and then the full comparison agrees)."""
    if values and all(_SIMPLE_FROM.match(v) for v in values):
        assert slow(values) is None, values
        assert sender_problem(values) is None
        return True
    assert sender_problem(values) == slow(values), values
    return False


def test_every_from_of_the_corpus(corpus: Path):
    taken = seen = 0
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        try:
            msg = email.message_from_bytes(path.read_bytes()[:200_000], policy=email.policy.compat32)
        except Exception:  # noqa: BLE001 - not a mail: nothing to compare
            continue
        values = raw_headers(msg, "From")
        if not values:
            continue
        seen += 1
        taken += check(values)
    assert seen > 300, seen
    print(f"{taken} of {seen} From headers took the shortcut")
    assert taken > 100, (taken, seen)  # the shortcut does serve ordinary mail


HOSTILE = [
    "alice@corp.example(<mallory@evil.example>",
    '"alice@corp.example" <mallory@evil.example>',
    "=?utf-8?q?alice=40corp.example?= <mallory@evil.example>",
    "Alice <alice@corp.example>, Mallory <mallory@evil.example>",
    "alice@corp.example <mallory@evil.example>",
    "Alice <=?utf-8?q?alice=40corp.example?=>",
    'Alice "<alice@corp.example>" <mallory@evil.example>',
    "Alice (comment) <alice@corp.example>",
    "<alice@corp.example",
    '"Alice <alice@corp.example>',
    "Alice\\ <alice@corp.example>",
    "Alice <alice@corp.example> trailing",
    "Amélie <amelie@corp.example>",
]


def test_hostile_shapes_take_the_full_comparison():
    for value in HOSTILE:
        if _SIMPLE_FROM.match(value):
            # Only the harmless ones may be taken, and then the strict reading agrees.
            assert slow([value]) is None, value
    assert not _SIMPLE_FROM.match(HOSTILE[0])
    assert not _SIMPLE_FROM.match(HOSTILE[4])
    assert not _SIMPLE_FROM.match(HOSTILE[5])
    assert slow([HOSTILE[0]]) is not None  # the full comparison still catches it


ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
word = st.text(alphabet=ATEXT + ".@<>\"() \\,;:[]", min_size=1, max_size=12)
local = st.text(alphabet="abcxyz019!#$%&'*+/^_`{|}~-.=?", min_size=1, max_size=12)
domain = st.sampled_from(["corp.example", "a-b.example.org", "x.y", "-bad.example", "ex..ample", "localhost"])


@settings(max_examples=400, deadline=None)
@given(name=st.lists(word, max_size=3), local=local, domain=domain, angle=st.booleans(),
       quoted=st.booleans())
def test_generated_shapes(name, local, domain, angle, quoted):
    addr = f"{local}@{domain}"
    phrase = " ".join(name)
    if quoted:
        phrase = f'"{phrase}"'
    value = f"{phrase} <{addr}>" if angle else (f"{phrase} {addr}" if name else addr)
    check([value])

"""Property-based tests: real mails from the corpus, mutated (cut short, boundaries
swapped or lost, charsets and transfer encodings garbled, huge headers, deep nesting),
never make an exception escape.  Through the whole Processor on SQLite every one ends
as a ticket or as a quarantined mail with a reason (or, when the mutation left a
machine's mail, as that kind of automatic mail), never as a retry."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from conftest import find_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from harness.ingest import make_app, receive

from gateway.errors import Quarantine
from gateway.ingest.automatic import classify
from gateway.ingest.parse import parse

SEEDS = [
    "zammad/mail001.box", "zammad/mail028.box", "zammad/mail056.box", "zammad/mail085.box", "zammad/mail006.box",
    "zammad/mail110.box", "otobo/EmailParser/MultipartMixedPlainHTML.eml", "otobo/PostMaster/InlineImage.box",
    "talon/standard_replies/outlook.eml", "talon/standard_replies/gmail.eml", "django-helpdesk/quoted_printable.eml",
    "spamscope-mail-parser/mail_test_10", "flanker/missing-boundaries.eml", "cpython-test_email/msg_02.txt",
    "sisimai/bsd/lhost-amazonworkmail-02.eml",
]
CORPUS = find_corpus()
pytestmark = pytest.mark.skipif(CORPUS is None, reason="mail corpus not found (set GATEWAY_CORPUS)")


def _seeds() -> list[bytes]:
    out = []
    for rel in SEEDS:
        path = CORPUS / rel
        if path.is_file():
            out.append(path.read_bytes()[:200_000])
    return out


SEED_BYTES = _seeds() if CORPUS else [b"From: a@b.c\n\nx"]
OUTCOMES = {"created", "quarantined", "auto-reply", "bounce", "feedback", "loop", "duplicate"}


def cut(raw: bytes, at: float) -> bytes:
    return raw[: int(len(raw) * at)]


def swap_boundaries(raw: bytes, seed: int) -> bytes:
    found = re.findall(rb'boundary="?([^";\r\n]+)"?', raw, re.IGNORECASE)
    if len(found) < 1:
        return raw.replace(b"\n--", b"\n-- ", 1)
    a = found[seed % len(found)]
    b = found[(seed + 1) % len(found)] if len(found) > 1 else a[::-1]
    return raw.replace(b"--" + a, b"--\x00SWAP").replace(b"--" + b, b"--" + a).replace(b"--\x00SWAP", b"--" + b)


def garble_encoding(raw: bytes, charset: str, cte: str, junk: bytes) -> bytes:
    raw = re.sub(rb"(?i)charset=\"?[\w.:-]+\"?", b"charset=" + charset.encode(), raw)
    raw = re.sub(rb"(?i)content-transfer-encoding:[^\r\n]*", b"Content-Transfer-Encoding: " + cte.encode(), raw)
    middle = len(raw) // 2
    return raw[:middle] + junk + raw[middle:]


def huge_header(raw: bytes, name: str, size: int, words: bool) -> bytes:
    value = (b"=?utf-8?q?x=C3=A9?= " * (size // 20)) if words else (b";" * size)
    return name.encode() + b": " + value + b"\r\n" + raw


def nest(raw: bytes, depth: int, rfc822: bool) -> bytes:
    body = raw
    for i in range(depth):
        if rfc822:
            body = (b"From: wrapper@example.org\r\nSubject: fwd\r\nContent-Type: message/rfc822\r\n\r\n" + body)
        else:
            b = f"nest{i}".encode()
            body = (b"From: wrapper@example.org\r\nSubject: nested\r\nContent-Type: multipart/mixed; boundary="
                    + b + b"\r\n\r\n--" + b + b"\r\n" + body + b"\r\n--" + b + b"--\r\n")
    return body


seeds = st.sampled_from(SEED_BYTES)
mutations = st.one_of(
    st.builds(cut, seeds, st.floats(0.0, 1.0)),
    st.builds(swap_boundaries, seeds, st.integers(0, 10)),
    st.builds(garble_encoding, seeds, st.sampled_from(["utf-7", "x-unknown", "utf-16", "bogus", "iso-2022-jp",
                                                       "gb2312", "", "utf-8\x00"]),
              st.sampled_from(["base64", "quoted-printable", "x-uuencode", "8bit", "7bit", "bogus"]),
              st.binary(max_size=64)),
    st.builds(huge_header, seeds, st.sampled_from(["Subject", "To", "Content-Type", "X-Junk"]),
              st.integers(10, 120_000), st.booleans()),
    st.builds(nest, seeds, st.integers(1, 120), st.booleans()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
def test_parse_never_raises_anything_but_quarantine(raw):
    try:
        mail = parse(raw)
    except Quarantine as exc:
        assert exc.reason
        return
    classify(mail, ("helpdesk@localhost",))
    assert "\x00" not in mail.subject
    assert not any("\udc80" <= ch <= "\udcff" for ch in mail.text + mail.subject)


_APP = None


def app():
    global _APP
    if _APP is None:
        _APP = make_app(Path(tempfile.mkdtemp(prefix="gateway-properties-")))
    return _APP


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
def test_every_mutated_mail_ends_as_a_ticket_or_quarantined(raw):
    if not raw.strip():
        raw = b"\r\n"  # the store keeps even an empty mail; parse quarantines it
    outcome = receive(app(), raw)
    assert outcome.outcome in OUTCOMES, outcome
    if outcome.outcome == "quarantined":
        assert outcome.detail
    if outcome.outcome == "created":
        assert outcome.ticket

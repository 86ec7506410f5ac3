"""Large mails: a 25 MB attachment is decoded straight from the raw bytes into the blob
store, byte-exact, without the standard parser's copies (issue 8, the memory target)."""

from __future__ import annotations

import base64
import email
import hashlib
import quopri
import random
import tracemalloc

from gateway.ingest.parse import LARGE_BODY, parse
from store.blobs import BlobStore


def _b64_lines(data: bytes, width: int = 76) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i:i + width] for i in range(0, len(encoded), width))


def _mail(parts: list[bytes], boundary: str = "b-outer-1") -> bytes:
    head = ("From: Alice <alice@example.com>\r\nTo: help@desk.example\r\nSubject: Big file\r\n"
            "Message-ID: <big-1@example.com>\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n').encode()
    body = b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts)
    return head + body + f"--{boundary}--\r\n".encode()


def _text_part(text: str) -> bytes:
    return b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode()


def _attachment(name: str, ctype: str, cte: str, encoded: bytes) -> bytes:
    return (f"Content-Type: {ctype}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + encoded


def test_25_mb_attachment_stored_byte_exact_with_bounded_memory(tmp_path):
    payload = random.Random(8).randbytes(25_000_000)
    raw = _mail([_text_part("Voir la pièce jointe."),
                 _attachment("scan.pdf", "application/pdf", "base64", _b64_lines(payload))])
    blobs = BlobStore(tmp_path / "blobs")
    tracemalloc.start()
    try:
        mail = parse(raw, blobs=blobs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * len(raw), f"parse allocated {peak / len(raw):.2f} x the message size"
    assert mail.subject == "Big file" and mail.text == "Voir la pièce jointe."
    (att,) = mail.attachments
    digest = hashlib.sha256(payload).hexdigest()
    assert (att.filename, att.content_type, att.size, att.sha256, att.blob) == \
        ("scan.pdf", "application/pdf", len(payload), digest, digest)
    assert blobs.get(digest) == payload and att.data == payload
    assert not list((tmp_path / "blobs").glob(".tmp-*"))  # no temporary file left behind
    # Without a blob store the same attachment is decoded into memory, the same bytes.
    plain = parse(raw)
    assert plain.attachments[0].blob is None and plain.attachments[0].sha256 == digest


def test_large_parts_read_as_the_standard_parser_reads_them(tmp_path):
    """Every kind of large part gives the bytes ``get_payload(decode=True)`` gives: base64
    with uneven lines, quoted-printable, 8bit, a large body text, a forwarded message."""
    rng = random.Random(1)
    binary = rng.randbytes(LARGE_BODY + 12345)
    uneven = base64.b64encode(binary)
    uneven = b"\n".join(uneven[i:i + n] for i, n in zip(range(0, len(uneven), 50), [50] * len(uneven)))
    text = ("Ligne accentuée é à ü, " * 7 + "\n") * 9000
    qp = quopri.encodestring(text.encode("utf-8")).replace(b"\n", b"\r\n")
    eightbit = ("données brutes ; " * 8 + "\r\n").encode("utf-8") * 9000
    forwarded = (b"From: bob@example.com\r\nSubject: inner\r\nMessage-ID: <inner@example.com>\r\n"
                 b"Content-Type: multipart/mixed; boundary=\"inner-b\"\r\n\r\n--inner-b\r\n"
                 + _attachment("inner.bin", "application/octet-stream", "base64", _b64_lines(binary))
                 + b"\r\n--inner-b--\r\n")
    raw = _mail([
        _text_part("Bonjour"),
        _attachment("a.bin", "application/octet-stream", "base64", uneven),
        _attachment("b.txt", "text/plain; charset=utf-8", "quoted-printable", qp),
        _attachment("c.csv", "text/csv; charset=utf-8", "8bit", eightbit),
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + qp,
        b"Content-Type: message/rfc822\r\n\r\n" + forwarded,
    ])
    std = [p.get_payload(decode=True) for p in email.message_from_bytes(raw).walk() if not p.is_multipart()]
    blobs = BlobStore(tmp_path / "blobs")
    mail = parse(raw, blobs=blobs)
    by_name = {a.filename: a for a in mail.attachments}
    assert by_name["a.bin"].data == binary == std[1] and by_name["a.bin"].blob
    assert by_name["b.txt"].data == std[2] and by_name["b.txt"].blob
    assert by_name["c.csv"].data == std[3] == eightbit and by_name["c.csv"].blob
    # A large body text stays body text; the forwarded message is kept as it came.
    assert mail.text == ("Bonjour\n" + text.rstrip("\n"))
    assert by_name["inner.eml"].data == forwarded and by_name["inner.eml"].blob is None
    assert mail == parse(raw, blobs=blobs) and \
        [a.sha256 for a in parse(raw).attachments] == [a.sha256 for a in mail.attachments]


def test_broken_base64_falls_back_to_the_standard_decoder(tmp_path):
    """Padding in the middle of a large base64 body: the standard decoder's reading."""
    chunk = base64.b64encode(b"x" * 1000 + b"y")  # ends in "=="
    body = b"\r\n".join([chunk] * 2000)
    raw = _mail([_text_part("Hi"), _attachment("odd.bin", "application/octet-stream", "base64", body)])
    std = email.message_from_bytes(raw).get_payload()[1].get_payload(decode=True)
    att = parse(raw, blobs=BlobStore(tmp_path / "blobs")).attachments[0]
    assert att.data == std and att.blob is None

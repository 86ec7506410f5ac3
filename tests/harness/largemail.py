"""Large multipart mails built in memory, for the tests of large mails (tests/test_large_mail.py,
tests/test_db_blobs.py)."""

from __future__ import annotations

import base64


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

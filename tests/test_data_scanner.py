"""The door reads DATA in chunks (DataScanner) with the meaning aiosmtpd gives it line by
line: the same end (only <CR><LF>.<CR><LF>, CVE-2024-27305), the same dot-unstuffing, the
same answer for a line too long or too much data, wherever the chunks happen to be cut.
One difference, on purpose: a bare <LF> ends a line for the length limits (as Postfix
reads it), so a mail written with LF line endings is not one line too long."""

from __future__ import annotations

import asyncio
import hashlib
import random

from aiosmtpd.smtp import _DataState

from gateway.ingest.smtp import DataScanner

LINE, STREAM = 1001, 1001  # aiosmtpd's line_length_limit, and its stream reader's limit


def _aiosmtpd(data: bytes, pieces: list[int], size_limit: int | None) -> tuple[_DataState, bytes | None, int]:
    """aiosmtpd 1.4's DATA loop, copied, on a real StreamReader with aiosmtpd's limit fed in
    the given pieces: (state, content or None, bytes read).  Its one change: it reads up
    to each <LF> rather than each <CR><LF>, so a bare <LF> ends a line for the length
    limits; a line after a bare <LF> is neither unstuffed nor the end of the data."""

    async def run():
        reader = asyncio.StreamReader(limit=STREAM)

        async def feed():
            pos = 0
            for n in pieces:
                reader.feed_data(data[pos:pos + n])
                pos += n
                await asyncio.sleep(0)
            reader.feed_data(data[pos:])
            reader.feed_eof()

        feeder = asyncio.create_task(feed())
        lines, fragments, num_bytes, state = [], [], 0, _DataState.NOMINAL
        read = 0
        ended = False
        crlf_before = True  # the line starts after a <CR><LF> (or starts DATA)
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as e:
                if state == _DataState.NOMINAL:
                    state = _DataState.TOO_LONG
                lines.clear()
                line = await reader.read(e.consumed)
            except asyncio.IncompleteReadError:
                break
            read += len(line)
            if not fragments and crlf_before and line == b".\r\n":
                ended = True
                break
            num_bytes += len(line)
            if state == _DataState.NOMINAL and size_limit and num_bytes > size_limit:
                state = _DataState.TOO_MUCH
                lines.clear()
            fragments.append(line)
            if line.endswith(b"\n"):
                whole = b"".join(fragments)
                if state == _DataState.NOMINAL:
                    if len(whole) > LINE:
                        state = _DataState.TOO_LONG
                        lines.clear()
                    else:
                        lines.append(whole[1:] if crlf_before and whole.startswith(b".") else whole)
                crlf_before = whole.endswith(b"\r\n")
                fragments.clear()
        await feeder
        if not ended:
            return state, None, read
        return state, (b"".join(lines) if state == _DataState.NOMINAL else None), read

    return asyncio.run(run())


def _scan(data: bytes, pieces: list[int], size_limit: int | None) -> tuple[_DataState, bytes | None, int]:
    scanner = DataScanner(LINE, STREAM, size_limit)
    pos = 0
    for n in pieces + [len(data)]:
        chunk = data[pos:pos + n]
        if not chunk:
            continue
        used = scanner.feed(chunk)
        if used is not None:
            pos += used
            break
        pos += len(chunk)
    if not scanner.ended:
        return scanner.state, None, pos
    return scanner.state, (scanner.take() if scanner.state == _DataState.NOMINAL else None), pos


TRICKY = [b".", b"..", b"...", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.", b".\r",
          b"\r", b"\n", b"\r\n", b"x", b"MAIL FROM:<x@evil.example>\r\n", b"QUIT\r\n"]


def _random_data(rng: random.Random) -> bytes:
    out = []
    for _ in range(rng.randrange(0, 60)):
        kind = rng.random()
        if kind < 0.6:
            out.append(rng.choice(TRICKY))
        elif kind < 0.9:
            out.append(b"a" * rng.randrange(0, 120) + b"\r\n")
        elif kind < 0.95:
            out.append(b"b" * rng.choice([997, 998, 999, 1000, 1001, 1002, 1003, 1500, 2500]) + b"\r\n")
        else:
            # Text written with LF line endings: short lines, long ones, dots after them.
            out.append(b"\n".join(b"c" * rng.choice([0, 40, 999, 1000, 1001, 1500]) + rng.choice([b"", b"."])
                                   for _ in range(rng.randrange(1, 40))) + rng.choice([b"\n", b"\r\n"]))
    out.append(b"\r\n.\r\n" if rng.random() < 0.9 else b"")
    out.append(b"NOOP\r\n")
    return b"".join(out)


def test_scanner_agrees_with_aiosmtpd_on_random_text_cut_anywhere():
    """Random text full of dots, bare CRs and LFs, lines around the length limit, cut in
    random chunks (often 1-5 bytes, so inside <CR><LF>.<CR><LF> and dot-stuffed lines):
    the same state, the same stored text and the same bytes read as aiosmtpd's loop."""
    rng = random.Random(8)
    refused = ended = 0
    for _ in range(3000):
        data = _random_data(rng)
        pieces = [rng.choice([1, 2, 3, 4, 5, rng.randrange(1, 3000)]) for _ in range(rng.randrange(0, 40))]
        limit = rng.choice([None, None, rng.randrange(1, 4000)])
        expected = _aiosmtpd(data, pieces, limit)
        assert _scan(data, pieces, limit) == expected, (data, pieces, limit)
        refused += expected[0] != _DataState.NOMINAL
        ended += expected[1] is not None
    assert refused > 300 and ended > 1000  # both kinds really exercised


def test_end_split_inside_crlf_dot_crlf_at_every_point():
    body = b"Subject: x\r\n\r\n..stuffed\r\nline\r\n"
    data = body + b".\r\nNOOP\r\n"
    for cut in range(1, len(data)):
        for second in range(cut + 1, len(data) + 1):
            state, content, read = _scan(data, [cut, second - cut], None)
            assert (state, content, read) == (_DataState.NOMINAL, b"Subject: x\r\n\r\n.stuffed\r\nline\r\n",
                                              len(body) + 3), (cut, second)


def test_smuggling_sequences_never_end_data_whatever_the_cuts():
    for trick in (b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n..\r\n"):
        data = b"a" + trick + b"MAIL FROM:<x@evil.example>\r\n" + b"\r\n.\r\n"
        for cut in range(1, len(data)):
            state, content, read = _scan(data, [cut], None)
            assert read == len(data) and content == _aiosmtpd(data, [cut], None)[1], (trick, cut)
            assert b"MAIL FROM" in content


def test_too_long_and_too_much_are_read_to_the_end_then_refused():
    long_line = b"x" * 5000 + b".\r\n"  # its ".<CR><LF>" is not at a line's start
    state, content, read = _scan(long_line + b"\r\n.\r\nNOOP\r\n", [7, 700, 3], None)
    assert state == _DataState.TOO_LONG and read == len(long_line) + 5
    big = b"y" * 500 + b"\r\n"
    state, content, read = _scan(big * 20 + b".\r\n", [1000], 5000)
    assert state == _DataState.TOO_MUCH and read == len(big) * 20 + 3


# Over real SMTP: the door, a raw socket, DATA sent in tiny pieces ------------------------

def test_door_reads_a_mail_cut_inside_the_end_and_inside_stuffed_lines(tmp_path):
    """The pieces reach the door one by one: cuts inside a dot-stuffed line, inside a bare
    <LF>.<CR><LF>, and inside the final <CR><LF>.<CR><LF>; the mail stored is the one sent,
    unstuffed, and the session goes on (NOOP is not taken as DATA)."""
    from sqlmodel import select

    from harness.door import dialogue, sized_door

    from store.db import session_for
    from store.models import InboundMessage

    mail = (b"From: Alice <alice@example.com>\r\nTo: helpdesk@localhost\r\nSubject: dots\r\n"
            b"Message-ID: <dots-1@example.com>\r\n\r\n..first\r\nmiddle\n.\r\nnot the end\r\n...\r\nlast\r\n")
    wire = mail + b".\r\n"
    expected = mail.replace(b"\r\n..", b"\r\n.")
    stuffed = wire.index(b"..first")
    bare = wire.index(b"\n.\r\n")
    end = len(wire) - 5
    cuts = sorted({stuffed + 1, stuffed + 2, bare + 1, bare + 2, end + 1, end + 2, end + 3, end + 4})
    app, controller, stored = sized_door(tmp_path)
    try:
        replies = dialogue(controller.port, wire + b"NOOP\r\n", cuts)
    finally:
        controller.stop()
    assert replies[5].startswith(b"250 2.0.0 Stored as #"), replies
    assert replies[6].startswith(b"250"), replies  # the NOOP, answered as a command
    with session_for(app.engine) as session:
        (row,) = session.exec(select(InboundMessage)).all()
    assert app.blobs.get(row.sha256) == expected
    assert row.sha256 == hashlib.sha256(expected).hexdigest()
    app.engine.dispose()


def test_door_answers_500_for_a_line_too_long_and_keeps_the_session(tmp_path):
    from harness.door import dialogue, sized_door

    wire = b"Subject: long\r\n\r\n" + b"z" * 3000 + b"\r\nafter\r\n.\r\n"
    app, controller, stored = sized_door(tmp_path)
    try:
        replies = dialogue(controller.port, wire, [10, 1200, 2500, len(wire) - 2])
    finally:
        controller.stop()
    assert replies[5].startswith(b"500 Line too long"), replies
    assert replies[6].startswith(b"221") and not stored
    app.engine.dispose()

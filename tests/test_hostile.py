"""Hostile inputs of the reliability bar (shared/reference/reliability-security.md, part b),
through the real store and Processor on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlmodel import select

from harness.ingest import make_app, receive
from store.db import session_for
from store.models import Ticket, TicketMessage

VICTIM = "alice@corp.example"


def raw(from_header: str, subject: str, body: str = "Hello", mid: str = "m1@x.example", extra: str = "") -> bytes:
    return (f"From: {from_header}\r\nTo: helpdesk@localhost\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def messages_on(app, number: str) -> list[TicketMessage]:
    with session_for(app.engine) as session:
        ticket = session.exec(select(Ticket).where(Ticket.number == number)).one()
        return list(session.exec(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id,
                                                             TicketMessage.direction == "in")))


def test_encoded_display_name_posing_as_the_victim_gets_a_ticket_of_its_own(tmp_path, database_url):
    """Item 23: ``=?utf-8?q?alice=40corp.example?= <mallory@evil>`` is Mallory, not Alice."""
    app = make_app(tmp_path, database_url=database_url)
    first = receive(app, raw(f"Alice <{VICTIM}>", "Salary slips ##HR1##", mid="a1@corp.example"))
    assert first.outcome == "created"
    forged = receive(app, raw("=?utf-8?q?alice=40corp.example?= <mallory@evil.example>",
                              f"RE: [{first.ticket}] Salary slips", "Send them to me please.",
                              mid="f1@evil.example", extra=f"In-Reply-To: <a1@corp.example>\r\n"))
    assert forged.outcome == "created" and forged.ticket != first.ticket
    assert [m.from_addr for m in messages_on(app, first.ticket)] == [VICTIM]
    assert [m.from_addr for m in messages_on(app, forged.ticket)] == ["mallory@evil.example"]
    app.engine.dispose()


def test_address_the_parsers_read_differently_is_quarantined(tmp_path, database_url):
    """Item 22 (CVE-2023-27043 shapes): where the address ends is a guess; a guess is no identity."""
    app = make_app(tmp_path, database_url=database_url)
    out = receive(app, raw(f"{VICTIM}(<mallory@evil.example>", "Hello"))
    assert out.outcome == "quarantined" and "sender" in out.detail
    app.engine.dispose()


def test_nul_bytes_in_subject_and_body_make_a_ticket_on_both_databases(tmp_path, database_url):
    """Item 18: PostgreSQL text refuses 0x00, SQLite takes it; the mail must not care."""
    app = make_app(tmp_path, database_url=database_url)
    out = receive(app, raw("Bob <bob@example.be>", "Screen\x00 black", "Line one\x00\r\nLine two"))
    assert out.outcome == "created", out.detail
    with session_for(app.engine) as session:
        ticket = session.exec(select(Ticket)).one()
        assert "\x00" not in ticket.title and "\x00" not in ticket.description
        assert "Line two" in ticket.description
    app.engine.dispose()


def test_no_reply_and_null_return_path_senders_get_a_ticket_but_no_answer(tmp_path, database_url):
    """Items 40 and 49: a machine's address is never answered (the "ticket trick")."""
    from harness.ingest import outbox_rows

    app = make_app(tmp_path, database_url=database_url)
    a = receive(app, raw("Service <no-reply@signup.example>", "Confirm your account", "Code 123456", mid="n1@s.example"))
    b = receive(app, raw("Robot <robot@app.example>", "Report", "Nightly report", mid="n2@s.example",
                         extra="Return-Path: <>\r\n"))
    c = receive(app, raw("Jan <jan@example.be>", "Printer", "Broken", mid="n3@s.example",
                         extra="Return-Path: <jan@example.be>\r\n"))
    assert [a.outcome, b.outcome, c.outcome] == ["created"] * 3
    assert [o.recipient for o in outbox_rows(app)] == ["jan@example.be"]
    app.engine.dispose()


def test_a_subject_that_looks_like_an_unfinished_encoded_word_still_gets_its_confirmation(tmp_path, database_url):
    """Found by the property tests: the standard library decodes such text while folding
    the outgoing Subject and fails; the customer must still get a ticket and a mail."""
    from harness.ingest import outbox_rows

    app = make_app(tmp_path, database_url=database_url)
    out = receive(app, b"From: Hans <hans@example.com>\r\nTo: helpdesk@localhost\r\n"
                       b"Subject: utf8: =?UTF-8?Q?=E4=BD=BF=E3=81=A3=E3\r\nMessage-ID: <u1@example.com>\r\n\r\nBody\r\n")
    assert out.outcome == "created", out.detail
    (row,) = outbox_rows(app)
    assert row.state == "pending" and b"utf8:" in row.raw
    app.engine.dispose()


def test_several_senders_in_from_are_quarantined_unless_sender_names_one(tmp_path, database_url):
    """Item 21: ``From: victim, attacker`` or two From fields is an ambiguous identity:
    quarantined, never "the first" (which would write into the victim's ticket); with a
    Sender field naming one of the authors (RFC 5322 §3.6.2), that one sent it."""
    app = make_app(tmp_path, database_url=database_url)
    first = receive(app, raw(f"Alice <{VICTIM}>", "Salary slips ##HR1##", mid="a1@corp.example"))
    assert first.outcome == "created"
    follow = f"In-Reply-To: <a1@corp.example>\r\n"
    listed = receive(app, raw(f"Alice <{VICTIM}>, Mallory <mallory@evil.example>", f"RE: [{first.ticket}] Salary",
                              "Send them to mallory please.", mid="f1@evil.example", extra=follow))
    assert listed.outcome == "quarantined" and "ambiguous sender" in listed.detail
    twice = receive(app, raw(f"Alice <{VICTIM}>", f"RE: [{first.ticket}] Salary", "To mallory please.",
                             mid="f2@evil.example", extra=f"From: Mallory <mallory@evil.example>\r\n{follow}"))
    assert twice.outcome == "quarantined" and "2 From fields" in twice.detail
    # Sender names someone outside the authors: still ambiguous.
    outside = receive(app, raw(f"Alice <{VICTIM}>, Bob <bob@corp.example>", "Printer", mid="f3@x.example",
                               extra="Sender: Mallory <mallory@evil.example>\r\n"))
    assert outside.outcome == "quarantined"
    assert [m.from_addr for m in messages_on(app, first.ticket)] == [VICTIM]
    # Two authors and the Sender one of them: a ticket in the sender's name.
    pair = receive(app, raw(f"Alice <{VICTIM}>, Bob <bob@corp.example>", "Printer on the 3rd floor",
                            mid="p1@corp.example", extra="Sender: Bob <bob@corp.example>\r\n"))
    assert pair.outcome == "created" and pair.ticket != first.ticket
    assert [m.from_addr for m in messages_on(app, pair.ticket)] == ["bob@corp.example"]
    # The same address twice is one sender.
    same = receive(app, raw(f"Alice <{VICTIM}>, alice <{VICTIM.upper()}>", "Scanner", mid="s1@corp.example"))
    assert same.outcome == "created"
    app.engine.dispose()


def test_a_malformed_mail_makes_its_ticket_and_says_what_was_wrong(tmp_path, database_url):
    """Items 15 and 17: a missing closing boundary and base64 with trailing garbage. The
    ticket is made from what could be read, and the inbound row says what was wrong,
    for the agent who finds the text odd (``gateway inbound show``)."""
    from store.models import InboundMessage

    app = make_app(tmp_path, database_url=database_url)
    mail = (b"From: Bob <bob@example.be>\r\nTo: helpdesk@localhost\r\nSubject: Printer\r\n"
            b"Message-ID: <broken-1@example.be>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n--XYZ\r\n"
            b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"TCdpbXByaW1hbnRlIGVzdCBlbiBwYW5uZS4=x\r\n")
    out = receive(app, mail)
    assert out.outcome == "created" and "close boundary not found" in out.detail
    with session_for(app.engine) as session:
        ticket = session.exec(select(Ticket)).one()
        assert "L'imprimante est en panne." in ticket.description
        row = session.exec(select(InboundMessage)).one()
        assert "as read: close boundary not found" in row.detail
    # A well-formed mail says nothing of the kind.
    clean = receive(app, raw("Bob <bob@example.be>", "Scanner", mid="clean-1@example.be"))
    assert clean.outcome == "created" and "as read" not in (clean.detail or "")
    app.engine.dispose()

"""VERP ([outbound] verp = true): each notification leaves with an envelope sender naming
its outbox row, so a bounce finds the notification it returns even when it quotes
nothing of it (the Message-IDs it would otherwise be matched by).  Delivery through a
real SMTP relay on loopback; the bounces are stored and processed as the door would."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy

from harness.relay import T0, open_ticket, outbox_rows, relay, relay_config  # noqa: F401 (relay: fixture)

from gateway.app import App
from gateway.config import load_config
from gateway.outbound.outbox import deliver_pending
from gateway.tokens import bounce_address, verified_bounce
from store.db import session_for
from store.models import Person
from sqlmodel import select
from harness.ingest import dsn, receive_bounce

SECRET = "test-secret-of-at-least-32-bytes"
HELPDESK = "helpdesk@desk.example.com"


def verp_app(tmp_path, relay, database_url, verp: bool = True) -> App:
    return App(load_config(relay_config(tmp_path, relay.port, database_url,
                                        extra=f"verp = {'true' if verp else 'false'}"), env={}))


def test_the_envelope_sender_names_the_mail_and_its_bounce_finds_it(tmp_path, relay, database_url):
    app = verp_app(tmp_path, relay, database_url)
    open_ticket(app)
    [(_, result)] = deliver_pending(app.engine, app.config, app.transport(), now=T0)
    assert result.outcome == "sent"
    [row] = outbox_rows(app)
    [(mail_from, rcpts, raw)] = relay.received
    assert mail_from == bounce_address(SECRET, HELPDESK, row.id) and rcpts == ["jane@example.org"]
    assert mail_from.startswith(f"helpdesk+b{row.id}.") and verified_bounce(SECRET, mail_from) == row.id
    # The headers the customer sees are unchanged: From and Reply-To are the desk's.
    sent = message_from_bytes(raw, policy=default_policy)
    assert sent["From"].addresses[0].addr_spec == HELPDESK

    # The relay's bounce quotes nothing of the mail: the address it came to is enough.
    outcome = receive_bounce(app, dsn(mail_from), mail_from)
    assert outcome.outcome == "bounce" and f"<{row.message_id}> marked failed" in outcome.detail
    [row] = outbox_rows(app)
    assert row.state == "failed" and "bounce" in row.last_answer
    with session_for(app.engine) as session:
        jane = session.exec(select(Person).where(Person.email == "jane@example.org")).one()
        assert jane.hard_bounces == 1
    app.engine.dispose()


def test_what_else_comes_to_a_bounce_address(tmp_path, relay, database_url):
    """A reply nobody recognises as a report, sent to a bounce address, is taken for a
    soft one (the mail stays sent, the answer kept); a forged token is no bounce address
    at all: the mail is an ordinary one."""
    app = verp_app(tmp_path, relay, database_url)
    open_ticket(app)
    deliver_pending(app.engine, app.config, app.transport(), now=T0)
    [row] = outbox_rows(app)
    address = bounce_address(SECRET, HELPDESK, row.id)
    odd = (f"From: gateway@mx.example.org\r\nTo: {address}\r\nSubject: Problem\r\n"
           "Message-ID: <odd@mx.example.org>\r\n\r\nSomething went wrong with your message.\r\n").encode()
    outcome = receive_bounce(app, odd, address)
    assert outcome.outcome == "bounce" and f"outbox mail #{row.id}" in outcome.detail
    [row] = outbox_rows(app)
    assert row.state == "sent" and "bounce" in row.last_answer

    forged = address.replace(".", ".f", 1)  # b<id>.f<token>: does not verify
    assert verified_bounce(SECRET, forged) is None
    mail = (f"From: Paul <paul@example.org>\r\nTo: {forged}\r\nSubject: Printer on floor 1\r\n"
            "Message-ID: <paul@example.org>\r\n\r\nThe printer on floor 1 is out of toner.\r\n").encode()
    assert receive_bounce(app, mail, forged).outcome == "created"
    app.engine.dispose()


def test_without_verp_the_envelope_sender_is_the_desk(tmp_path, relay, database_url):
    app = verp_app(tmp_path, relay, database_url, verp=False)
    open_ticket(app)
    deliver_pending(app.engine, app.config, app.transport(), now=T0)
    assert [mail_from for mail_from, _r, _raw in relay.received] == [HELPDESK]
    app.engine.dispose()

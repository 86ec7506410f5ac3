"""Helpers for the ingest tests: a gateway on SQLite with a given config, and stories
such as ``receive(app, raw)`` (store as the door would, then process), and bounces (DSNs)
as a relay writes them."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from sqlmodel import select

from gateway.app import App
from gateway.config import load_config
from gateway.ingest.inbound import store_raw
from gateway.ingest.process import Outcome
from gateway.outbound.outbox import render_pending
from store.db import session_for
from store.models import InboundMessage, Outbox, Person, Ticket


def make_app(folder: Path, toml: str = "", database_url: str | None = None) -> App:
    """A gateway in ``folder`` (SQLite there, or ``database_url``) with extra config TOML."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    if database_url:
        toml = f'[database]\nurl = "{database_url}"\n' + toml
    path.write_text(toml)
    return App(load_config(path, env={}))


def receive(app: App, raw: bytes, rcpt: tuple[str, ...] = ("helpdesk@localhost",), source: str = "test") -> Outcome:
    """Store ``raw`` as the SMTP door would, then process it."""
    stored = store_raw(app.engine, app.blobs, raw, source=source, rcpt_to=rcpt)
    return app.processor.process(stored.id)


def customer_mail(sender: str = "marie.dupont@example.be", subject: str = "Printer broken",
                  body: str = "The printer on the second floor does not print.", **headers) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "helpdesk@localhost"
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.be")
    msg.set_content(body)
    # After the content: set_content() clears every Content-* header.
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    return msg.as_bytes()


def outbox_rows(app: App) -> list[Outbox]:
    """The outbox, its mails rendered as the deliverer renders them before sending."""
    render_pending(app.engine, app.notifier)
    with session_for(app.engine) as session:
        return list(session.exec(select(Outbox).order_by(Outbox.id)))


def tickets(app: App) -> list[Ticket]:
    with session_for(app.engine) as session:
        return list(session.exec(select(Ticket)))


def person(app: App, email: str) -> Person | None:
    with session_for(app.engine) as session:
        return session.exec(select(Person).where(Person.email == email)).first()


def inbound_rows(app: App) -> list[InboundMessage]:
    with session_for(app.engine) as session:
        return list(session.exec(select(InboundMessage)))


def dsn(to: str, recipient: str = "jane@example.org", status: str = "5.1.1") -> bytes:
    """A delivery status notification that returns nothing of the mail: no headers, no text."""
    return (f"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\nTo: {to}\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-{status}@mx.example.org>\r\n"
            "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
            "--B--\r\n").encode()


def receive_bounce(app: App, raw: bytes, rcpt: str):
    stored = store_raw(app.engine, app.blobs, raw, source="smtp", mail_from="", rcpt_to=(rcpt,))
    return app.processor.process(stored.id)

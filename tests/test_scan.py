"""Attachments are scanned by a real ClamAV daemon before a ticket offers them (issue 25).

clamd runs from Debian's clamav-daemon with a signature database the test writes
(tests/harness/clamd.py); mails come in over SMTP to a real `gateway serve`, and from a
real Dovecot mailbox.  An infected mail is quarantined with the signature's name,
nothing of it is kept as an attachment and nobody is told; a clean attachment is kept;
with clamd stopped a mail waits, unprocessed, until it is back.
"""

from __future__ import annotations

import os
import smtplib
import time
import urllib.request
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from sqlmodel import select

from conftest import free_port
from gateway.app import App
from gateway.config import load_config
from harness.clamd import SIGNATURE, Clamd, eicar
from store.db import session_for
from store.models import Attachment, InboundMessage, Outbox, Ticket
from harness.dovecot import dovecot_ok, make_dovecot  # noqa: F401 (fixtures)
from harness.imap import Running, config_text
from harness.imap import wait_until as imap_wait
from harness.service import Service, service_config, wait_until


@pytest.fixture
def clamd():
    problem = Clamd.problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI is set: the scanning tests must run)")
        pytest.skip(problem)
    server = Clamd()
    server.start()
    yield server
    server.cleanup()


def with_attachment(sender: str, subject: str, name: str, data: bytes, content_type: str) -> bytes:
    """A mail as a mail client writes it: a short text and one attached file."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "helpdesk@localhost"
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg.set_content("Bonjour,\n\nvoici le fichier demandé.\n")
    maintype, subtype = content_type.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Count 0/Kids[]>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")


def rows(app: App, sender: str) -> list[InboundMessage]:
    with session_for(app.engine) as s:
        return [r for r in s.exec(select(InboundMessage).order_by(InboundMessage.id)) if r.mail_from == sender]


def test_smtp_infected_quarantined_clean_kept_and_a_stopped_scanner_holds_mail(tmp_path, database_url, clamd):
    port, http = free_port(), free_port()
    service_config(tmp_path, port, database_url, extra=f'[scan]\nclamd = "{clamd.socket}"\n'
                                                        f'[http]\nport = {http}\n')
    service = Service(tmp_path, port, env={"GATEWAY_HTTP_PORT": str(http)})
    app = App(load_config(tmp_path / "config.toml", env={}))

    def send(raw: bytes, sender: str) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            assert client.sendmail(sender, ["helpdesk@localhost"], raw) == {}

    def done(sender: str) -> bool:
        found = rows(app, sender)
        return bool(found) and all(r.state != "received" for r in found)

    try:
        send(with_attachment("mallory@evil.test", "Facture", "facture.com", eicar(), "application/octet-stream"),
             "mallory@evil.test")
        send(with_attachment("marie@client.test", "Rapport", "rapport.pdf", PDF, "application/pdf"),
             "marie@client.test")
        wait_until(lambda: done("mallory@evil.test") and done("marie@client.test"), timeout=180)
        (infected,) = rows(app, "mallory@evil.test")
        assert infected.state == "quarantined" and SIGNATURE in infected.detail
        (clean,) = rows(app, "marie@client.test")
        assert clean.outcome == "created"
        with session_for(app.engine) as s:
            kept = [a.filename for a in s.exec(select(Attachment))]
            told = [o.recipient for o in s.exec(select(Outbox))]
            ticket_count = len(s.exec(select(Ticket)).all())
        # The clean attachment is kept; nothing of the infected mail is, nobody is told of it.
        assert kept == ["rapport.pdf"] and ticket_count == 1
        assert "mallory@evil.test" not in told
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10).read().decode()
        assert "gateway_mails_infected_total 1.0" in metrics

        # The scanner stops: a mail waits, unprocessed and not quarantined, until it is back.
        clamd.stop()
        send(with_attachment("jan@client.test", "Scan", "scan.pdf", PDF, "application/pdf"), "jan@client.test")
        wait_until(lambda: rows(app, "jan@client.test"), timeout=30)
        time.sleep(5)  # several of the worker's tries
        (waiting,) = rows(app, "jan@client.test")
        assert waiting.state == "received" and waiting.attempts == 0
        clamd.start()
        wait_until(lambda: done("jan@client.test"), timeout=180)
        (back,) = rows(app, "jan@client.test")
        assert back.outcome == "created"
        with session_for(app.engine) as s:
            assert sorted(a.filename for a in s.exec(select(Attachment))) == ["rapport.pdf", "scan.pdf"]
    finally:
        app.engine.dispose()
        assert service.stop() == 0


def test_imap_infected_quarantined_clean_kept(tmp_path, make_dovecot, clamd):
    dovecot = make_dovecot()
    path = tmp_path / "config.toml"
    path.write_text(config_text(dovecot, top=f'[scan]\nclamd = "{clamd.socket}"\n'))
    app = App(load_config(path, env={}))
    dovecot.append("INBOX", [
        with_attachment("mallory@evil.test", "Facture", "facture.com", eicar(), "application/octet-stream"),
        with_attachment("marie@client.test", "Rapport", "rapport.pdf", PDF, "application/pdf")])
    with Running(app):
        imap_wait(lambda: not dovecot.message_ids("INBOX") and len(rows_from(app)) == 2
                  and all(r.state != "received" for r in rows_from(app)), timeout=180)
    states = {r.state: r for r in rows_from(app)}
    assert set(states) == {"quarantined", "processed"}
    assert SIGNATURE in states["quarantined"].detail
    with session_for(app.engine) as s:
        assert [a.filename for a in s.exec(select(Attachment))] == ["rapport.pdf"]
        assert all("mallory" not in o.recipient for o in s.exec(select(Outbox)))
    app.engine.dispose()


def rows_from(app: App) -> list[InboundMessage]:
    with session_for(app.engine) as s:
        return list(s.exec(select(InboundMessage).order_by(InboundMessage.id)))

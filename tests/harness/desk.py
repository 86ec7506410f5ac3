"""The help desk as the world reaches it, for the isolation tests (tests/test_isolation.py,
tests/test_verify.py): mails as Thunderbird writes them, sent over SMTP to a running
`gateway serve`, its outbox's .eml files, the agent's command line."""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import smtplib
from datetime import datetime, timezone
from email.utils import getaddresses, make_msgid

from sqlmodel import select

from conftest import run_gateway
from gateway.app import App
from gateway.config import load_config
from harness.service import wait_until
from store.db import session_for
from store.models import InboundMessage, Outbox, Ticket

DANA = "dana.martin@acme.test"
EVE = "eve@evil.test"
TITLE = "Salaire de mars non versé"
REFERENCE = "DANA-PO-7781"
MTA = "mx.localhost"


def verdict(result: str, domain: str) -> str:
    """The header our MTA puts on top of every mail it accepts."""
    return (f"Authentication-Results: {MTA}; spf=pass smtp.mailfrom={domain}; dkim=none;\r\n"
            f" dmarc={result} (p=NONE dis=NONE) header.from={domain}\r\n")


def mail(sender: str, subject: str, body: str, *, top: str, headers: str = "", to: str = "Helpdesk <helpdesk@localhost>",
         name: str = "") -> bytes:
    """A mail as Thunderbird writes it, with our MTA's verdict on top."""
    now = datetime.now(timezone.utc)
    return (f"{top}Message-ID: {make_msgid(domain=sender.rpartition('@')[2])}\r\n"
            f"Date: {email.utils.format_datetime(now)}\r\nMIME-Version: 1.0\r\nUser-Agent: Mozilla Thunderbird\r\n"
            f"Content-Language: fr-BE\r\nFrom: {name or sender.split('@')[0].title()} <{sender}>\r\nTo: {to}\r\n"
            f"{headers}Subject: {email.header.Header(subject, 'utf-8').encode()}\r\n"
            f"Content-Type: text/plain; charset=UTF-8; format=flowed\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{body}\r\n").encode()


class Desk:
    """The running gateway, reached as the world reaches it: SMTP in, the outbox's .eml
    files out, the agent's command line; and its database read directly to know when
    it is done."""

    def __init__(self, folder, port: int):
        self.folder, self.port = folder, port
        self.app = App(load_config(folder / "config.toml", env={}))
        self.sent = 0

    def send(self, raw: bytes, mail_from: str, rcpt: str = "helpdesk@localhost") -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            assert client.sendmail(mail_from, [rcpt], raw) == {}
        self.sent += 1
        wait_until(self.settled, timeout=60)

    def settled(self) -> bool:
        """Every mail sent is processed and every notification delivered."""
        with session_for(self.app.engine) as s:
            states = s.exec(select(InboundMessage.state)).all()
            pending = s.exec(select(Outbox.id).where(Outbox.state == "pending")).all()
        return len(states) == self.sent and "received" not in states and not pending

    def status(self, number: str) -> str:
        with session_for(self.app.engine) as s:
            return s.exec(select(Ticket.status).where(Ticket.number == number)).one()

    def agent(self, *args: str) -> None:
        run_gateway("--config", str(self.folder / "config.toml"), "ticket", "set-status", *args, cwd=self.folder)
        wait_until(self.settled, timeout=60)

    def mails(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in sorted((self.folder / "var" / "outbox").glob("*.eml"))]

    def mails_to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.mails() if address in [a.addr_spec for a in m["To"].addresses]]

    def latest_to(self, address: str) -> tuple[str, str]:
        """(Message-ID, signed Reply-To) of the newest mail sent to ``address``, as its
        .eml file holds it."""
        with session_for(self.app.engine) as s:
            newest = max((r for r in s.exec(select(Outbox)) if r.recipient == address),
                         key=lambda r: r.id).message_id
        sent = next(m for m in self.mails_to(address) if m["Message-ID"].strip("<>") == newest)
        return newest, getaddresses([str(sent["Reply-To"])])[0][1]

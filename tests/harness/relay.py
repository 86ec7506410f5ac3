"""A real SMTP relay (aiosmtpd on loopback) whose handler answers DATA as a script says
(250, a code, "drop" mid-data, "slow N"), the config that points the outbound side at it, and
stories the delivery tests share (a ticket with its confirmation queued, draining the outbox)."""

from __future__ import annotations

import asyncio
import datetime as dt
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from sqlmodel import col, select

from conftest import free_port, write_config
from gateway.app import App
from gateway.outbound.outbox import deliver_pending
from store.db import session_for
from store.models import Outbox
from store.notifications import queue
from store.tickets import create_ticket, get_or_create_person


T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)


@dataclass
class RelayHandler:
    """Answers each DATA as its script says: "250", a code and text ("451 4.3.0 busy"), or
    "drop" (close the connection in the middle of the data).  After the script: 250."""

    script: list[str] = field(default_factory=list)
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    on_accept: object = None  # called before answering 250 (the crash test holds the db here)
    on_rcpt: object = None  # called as a recipient is accepted (before the message is sent)
    logins: list[str] = field(default_factory=list)

    def next_action(self) -> str:
        return self.script.pop(0) if self.script else "250"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.on_rcpt:
            self.on_rcpt()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        action = self.next_action()
        if action.startswith("slow "):  # queue the mail, but answer 250 only this many seconds later
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)))
            await asyncio.sleep(float(action.split()[1]))
            return "250 2.0.0 Ok: queued"
        if action == "250":
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)))
            if self.on_accept:
                self.on_accept()
            return "250 2.0.0 Ok: queued"
        return action

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword) and auth_data.login == b"desk" and auth_data.password == b"s3cret":
            self.logins.append(auth_data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def messages(self):
        return [message_from_bytes(raw, policy=default_policy) for _, _, raw in self.received]


class DroppingSMTP(SMTP):
    """An SMTP server that can hang up after the first line of the message data, before the
    final dot: the relay never took the mail, and the client sees a broken connection."""

    async def smtp_DATA(self, arg):
        handler: RelayHandler = self.event_handler
        if handler.script and handler.script[0] == "drop" and self.envelope and self.envelope.rcpt_tos:
            handler.script.pop(0)
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")
            self.transport.abort()
            return
        await super().smtp_DATA(arg)


class RelayController(Controller):
    def factory(self):
        return DroppingSMTP(self.handler, **self.SMTP_kwargs)


@contextmanager
def running_relay():
    """A real aiosmtpd relay on a free loopback port; its handler records what it gets."""
    handler = RelayHandler()
    port = free_port()
    controller = RelayController(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.port = port
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def relay():
    with running_relay() as handler:
        yield handler


def relay_config(folder: Path, port: int, database_url: str = "", extra: str = "", smtp_extra: str = "",
                 data_timeout: float = 5) -> Path:
    db = f'[database]\nurl = "{database_url}"\n' if database_url else ""
    return write_config(folder, f"""{db}
[gateway]
addresses = ["helpdesk@desk.example.com"]
name = "Service desk"
secret = "test-secret-of-at-least-32-bytes"

[outbound]
transport = "smtp"
retry_schedule = [60, 600, 3600]
give_up_after = 7200
{extra}

[outbound.smtp]
host = "127.0.0.1"
port = {port}
timeout = 5
data_timeout = {data_timeout}
{smtp_extra}
""")


def open_ticket(app: App, title: str = "Printer on floor 3 jams", email: str = "jane@example.org",
                name: str = "Jane Doe", now: dt.datetime = T0) -> str:
    """A ticket with its confirmation in the outbox, as the processor makes them."""
    with session_for(app.engine) as session:
        person, _ = get_or_create_person(session, email, name)
        ticket = create_ticket(session, process="incident", title=title, description="It jams.",
                               reporter=person, now=now)
        queue(session, app.notices, ticket, "new", now=now)
        session.commit()
        return ticket.number


def outbox_rows(app: App) -> list[Outbox]:
    with session_for(app.engine) as session:
        return list(session.exec(select(Outbox).order_by(col(Outbox.id))))


def drain(app: App, now: dt.datetime):
    return deliver_pending(app.engine, app.config, app.transport(), now=now)

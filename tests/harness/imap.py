"""A gateway whose one mailbox ("desk") is a test Dovecot's INBOX: its config, mails to
append, and what the database holds afterwards."""

from __future__ import annotations

import time
from pathlib import Path

from sqlmodel import select

from conftest import write_config
from gateway.app import App
from gateway.config import load_config
from harness.dovecot import PASSWORD, USER, Dovecot
from store.db import session_for
from store.models import InboundMessage, Ticket


ENV = {"TEST_IMAP_PASSWORD": PASSWORD}


def config_text(server: Dovecot, *, database_url: str = "", port: int | None = None, password_env="TEST_IMAP_PASSWORD",
                folder="INBOX", process="", poll_interval=60, security="none", host="127.0.0.1",
                top: str = "", box_extra: str = "") -> str:
    db = f'[database]\nurl = "{database_url}"\n' if database_url else ""
    return db + top + f"""
[[mailboxes]]
name = "desk"
host = "{host}"
port = {port or server.port}
security = "{security}"
user = "{USER}"
password_env = "{password_env}"
folder = "{folder}"
process = "{process}"
poll_interval = {poll_interval}
{box_extra}"""


def make_app(tmp_path: Path, server: Dovecot, **kw) -> App:
    """An App whose one mailbox, "desk", is ``server``'s INBOX."""
    return App(load_config(write_config(tmp_path, config_text(server, **kw)), env={}))


def mail(i: int, tag: str, *, subject: str | None = None, extra_headers: str = "") -> bytes:
    return (f"From: User {i} <user{i}@example.org>\r\n"
            f"To: helpdesk@localhost\r\n"
            f"Subject: {subject or f'Printer {i} on floor 2 is broken'}\r\n"
            f"Message-ID: <{tag}-{i}@example.org>\r\n"
            f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
            f"{extra_headers}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Hello, printer {i} does not print.\r\n").encode()


def ids(tag: str, n: int) -> list[str]:
    return sorted(f"<{tag}-{i}@example.org>" for i in range(n))


def wait_until(predicate, timeout: float = 30.0, step: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def tickets(app: App) -> list[Ticket]:
    with session_for(app.engine) as s:
        return list(s.exec(select(Ticket)))


def inbound(app: App) -> list[InboundMessage]:
    with session_for(app.engine) as s:
        return list(s.exec(select(InboundMessage)))

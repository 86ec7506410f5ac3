"""Build a notification as MIME: headers that thread and that nothing a customer wrote
can break, text and HTML as multipart/alternative.

Every value that may come from a customer (a title, a name) is cleaned of control
characters before it goes into a header, and the standard library encodes non-ASCII
per RFC 2047 and refuses to generate a header with a line break in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from gateway.outbound.render import RenderedMail

LOOP_HEADER = "X-Helpdesk-Loop"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")


def header_text(value: str) -> str:
    """One line of text, safe for a header."""
    return " ".join(_CONTROL.sub(" ", value or "").split())


def new_message_id(domain: str) -> str:
    """A fresh Message-ID on ``domain``, without the angle brackets."""
    return make_msgid(domain=domain)[1:-1]


@dataclass(frozen=True)
class Envelope:
    from_name: str
    from_addr: str
    to: tuple[tuple[str, str], ...]  # (name, address)
    reply_to: str
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]
    number: str
    loop_id: str  # the helpdesk address, in the loop header
    auto_submitted: str = "auto-generated"
    date: datetime | None = None


def _address(name: str, addr: str) -> Address:
    local, _, domain = addr.rpartition("@")
    return Address(display_name=header_text(name), username=local, domain=domain)


def build_message(mail: RenderedMail, env: Envelope) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(env.from_name, env.from_addr)
    msg["To"] = [_address(n, a) for n, a in env.to]
    msg["Reply-To"] = _address(env.from_name, env.reply_to)
    subject = header_text(mail.subject)
    tag = f"[{env.number}]"
    msg["Subject"] = subject if tag in subject else f"{tag} {subject}".strip()
    msg["Date"] = format_datetime(env.date) if env.date else format_datetime(datetime.now().astimezone())
    msg["Message-ID"] = f"<{env.message_id}>"
    if env.in_reply_to:
        msg["In-Reply-To"] = f"<{env.in_reply_to}>"
    if env.references:
        msg["References"] = " ".join(f"<{r}>" for r in env.references)
    # RFC 3834: automatic mail says so; Exchange is asked not to answer it with its own.
    msg["Auto-Submitted"] = env.auto_submitted
    msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = env.loop_id
    msg.set_content(mail.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(mail.html, subtype="html", charset="utf-8", cte="quoted-printable")
    # After the content: set_content() clears every Content-* header.
    msg["Content-Language"] = mail.language
    return msg

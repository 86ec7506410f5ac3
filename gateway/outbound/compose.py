"""Build a notification as MIME: headers that thread and that nothing a customer wrote
can break, text and HTML as multipart/alternative.

Every value that may come from a customer (a title, a name) is cleaned of control
characters before it goes into a header, and the standard library encodes non-ASCII
per RFC 2047 and refuses to generate a header with a line break in it.  The SMTP policy
folds headers at 78 characters and writes CRLF; bodies are quoted-printable (lines of
at most 76), so no line comes near RFC 5322's 998.

One conversation per ticket, in every client:
- Thunderbird, Apple Mail and Gmail follow ``In-Reply-To``/``References``: each mail
  answers the ticket's latest message and lists the first one (the root) and the latest
  ones (RFC 5322 3.6.4 allows trimming the middle).
- Gmail also starts a new conversation when the subject changes, so the subject is the
  same on every mail of a ticket: ``[INC-000001] <title>`` (``outbound.stable_subject``).
- Outlook groups by ``Thread-Index`` (a conversation GUID, here derived from the ticket
  number and the Message-ID domain, so it is stable without storing anything) and shows
  ``Thread-Topic``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, make_msgid

from gateway.outbound.render import RenderedMail
from store.addresses import mailbox
from store.vocabulary import LOOP_HEADER

FLAG_HEADER = "X-Message-Flag"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")


# Longest subject text we write: a customer's 100 kB title would otherwise become a header
# that relays truncate or refuse (Postfix header_size_limit is 100 kB for all headers).
MAX_SUBJECT = 200


def header_text(value: str) -> str:
    """One line of text, safe for a header.

    Text that merely looks like an RFC 2047 encoded word (a customer's subject such as
    ``=?UTF-8?Q?=E4=BD`` that their mailer never finished) is broken up: the standard
    library would decode it while folding and fail on the bytes it finds.  Lone
    surrogates (undecodable bytes) become U+FFFD."""
    text = " ".join(_CONTROL.sub(" ", value or "").split())
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("=?", "= ?")


def shorten(value: str, limit: int = MAX_SUBJECT) -> str:
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


_MSGID = re.compile(r"^[^\s<>()\\,;:\"\[\]]+@[^\s<>()\\,;:\"]+$")


def safe_msgid(value: str | None) -> str | None:
    """A Message-ID (without <>) fit for In-Reply-To/References, else None.

    Ids come from customers' mails: one with spaces, brackets or line breaks in it, or a
    huge one, is left out rather than allowed to break or inflate the header."""
    if not value or len(value) > 250 or not _MSGID.match(value):
        return None
    return value


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
    number: str  # the ticket's, tagged into the Subject; "" for a notice about no ticket
    loop_id: str  # the helpdesk address, in the loop header
    auto_submitted: str = "auto-generated"
    date: datetime | None = None
    # The Subject (tagged here if the tag is missing); None: the template's subject.
    subject: str | None = None
    # Outlook's conversation headers; thread_index from ``thread_index()``.
    thread_topic: str | None = None
    thread_index: str | None = None
    # What the mail asks of its reader ("Action required: ..."): Outlook shows it as the
    # mail's follow-up flag ([MS-OXCMAIL] 2.2.3.2.16, X-Message-Flag).  No other header
    # or the Subject changes, so the mail threads as every other one of its ticket.
    flag: str | None = None


_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)


def _filetime(dt: datetime) -> int:
    """100-nanosecond intervals since 1601 (Windows FILETIME)."""
    dt = dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    delta = dt - _FILETIME_EPOCH
    return (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def conversation_guid(number: str, domain: str) -> uuid.UUID:
    """A GUID per ticket, the same every time it is computed."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, f"{number.upper()}.tickets.{domain.lower()}")


def thread_index(conversation: uuid.UUID, started: datetime, now: datetime) -> str:
    """Outlook's ``Thread-Index`` ([MS-OXOMSG] 2.2.1.3 PidTagConversationIndex).

    22 bytes of header (the high 48 bits of the conversation's start FILETIME, then the
    GUID) and one 5-byte child block for this mail (the time since the start, and 4
    random bits and 4 bits of sequence), base64.  Outlook puts every mail whose header
    bytes are equal into one conversation."""
    start = _filetime(started)
    header = (start >> 16).to_bytes(6, "big") + conversation.bytes
    delta = max(0, _filetime(now) - start)
    if delta < 1 << 49:
        code = (delta >> 18) & 0x7FFFFFFF
    else:
        code = 0x80000000 | ((delta >> 23) & 0x7FFFFFFF)
    child = code.to_bytes(4, "big") + bytes([(os.urandom(1)[0] & 0xF0) | 0x01])
    return base64.b64encode(header + child).decode("ascii")


def ascii_domain(addr: str) -> str:
    """``jan@exämple.be`` -> ``jan@xn--exmple-cua.be``: an internationalised domain in the
    form every relay and header understands; the local part is left as it is."""
    local, _, domain = addr.rpartition("@")
    if domain.isascii():
        return addr
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return addr


def needs_smtputf8(addr: str) -> bool:
    """An address whose local part is not ASCII can only travel with SMTPUTF8 (RFC 6531)."""
    return not ascii_domain(addr).isascii()


def _address(name: str, addr: str) -> Address:
    """``addr`` (a checked addr-spec, its local part quoted where it must be) as a header
    address: the local part as it reads, which the policy quotes again as it writes it."""
    box = mailbox(addr)
    return Address(display_name=header_text(name), username=box.local, domain=box.ascii_domain)


def build_message(mail: RenderedMail, env: Envelope) -> EmailMessage:
    # The SMTP policy would write a non-ASCII local part as an encoded word, which is no
    # address at all; such a mail is written as UTF-8 (RFC 6532) and needs a relay that
    # offers SMTPUTF8.  Everything else stays 7-bit.
    utf8 = any(needs_smtputf8(a) for a in (env.from_addr, env.reply_to, *(a for _, a in env.to)))
    msg = EmailMessage(policy=SMTPUTF8 if utf8 else SMTP)
    msg["From"] = _address(env.from_name, env.from_addr)
    msg["To"] = [_address(n, a) for n, a in env.to]
    msg["Reply-To"] = _address(env.from_name, env.reply_to)
    subject = shorten(header_text(env.subject if env.subject is not None else mail.subject))
    tag = f"[{env.number}]" if env.number else ""  # a notice about no ticket has no tag
    msg["Subject"] = subject if tag in subject else f"{tag} {subject}".strip()
    msg["Date"] = format_datetime(env.date) if env.date else format_datetime(datetime.now().astimezone())
    msg["Message-ID"] = f"<{env.message_id}>"
    in_reply_to = safe_msgid(env.in_reply_to)
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    references = [r for r in map(safe_msgid, env.references) if r]
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    # RFC 3834: automatic mail says so; Exchange is asked not to answer it with its own.
    msg["Auto-Submitted"] = env.auto_submitted
    msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = env.loop_id
    if env.thread_topic:
        msg["Thread-Topic"] = header_text(env.thread_topic)
    if env.thread_index:
        msg["Thread-Index"] = env.thread_index
    if env.flag:
        msg[FLAG_HEADER] = header_text(env.flag)
    msg.set_content(mail.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(mail.html, subtype="html", charset="utf-8", cte="quoted-printable")
    # After the content: set_content() clears every Content-* header.
    msg["Content-Language"] = mail.language
    return msg


# The fast writer -----------------------------------------------------------------------
# ``build_message`` + ``as_bytes()`` cost ~6 ms a notification (bench/run.py): the SMTP
# policy parses every header value it is given into a token tree and folds it again.
# Almost every header of a notification is short plain ASCII, which that round trip
# leaves as it is; ``build_bytes`` writes those directly and gives the others (non-ASCII,
# long, quoted names, encoded-word look-alikes) to the same policy as ``build_message``,
# so the bytes are those ``build_message(...).as_bytes()`` would write (checked header by
# header in tests/test_compose_fast.py) at a fraction of the cost.  Subject and
# Thread-Topic with non-ASCII text are encoded here (``_text``): the same decoded value,
# other encoded words.

_PLAIN = re.compile(r"^[\x21-\x7e]+(?: [\x21-\x7e]+)*$")  # printable ASCII, single spaces
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_PLAIN_ADDR = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                         r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$")
_MAX_LINE = SMTP.max_line_length


def _fold(name: str, value) -> str:
    """The header as the SMTP policy writes it (parsed, folded at 78, encoded words)."""
    return SMTP.header_factory(name, value).fold(policy=SMTP)


def _plain(name: str, value: str) -> str:
    if len(name) + 2 + len(value) <= _MAX_LINE and "=?" not in value and _PLAIN.match(value):
        return f"{name}: {value}\r\n"
    return _fold(name, value)


_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_CHAR: dict[str, str] = {}


def _q(char: str) -> str:
    """One character in RFC 2047 "Q" encoding (UTF-8; a space is "_")."""
    out = _Q_CHAR.get(char)
    if out is None:
        out = "_" if char == " " else "".join(chr(b) if b in _Q_SAFE else f"={b:02X}" for b in char.encode("utf-8"))
        _Q_CHAR[char] = out
    return out


def _text(name: str, value: str) -> str:
    """An unstructured header (Subject, Thread-Topic): plain when it is short plain ASCII;
    otherwise the whole value as RFC 2047 encoded words, one to a line of at most 78.

    Decoders join adjacent encoded words without the space between them (RFC 2047 6.2),
    so the value reads back exactly; each word holds whole characters.  The policy's
    folder (which encodes word by word) did the same at ~0.5 ms a header."""
    if len(name) + 2 + len(value) <= _MAX_LINE and "=?" not in value and _PLAIN.match(value):
        return f"{name}: {value}\r\n"
    if value.isascii() or "=?" in value:  # long ASCII is folded at its spaces, not encoded
        return _fold(name, value)
    lines, word, room = [], [], _MAX_LINE - len(name) - 2 - 12  # "=?utf-8?q?" + "?="
    size = 0
    for char in value:
        enc = _q(char)
        if size + len(enc) > min(room, 75 - 12) and word:
            lines.append("=?utf-8?q?" + "".join(word) + "?=")
            word, size, room = [], 0, _MAX_LINE - 1 - 12
        word.append(enc)
        size += len(enc)
    if word or not lines:
        lines.append("=?utf-8?q?" + "".join(word) + "?=")
    return f"{name}: " + "\r\n ".join(lines) + "\r\n"


# A display name of letters (any script), digits and spaces: written as one encoded word
# when it is not plain ASCII (RFC 2047 5(3): a "Q" word in a phrase).
_WORDY_NAME = re.compile(r"^[^\W_]+(?: [^\W_]+)*$")


def _addresses(name: str, people: list[tuple[str, str]]) -> str:
    parts = []
    for display, addr in people:
        display = header_text(display)
        addr = ascii_domain(addr)
        if not _PLAIN_ADDR.match(addr):
            break
        if display and not _PLAIN_NAME.match(display):
            if not _WORDY_NAME.match(display):
                break
            display = "=?utf-8?q?" + "".join(map(_q, display)) + "?="
            if len(display) > 75:  # longer than one encoded word may be: the policy's way
                break
        parts.append(f"{display} <{addr}>" if display else addr)
    else:
        value = ", ".join(parts)
        if len(name) + 2 + len(value) <= _MAX_LINE:
            return f"{name}: {value}\r\n"
    return _fold(name, [_address(n, a) for n, a in people])


def _qp_part(subtype: str, text: str, mime_version: bool) -> str:
    # The part contentmanager.set_text_content(cte="quoted-printable") makes, its body
    # encoded by binascii (C) rather than email.quoprimime (Python, ~4 times slower: ~5 %
    # of the worker's CPU a mail); the same text once decoded, lines of at most 76
    # characters, every "=" written "=3D" (tests/test_compose_fast.py).
    body = binascii.b2a_qp(b"\n".join(text.encode("utf-8").splitlines()) + b"\n").decode("ascii")
    head = (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n")
    if mime_version:
        head += "MIME-Version: 1.0\r\n"
    return head + "\r\n" + body.replace("\n", "\r\n")


def build_bytes(mail: RenderedMail, env: Envelope) -> tuple[bytes, str]:
    """The notification as wire bytes (CRLF) and its Subject: what
    ``build_message(mail, env).as_bytes()`` gives, without building the message tree."""
    utf8 = any(needs_smtputf8(a) for a in (env.from_addr, env.reply_to, *(a for _, a in env.to)))
    if utf8:  # rare (a non-ASCII local part): the standard library's path, UTF-8 headers
        msg = build_message(mail, env)
        return msg.as_bytes(), str(msg["Subject"])
    subject = shorten(header_text(env.subject if env.subject is not None else mail.subject))
    tag = f"[{env.number}]" if env.number else ""
    subject = subject if tag in subject else f"{tag} {subject}".strip()
    out = [
        _addresses("From", [(env.from_name, env.from_addr)]),
        _addresses("To", list(env.to)),
        _addresses("Reply-To", [(env.from_name, env.reply_to)]),
        _text("Subject", subject),
        _plain("Date", format_datetime(env.date) if env.date else format_datetime(datetime.now().astimezone())),
        _plain("Message-ID", f"<{env.message_id}>"),
    ]
    in_reply_to = safe_msgid(env.in_reply_to)
    if in_reply_to:
        out.append(_plain("In-Reply-To", f"<{in_reply_to}>"))
    references = [r for r in map(safe_msgid, env.references) if r]
    if references:
        out.append(_plain("References", " ".join(f"<{r}>" for r in references)))
    out += [_plain("Auto-Submitted", env.auto_submitted), "X-Auto-Response-Suppress: All\r\n",
            _plain(LOOP_HEADER, env.loop_id)]
    if env.thread_topic:
        out.append(_text("Thread-Topic", header_text(env.thread_topic)))
    if env.thread_index:
        out.append(_plain("Thread-Index", env.thread_index))
    if env.flag:
        out.append(_text(FLAG_HEADER, header_text(env.flag)))
    text_part = _qp_part("plain", mail.text, False)
    html_part = _qp_part("html", mail.html, True)
    # Quoted-printable writes every "=" as "=3D": no body line can look like this boundary.
    # Taken from the content, not drawn at random: the same mail has the same bytes, so
    # `gateway templates preview` shows byte for byte what is sent.
    digest = int.from_bytes(hashlib.sha256((mail.text + "\0" + mail.html).encode("utf-8", "replace")).digest()[:8])
    boundary = "=" * 15 + f"{digest % sys.maxsize:019d}" + "=="
    out += ["MIME-Version: 1.0\r\n",
            # The boundary has a fixed length: the policy folds this header before it.
            f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n',
            _plain("Content-Language", mail.language),
            "\r\n",
            f"--{boundary}\r\n", text_part, f"\r\n--{boundary}\r\n", html_part, f"\r\n--{boundary}--\r\n"]
    return "".join(out).encode("ascii"), _header_value(subject)


def _header_value(subject: str) -> str:
    # str(msg["Subject"]) of build_message: the parsed value, which for plain text is the text.
    if "=?" not in subject:
        return subject
    return str(SMTP.header_factory("Subject", subject))

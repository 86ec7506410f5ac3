"""The notifications a relay receives, parsed with the standard library: every header that
makes them thread in Outlook, Gmail, Apple Mail and Thunderbird, and that a customer's
title cannot break."""

from __future__ import annotations

import base64
import datetime as dt
from email import message_from_bytes
from email.policy import default as default_policy
from email.utils import parseaddr

import pytest
from sqlmodel import col, select

from conftest import write_config
from gateway.app import App
from gateway.config import load_config
from gateway.ingest.inbound import store_raw
from gateway.outbound.compose import LOOP_HEADER
from store.notifications import MAX_REFERENCES, thread_references
from gateway.outbound.outbox import deliver_pending
from gateway.tokens import verify_reply_address
from store.notifications import queue
from store.db import session_for
from store.models import Outbox, Ticket
from store.tickets import create_ticket, get_or_create_person
from harness.relay import relay, running_relay  # noqa: F401 - the relay fixture, shared

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)

# A first mail as Outlook writes it, its subject an encoded word that hides a CR LF and a
# header after it.
CUSTOMER_MAIL = b"""\
From: =?utf-8?q?Zo=C3=AB_=C4=B2zerman?= <zoe@example.org>
To: Service desk <helpdesk@desk.example.com>
Subject: =?utf-8?q?Imprimante_en_panne=0D=0ABcc:_evil@attacker.example=0D=0A=0D=0Abody?=
Date: Mon, 2 Mar 2026 09:58:12 +0100
Message-ID: <AM0PR07MB4417E1A8C9@AM0PR07MB4417.eurprd07.prod.outlook.com>
Content-Language: fr-BE
Thread-Topic: Imprimante en panne
Thread-Index: AdqMb0v1b2V4a5Rk
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

Bonjour,

L'imprimante du 3e =C3=A9tage bloque.

Zo=C3=AB
"""




@pytest.fixture
def app(tmp_path, database_url, relay):
    cfg = write_config(tmp_path, f"""
[database]
url = "{database_url}"

[gateway]
addresses = ["helpdesk@desk.example.com"]
name = "Service informatique — Ünïcode Desk 服务台"
message_id_domain = "mail.desk.example.com"
secret = "header-secret-of-at-least-32-bytes"

[outbound]
transport = "smtp"

[outbound.smtp]
host = "127.0.0.1"
port = {relay.port}
timeout = 5
""")
    a = App(load_config(cfg, env={}))
    yield a
    a.engine.dispose()


def deliver(app: App) -> None:
    results = deliver_pending(app.engine, app.config, app.transport(), now=dt.datetime.now(dt.timezone.utc))
    assert results and all(r.outcome == "sent" for _, r in results), results


def display_name(raw: bytes, header: str) -> str:
    """The display name of an address header, decoded per RFC 2047 6.2.

    Not ``msg[header].addresses[0].display_name``: CPython's address parser keeps the
    space between two adjacent encoded words of a name (RFC 2047 6.2 says to drop it),
    so a CJK name folded across two encoded words would read back with a space in it.
    The older ``email.header`` decoder follows the RFC, as mail clients do."""
    from email import message_from_bytes as parse_compat
    from email.header import decode_header, make_header
    from email.policy import compat32

    value = parse_compat(raw, policy=compat32)[header]
    name, _addr = parseaddr(" ".join(str(value).split()))
    return str(make_header(decode_header(name)))


def header_lines(raw: bytes) -> list[bytes]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")


def check_wire_form(raw: bytes) -> None:
    """RFC 5322 on the wire: CRLF only, every line <= 998, header lines <= 78 and ASCII
    (non-ASCII only as RFC 2047 encoded words)."""
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998
    for line in header_lines(raw):
        assert len(line) <= 78, line
        assert line.isascii(), line


def test_notifications_of_a_ticket_thread_and_no_title_becomes_a_header(app, relay):
    stored = store_raw(app.engine, app.blobs, CUSTOMER_MAIL.replace(b"\n", b"\r\n"), source="test")
    outcome = app.processor.process(stored.id)
    assert outcome.outcome == "created", outcome
    number = outcome.ticket
    deliver(app)
    # A second notification of the same ticket (a later event), sent by a later run.
    with session_for(app.engine) as session:
        ticket = session.exec(select(Ticket).where(Ticket.number == number)).one()
        queue(session, app.notices, ticket, "new")
        session.commit()
    deliver(app)

    assert len(relay.received) == 2
    first, second = (message_from_bytes(raw, policy=default_policy) for _, _, raw in relay.received)
    for _, _, raw in relay.received:
        check_wire_form(raw)

    with session_for(app.engine) as session:
        rows = list(session.exec(select(Outbox).order_by(col(Outbox.id))))
    customer_id = "AM0PR07MB4417E1A8C9@AM0PR07MB4417.eurprd07.prod.outlook.com"

    for (_, _, raw), msg, row in zip(relay.received, (first, second), rows):
        # The title's CR LF did not make a header: no Bcc, one Subject, one line.
        assert msg["Bcc"] is None and msg.get_all("Subject") and len(msg.get_all("Subject")) == 1
        assert not any(k.lower() == "bcc" for k in msg.keys())
        subject = str(msg["Subject"])
        assert "\r" not in subject and "\n" not in subject
        assert subject.startswith(f"[{number}] Imprimante en panne")
        assert "evil@attacker.example" in subject  # kept as text, harmless
        # Message-ID on the configured domain, the one the outbox row knows.
        assert msg["Message-ID"] == f"<{row.message_id}>"
        assert row.message_id.endswith("@mail.desk.example.com")
        # From the helpdesk, its name in any script; Reply-To the signed address.
        name, addr = parseaddr(str(msg["From"]))
        assert addr == "helpdesk@desk.example.com"
        assert display_name(raw, "From") == "Service informatique — Ünïcode Desk 服务台"
        reply_to = msg["Reply-To"].addresses[0].addr_spec
        assert verify_reply_address("header-secret-of-at-least-32-bytes", reply_to) == number
        assert display_name(raw, "To") == "Zoë Ĳzerman"
        assert msg["To"].addresses[0].addr_spec == "zoe@example.org"
        # Automatic mail says so (RFC 3834), the loop header names the helpdesk.
        assert msg["Auto-Submitted"] in ("auto-generated", "auto-replied")
        assert msg[LOOP_HEADER] == "helpdesk@desk.example.com"
        assert msg["X-Auto-Response-Suppress"] == "All"
        assert msg["Content-Language"] == row.language
        assert msg["Date"] is not None
        # Text and HTML as alternatives.
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert f"{number}" in msg.get_body(("plain",)).get_content()

    # The first notification answers the customer's mail (RFC 3834: auto-replied).
    assert first["Auto-Submitted"] == "auto-replied"
    assert first["In-Reply-To"] == f"<{customer_id}>"
    assert first["References"] == f"<{customer_id}>"
    # The second chains to the first, keeping the root.
    assert second["In-Reply-To"] == first["Message-ID"]
    assert second["References"].split() == [f"<{customer_id}>", first["Message-ID"]]
    # Gmail: the same subject on every mail of the ticket.
    assert first["Subject"] == second["Subject"]
    # Outlook: the same topic and conversation (the first 22 bytes of Thread-Index).
    assert first["Thread-Topic"] == second["Thread-Topic"] == first["Subject"]
    a, b = (base64.b64decode(m["Thread-Index"]) for m in (first, second))
    assert len(a) == len(b) == 27 and a[:22] == b[:22]


@pytest.mark.parametrize("title,name", [
    ("打印机坏了，无法打印任何文件", "王小明"),
    ("الطابعة لا تعمل منذ الصباح", "فاطمة الزهراء"),
    ("Принтер не работает 🖨️ " + "очень длинное описание " * 6, "Иван Петров"),
    ("Tab\there, form\x0cfeed, esc\x1b, line\u2028separator\rCR\nLF", "Ann\r\nBcc: x@example.org"),
])
def test_titles_and_names_in_any_script_are_encoded_and_folded(app, relay, title, name):
    with session_for(app.engine) as session:
        person, _ = get_or_create_person(session, "someone@example.org", name)
        ticket = create_ticket(session, process="incident", title=title, description="x", reporter=person, now=T0)
        queue(session, app.notices, ticket, "new", now=T0)
        session.commit()
        number = ticket.number
    deliver(app)
    [(_, _, raw)] = relay.received
    check_wire_form(raw)
    msg = message_from_bytes(raw, policy=default_policy)
    assert not any(k.lower() == "bcc" for k in msg.keys())
    expected_title = " ".join("".join(" " if (ord(c) < 32 or c in "\x7f\u2028\u2029\x85") else c
                                      for c in title).split())
    assert str(msg["Subject"]) == f"[{number}] {expected_title}"
    expected_name = " ".join(name.replace("\r", " ").replace("\n", " ").split())
    assert display_name(raw, "To") == expected_name
    assert msg["To"].addresses[0].addr_spec == "someone@example.org"
    assert msg["Thread-Topic"] == msg["Subject"]


def test_references_keep_the_root_and_the_latest():
    ids = [f"m{i}@x" for i in range(30)]
    refs = thread_references(ids)
    assert len(refs) == MAX_REFERENCES and refs[0] == "m0@x" and refs[-1] == "m29@x"
    assert list(refs[1:]) == ids[30 - (MAX_REFERENCES - 1):]
    assert thread_references(ids[:3]) == tuple(ids[:3])


def test_hostile_message_ids_are_left_out_of_the_thread_headers(app, relay):
    with session_for(app.engine) as session:
        person, _ = get_or_create_person(session, "someone@example.org", "S")
        ticket = create_ticket(session, process="incident", title="t", description="x", reporter=person, now=T0)
        queue(session, app.notices, ticket, "new", in_reply_to="a b@c> <evil", now=T0)
        session.commit()
    deliver(app)
    [(_, _, raw)] = relay.received
    msg = message_from_bytes(raw, policy=default_policy)
    assert msg["In-Reply-To"] is None and msg["References"] is None
    check_wire_form(raw)


@pytest.fixture
def utf8_relay():
    # A second relay, as it comes: aiosmtpd offers SMTPUTF8 by default.
    with running_relay() as handler:
        yield handler


def test_internationalised_addresses(app, relay, utf8_relay):
    """A domain in any script travels as IDNA; a local part in any script needs SMTPUTF8
    (RFC 6531/6532): sent as UTF-8 to a relay that offers it, failed for good (with the
    reason) by one that does not."""
    import dataclasses

    async def ehlo_without_smtputf8(server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [r for r in responses if "SMTPUTF8" not in r.upper()]

    relay.handle_EHLO = ehlo_without_smtputf8
    with session_for(app.engine) as session:
        for email in ("jan@exämple.be", "josé@example.org"):
            person, _ = get_or_create_person(session, email, "Ünï Person")
            ticket = create_ticket(session, process="incident", title="Écran noir", description="x",
                                   reporter=person, now=T0)
            queue(session, app.notices, ticket, "new", now=T0)
        session.commit()
    results = deliver_pending(app.engine, app.config, app.transport(), now=T0)
    assert [r.outcome for _, r in results] == ["sent", "permanent"], (results, relay.received)
    assert "SMTPUTF8" in results[1][1].answer
    [(_, rcpts, raw)] = relay.received
    assert rcpts == ["jan@xn--exmple-cua.be"]
    check_wire_form(raw)
    assert message_from_bytes(raw, policy=default_policy)["To"].addresses[0].addr_spec == "jan@xn--exmple-cua.be"

    # The same mail, again, through a relay that offers SMTPUTF8.
    smtp = dataclasses.replace(app.config.outbound.smtp, port=utf8_relay.port)
    config = dataclasses.replace(app.config, outbound=dataclasses.replace(app.config.outbound, smtp=smtp))
    from gateway.outbound.outbox import requeue
    from gateway.outbound.transports import make_transport

    with session_for(app.engine) as session:
        failed = session.exec(select(Outbox.id).where(Outbox.state == "failed")).all()
    requeue(app.engine, list(failed), now=T0)
    results = deliver_pending(app.engine, config, make_transport(config), now=T0)
    assert [r.outcome for _, r in results] == ["sent"]
    [(_, rcpts, raw)] = utf8_relay.received
    assert rcpts == ["josé@example.org"]
    # RFC 6532: the headers are UTF-8; the bytes parser reads only ASCII headers.
    from email import message_from_string

    assert "josé@example.org".encode() in raw.split(b"\r\n\r\n")[0]
    msg = message_from_string(raw.decode("utf-8"), policy=default_policy)
    assert msg["To"].addresses[0].addr_spec == "josé@example.org"
    assert str(msg["Subject"]).endswith("Écran noir")


def test_a_huge_title_is_shortened_in_the_subject(app, relay):
    with session_for(app.engine) as session:
        person, _ = get_or_create_person(session, "someone@example.org", "S")
        ticket = create_ticket(session, process="incident", title="Ошибка " * 20000, description="x",
                               reporter=person, now=T0)
        queue(session, app.notices, ticket, "new", now=T0)
        session.commit()
    deliver(app)
    [(_, _, raw)] = relay.received
    check_wire_form(raw)
    subject = str(message_from_bytes(raw, policy=default_policy)["Subject"])
    assert subject.startswith("[INC-000001] Ошибка Ошибка") and subject.endswith("…")
    assert len(subject) <= 200 + len("[INC-000001] ")

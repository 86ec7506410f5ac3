"""Mails as Outlook, Gmail and Apple Mail write them (first mails and replies), delivered
through the store and processor, and the notifications and messages they leave."""

from __future__ import annotations

import email
import email.header
import email.policy
import quopri
from email.utils import getaddresses

from sqlmodel import col, select

from gateway.ingest.inbound import store_raw
from gateway.outbound.outbox import render_pending
from store.db import session_for
from store.models import Outbox, Ticket, TicketMessage
from store.tickets import get_ticket


HELPDESK = "helpdesk@localhost"


MARIE = "marie.dupont@client.be"


def qp(text: str, charset: str = "utf-8") -> str:
    return quopri.encodestring(text.replace("\n", "\r\n").encode(charset)).decode("ascii")


def first_mail(sender: str, name: str, subject: str, body: str, *, lang: str = "fr-BE", mid: str,
               cc: str = "") -> bytes:
    """A customer's first mail, as Thunderbird sends it."""
    cc_line = f"Cc: {cc}\n" if cc else ""
    return (
        f"Return-Path: <{sender}>\n"
        f"Received: from mail.client.example (mail.client.example [192.0.2.10])\n"
        f"\tby mx.localhost (Postfix) with ESMTPS id 4Qx1; Fri, 27 Nov 2026 08:00:00 +0100 (CET)\n"
        f"Message-ID: <{mid}>\n"
        f"Date: Fri, 27 Nov 2026 08:00:00 +0100\n"
        f"MIME-Version: 1.0\n"
        f"User-Agent: Mozilla Thunderbird\n"
        f"Content-Language: {lang}\n"
        f"From: {name} <{sender}>\n"
        f"To: Helpdesk <{HELPDESK}>\n"
        f"{cc_line}"
        f"Subject: {email.header.Header(subject, 'utf-8').encode()}\n"
        f"Content-Type: text/plain; charset=UTF-8; format=flowed\n"
        f"Content-Transfer-Encoding: quoted-printable\n\n"
        f"{qp(body)}\n"
    ).encode()


def outlook_reply(sender: str, name: str, subject: str, new: str, quoted_from: str, quoted_subject: str,
                  *, mid: str, to: str = HELPDESK, lang: str = "fr-FR") -> bytes:
    """Outlook (Microsoft 365, French): no In-Reply-To, no References, the tag kept in the
    subject behind "RE: ", and the history below a "De : … Envoyé : …" block, unquoted."""
    plain = (
        f"{new}\n\n"
        f"Cordialement,\n{name}\n\n"
        f"________________________________\n"
        f"De : Helpdesk <{quoted_from}>\n"
        f"Envoyé : vendredi 27 novembre 2026 10:00\n"
        f"À : {name} <{sender}>\n"
        f"Objet : {quoted_subject}\n\n"
        f"Bonjour {name},\n\n"
        f"Nous avons bien reçu votre message.\n"
    )
    html = (
        "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\"></head>"
        f"<body><div>{new}</div><div>Cordialement,<br>{name}</div>"
        "<hr style=\"display:inline-block;width:98%\"><div id=\"divRplyFwdMsg\">"
        f"<b>De :</b> Helpdesk &lt;{quoted_from}&gt;<br><b>Envoyé :</b> vendredi 27 novembre 2026 10:00<br>"
        f"<b>Objet :</b> {quoted_subject}</div><div>Bonjour,</div></body></html>"
    )
    return (
        f"Received: from EUR02-DB5-obe.outbound.protection.outlook.com (mail-db5eur02on2100.outbound.protection."
        f"outlook.com [40.107.249.100])\n\tby mx.localhost (Postfix) with ESMTPS; Fri, 27 Nov 2026 11:02:14 +0000\n"
        f"From: \"{name}\" <{sender}>\n"
        f"To: Helpdesk <{to}>\n"
        f"Subject: {email.header.Header(subject, 'utf-8').encode()}\n"
        f"Thread-Topic: {email.header.Header(quoted_subject, 'utf-8').encode()}\n"
        f"Thread-Index: AQHZIKvQ1bW3ZkQ4S0yqUo1uV1ayxQ==\n"
        f"Date: Fri, 27 Nov 2026 11:02:13 +0000\n"
        f"Message-ID: <{mid}>\n"
        f"Accept-Language: fr-BE, en-US\n"
        f"Content-Language: {lang}\n"
        f"X-MS-Has-Attach:\nX-MS-TNEF-Correlator:\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: multipart/alternative; boundary=\"_000_DB9PR02MB71801_\"\n\n"
        f"--_000_DB9PR02MB71801_\n"
        f"Content-Type: text/plain; charset=\"iso-8859-1\"\n"
        f"Content-Transfer-Encoding: quoted-printable\n\n"
        f"{qp(plain, 'iso-8859-1')}\n"
        f"--_000_DB9PR02MB71801_\n"
        f"Content-Type: text/html; charset=\"iso-8859-1\"\n"
        f"Content-Transfer-Encoding: quoted-printable\n\n"
        f"{qp(html, 'iso-8859-1')}\n"
        f"--_000_DB9PR02MB71801_--\n"
    ).encode()


def gmail_reply(sender: str, name: str, subject: str, new: str, *, mid: str, in_reply_to: str | None,
                references: list[str] = (), to: str = HELPDESK, attribution: str | None = None,
                quoted: str = "Bonjour,\n\nVotre ticket a été mis à jour.",
                attachment: tuple[str, bytes] | None = None) -> bytes:
    """Gmail's web client: In-Reply-To and References, the "Le … a écrit :" attribution
    wrapped over two lines and the history quoted with ``>``."""
    attribution = attribution or f"Le ven. 27 nov. 2026 à 10:00, Helpdesk <{to}> a\nécrit :"
    quote = "\n".join("> " + line if line else ">" for line in quoted.split("\n"))
    plain = f"{new}\n\n{attribution}\n\n{quote}\n"
    html = (f"<div dir=\"ltr\">{new}</div><br><div class=\"gmail_quote\"><div dir=\"ltr\" class=\"gmail_attr\">"
            f"{attribution}<br></div><blockquote class=\"gmail_quote\">{quoted}</blockquote></div>")
    alternative = (
        f"--000000000000c5a1d2060b3f\n"
        f"Content-Type: text/plain; charset=\"UTF-8\"\n"
        f"Content-Transfer-Encoding: quoted-printable\n\n"
        f"{qp(plain)}\n"
        f"--000000000000c5a1d2060b3f\n"
        f"Content-Type: text/html; charset=\"UTF-8\"\n"
        f"Content-Transfer-Encoding: quoted-printable\n\n"
        f"{qp(html)}\n"
        f"--000000000000c5a1d2060b3f--\n"
    )
    content_type = "multipart/alternative; boundary=\"000000000000c5a1d2060b3f\""
    if attachment:
        import base64
        name, data = attachment
        alternative = (
            f"--000000000000c5a1d3060b41\n"
            f"Content-Type: multipart/alternative; boundary=\"000000000000c5a1d2060b3f\"\n\n"
            f"{alternative}\n"
            f"--000000000000c5a1d3060b41\n"
            f"Content-Type: image/png; name=\"{name}\"\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\n"
            f"Content-Transfer-Encoding: base64\n"
            f"X-Attachment-Id: f_lp1x2y3z0\n\n"
            f"{base64.encodebytes(data).decode()}\n"
            f"--000000000000c5a1d3060b41--\n"
        )
        content_type = "multipart/mixed; boundary=\"000000000000c5a1d3060b41\""
    headers = ""
    if references:
        headers += "References: " + " ".join(f"<{r}>" for r in references) + "\n"
    if in_reply_to:
        headers += f"In-Reply-To: <{in_reply_to}>\n"
    return (
        f"MIME-Version: 1.0\n"
        f"{headers}"
        f"From: {name} <{sender}>\n"
        f"Date: Fri, 27 Nov 2026 11:15:42 +0100\n"
        f"Message-ID: <{mid}>\n"
        f"Subject: {email.header.Header(subject, 'utf-8').encode()}\n"
        f"To: Helpdesk <{to}>\n"
        f"Content-Type: {content_type}\n\n"
        f"{alternative}"
    ).encode()


def apple_reply_nl(sender: str, name: str, subject: str, new: str, *, mid: str, in_reply_to: str,
                   to: str) -> bytes:
    """Apple Mail on an iPhone, in Dutch: the footer, then the quoted history."""
    plain = (f"{new}\n\nVerzonden vanaf mijn iPhone\n\n"
             f"> Op 27 nov. 2026 om 10:00 heeft Helpdesk <{to}> het volgende geschreven:\n>\n"
             f"> Beste {name},\n> Graag uw goedkeuring.\n")
    return (
        f"Content-Type: text/plain; charset=utf-8\n"
        f"Content-Transfer-Encoding: quoted-printable\n"
        f"From: {name} <{sender}>\n"
        f"Mime-Version: 1.0 (1.0)\n"
        f"Date: Fri, 27 Nov 2026 11:20:00 +0100\n"
        f"Subject: {email.header.Header(subject, 'utf-8').encode()}\n"
        f"Message-Id: <{mid}>\n"
        f"References: <{in_reply_to}>\n"
        f"In-Reply-To: <{in_reply_to}>\n"
        f"To: Helpdesk <{to}>\n"
        f"X-Mailer: iPhone Mail (21F90)\n\n"
        f"{qp(plain)}\n"
    ).encode()


def deliver(gw, raw: bytes, rcpt: tuple[str, ...] = ()):
    stored = store_raw(gw.engine, gw.blobs, raw, source="test", rcpt_to=rcpt)
    return gw.processor.process(stored.id)


def open_ticket(gw, sender=MARIE, name="Marie Dupont", subject="Imprimante en panne au 2e étage",
                body="Bonjour,\n\nL'imprimante du 2e étage affiche « erreur 49 ».\n\nMarie", lang="fr-BE",
                mid="first-1@client.be", cc=""):
    outcome = deliver(gw, first_mail(sender, name, subject, body, lang=lang, mid=mid, cc=cc))
    assert outcome.outcome == "created", outcome
    return outcome.ticket


def notifications(gw, number: str) -> list[Outbox]:
    """The ticket's outbox copies, oldest first, rendered as the deliverer renders them."""
    render_pending(gw.engine, gw.notifier)
    with session_for(gw.engine) as s:
        t = get_ticket(s, number)
        rows = list(s.exec(select(Outbox).where(Outbox.ticket_id == t.id).order_by(col(Outbox.id))))
        for r in rows:
            s.expunge(r)
        return rows


def last_notification(gw, number: str) -> tuple[str, str, str]:
    """(Message-ID, Reply-To address, Subject) of the newest mail sent on the ticket."""
    row = notifications(gw, number)[-1]
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    reply_to = getaddresses([str(msg["Reply-To"])])[0][1]
    return row.message_id, reply_to, str(msg["Subject"])


def ticket(gw, number: str) -> Ticket:
    with session_for(gw.engine) as s:
        t = get_ticket(s, number)
        s.expunge(t)
        return t


def messages(gw, number: str, direction: str | None = None) -> list[TicketMessage]:
    with session_for(gw.engine) as s:
        t = get_ticket(s, number)
        q = select(TicketMessage).where(TicketMessage.ticket_id == t.id)
        if direction:
            q = q.where(TicketMessage.direction == direction)
        rows = list(s.exec(q.order_by(col(TicketMessage.id))))
        for r in rows:
            s.expunge(r)
        return rows

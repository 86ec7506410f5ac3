"""The approval story's helpers: a Service Request asked for approval, answers as Outlook,
Gmail and Apple Mail write them (shared by tests/test_approval_answers.py and
tests/test_decisions.py)."""

from __future__ import annotations

import email
import email.header
import email.policy
import quopri
from email.utils import getaddresses

import pytest
from sqlmodel import col, select

from gateway import actions
from gateway.ingest.answers import APPROVE, REFUSE, read_decision
from gateway.ingest.inbound import store_raw
from gateway.outbound.outbox import render_pending
from gateway.outbound.labels import APPROVE_WORD, REJECT_WORD
from gateway.outbound.render import LANGUAGES
from store import lifecycle
from store.db import session_for
from store.lifecycle import StatusData
from store.models import InboundMessage, Outbox, Person, TicketMessage
from store.tickets import get_ticket

HELPDESK = "helpdesk@localhost"



def qp(text: str, charset: str = "utf-8") -> str:
    return quopri.encodestring(text.replace("\n", "\r\n").encode(charset)).decode("ascii")


PEOPLE = {"fr": ("marie.dupont@client.be", "Marie Dupont"), "nl": ("jan.peeters@klant.be", "Jan Peeters"),
          "en": ("sarah.jones@client.co.uk", "Sarah Jones"), "de": ("anna.weber@kunde.de", "Anna Weber")}
FIRST_MAIL = {"fr": ("Nouvel écran 27 pouces", "Bonjour,\n\nIl me faudrait un écran de 27 pouces.\n\nMarie"),
              "nl": ("Nieuw scherm 27 inch", "Goedemorgen,\n\nIk heb een scherm van 27 inch nodig.\n\nJan"),
              "en": ("New 27-inch screen", "Hello,\n\nI need a 27-inch screen.\n\nSarah"),
              "de": ("Neuer 27-Zoll-Bildschirm", "Guten Tag,\n\nich brauche einen 27-Zoll-Bildschirm.\n\nAnna")}
QUOTE = {"fr": "Écran 27 pouces : 320 EUR", "nl": "Scherm 27 inch: 320 EUR", "en": "27-inch screen: EUR 320",
         "de": "27-Zoll-Bildschirm: 320 EUR"}
OUTLOOK_FIELDS = {"fr": ("De :", "Envoyé :", "À :", "Objet :"), "nl": ("Van:", "Verzonden:", "Aan:", "Onderwerp:"),
                  "en": ("From:", "Sent:", "To:", "Subject:"), "de": ("Von:", "Gesendet:", "An:", "Betreff:")}
OUTLOOK_SENT = {"fr": "vendredi 27 novembre 2026 10:00", "nl": "vrijdag 27 november 2026 10:00",
                "en": "Friday, November 27, 2026 10:00 AM", "de": "Freitag, 27. November 2026 10:00"}
GMAIL_ATTRIBUTION = {"fr": "Le ven. 27 nov. 2026 à 10:00, Helpdesk <{to}> a\nécrit :",
                     "nl": "Op vr 27 nov. 2026 om 10:00 schreef Helpdesk <{to}>:",
                     "en": "On Fri, 27 Nov 2026 at 10:00, Helpdesk <{to}> wrote:",
                     "de": "Am Fr., 27. Nov. 2026 um 10:00 Uhr schrieb Helpdesk <{to}>:"}
APPLE = {"fr": ("Envoyé de mon iPhone", "Le 27 nov. 2026 à 10:00, Helpdesk <{to}> a écrit :"),
         "nl": ("Verzonden vanaf mijn iPhone", "Op 27 nov. 2026 om 10:00 heeft Helpdesk <{to}> het volgende geschreven:"),
         "en": ("Sent from my iPhone", "On 27 Nov 2026, at 10:00, Helpdesk <{to}> wrote:"),
         "de": ("Von meinem iPhone gesendet", "Am 27.11.2026 um 10:00 schrieb Helpdesk <{to}>:")}
CLOSING = {"fr": "Cordialement,", "nl": "Met vriendelijke groeten,", "en": "Kind regards,",
           "de": "Mit freundlichen Grüßen"}
# What each customer writes, with each mail program, and what they mean.
ANSWERS = {
    ("fr", "outlook"): ("Bonjour,\n\nApprouvé, merci. Vous pouvez passer la commande.", APPROVE),
    ("fr", "gmail"): ("Bonjour Helpdesk,\n\nJe ne suis pas d'accord : c'est trop cher pour cette année.", REFUSE),
    ("fr", "apple"): ("Bonjour,\n\nC'est d'accord pour moi, merci !", APPROVE),
    ("nl", "outlook"): ("Goedemiddag,\n\nAkkoord, u mag het scherm bestellen.", APPROVE),
    ("nl", "gmail"): ("Beste,\n\nNiet akkoord, dit past niet in het budget.", REFUSE),
    ("nl", "apple"): ("Hallo,\n\nIk keur de offerte goed.", APPROVE),
    ("en", "outlook"): ("Hi,\n\nNot approved, sorry: we will wait for next year's budget.", REFUSE),
    ("en", "gmail"): ("Hello,\n\nApproved, thanks. Please go ahead.", APPROVE),
    ("en", "apple"): ("Dear Helpdesk,\n\nI approve the purchase.", APPROVE),
    ("de", "outlook"): ("Guten Tag,\n\nGenehmigt, vielen Dank.", APPROVE),
    ("de", "gmail"): ("Hallo,\n\ndas genehmige ich nicht, es ist zu teuer.", REFUSE),
    ("de", "apple"): ("Sehr geehrte Damen und Herren,\n\nich bin einverstanden.", APPROVE),
}


def first_mail(lang: str) -> bytes:
    addr, name = PEOPLE[lang]
    subject, body = FIRST_MAIL[lang]
    return (f"From: {name} <{addr}>\nTo: Helpdesk <{HELPDESK}>\nMessage-ID: <first-{lang}@client.example>\n"
            f"Date: Fri, 27 Nov 2026 08:00:00 +0100\nSubject: {email.header.Header(subject, 'utf-8').encode()}\n"
            f"Content-Language: {lang}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            f"Content-Transfer-Encoding: quoted-printable\n\n{qp(body)}\n").encode()


def outlook(lang: str, answer: str, request: "Request") -> bytes:
    """Outlook: no In-Reply-To, "RE: " and the tag in the subject, the closing and a
    signature, then the header block in the customer's language and our mail unquoted."""
    addr, name = PEOPLE[lang]
    frm, sent, to, subj = OUTLOOK_FIELDS[lang]
    plain = (f"{answer}\n\n{CLOSING[lang]}\n{name}\nIT – Client SA\n+32 2 123 45 67\n\n"
             f"________________________________\n{frm} Helpdesk <{request.reply_to}>\n{sent} {OUTLOOK_SENT[lang]}\n"
             f"{to} {name} <{addr}>\n{subj} {request.subject}\n\n{request.text}")
    return (f"From: \"{name}\" <{addr}>\nTo: Helpdesk <{request.reply_to}>\n"
            f"Subject: {email.header.Header('RE: ' + request.subject, 'utf-8').encode()}\n"
            f"Thread-Topic: {email.header.Header(request.subject, 'utf-8').encode()}\n"
            f"Thread-Index: AQHZIKvQ1bW3ZkQ4S0yqUo1uV1ayxQ==\nDate: Fri, 27 Nov 2026 11:02:13 +0000\n"
            f"Message-ID: <outlook-{lang}@eurprd02.prod.outlook.com>\nContent-Language: {lang}\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: quoted-printable\n\n"
            f"{qp(plain)}\n").encode()


def gmail(lang: str, answer: str, request: "Request") -> bytes:
    """Gmail: In-Reply-To, a "-- " signature, the attribution (wrapped in French) and our
    mail quoted with ">"."""
    addr, name = PEOPLE[lang]
    quoted = "\n".join("> " + line if line else ">" for line in request.text.split("\n"))
    plain = (f"{answer}\n\n-- \n{name}\nClient SA\n\n{GMAIL_ATTRIBUTION[lang].format(to=request.reply_to)}\n\n"
             f"{quoted}\n")
    return (f"MIME-Version: 1.0\nReferences: <{request.message_id}>\nIn-Reply-To: <{request.message_id}>\n"
            f"From: {name} <{addr}>\nDate: Fri, 27 Nov 2026 11:15:42 +0100\n"
            f"Message-ID: <CAF-{lang}@mail.gmail.com>\n"
            f"Subject: {email.header.Header('Re: ' + request.subject, 'utf-8').encode()}\n"
            f"To: Helpdesk <{request.reply_to}>\nContent-Type: text/plain; charset=\"UTF-8\"\n"
            f"Content-Transfer-Encoding: quoted-printable\n\n{qp(plain)}\n").encode()


def apple(lang: str, answer: str, request: "Request") -> bytes:
    """Apple Mail on an iPhone: the answer, its footer, then our mail quoted."""
    addr, name = PEOPLE[lang]
    footer, attribution = APPLE[lang]
    quoted = "\n".join("> " + line if line else ">" for line in request.text.split("\n"))
    plain = f"{answer}\n\n{footer}\n\n> {attribution.format(to=request.reply_to)}\n>\n{quoted}\n"
    return (f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n"
            f"From: {name} <{addr}>\nMime-Version: 1.0 (1.0)\nDate: Fri, 27 Nov 2026 11:20:00 +0100\n"
            f"Subject: {email.header.Header('Re: ' + request.subject, 'utf-8').encode()}\n"
            f"Message-Id: <B1C2D3E4-{lang}@client.example>\nReferences: <{request.message_id}>\n"
            f"In-Reply-To: <{request.message_id}>\nTo: Helpdesk <{request.reply_to}>\n"
            f"X-Mailer: iPhone Mail (21F90)\n\n{qp(plain)}\n").encode()


CLIENTS = {"outlook": outlook, "gmail": gmail, "apple": apple}


class Request:
    """Our approval mail as the customer received it."""

    def __init__(self, row: Outbox):
        msg = email.message_from_bytes(row.raw, policy=email.policy.default)
        self.message_id = row.message_id
        self.reply_to = getaddresses([str(msg["Reply-To"])])[0][1]
        self.subject = str(msg["Subject"])
        self.text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n").strip()
        self.flag = msg["X-Message-Flag"]


def deliver(gw, raw: bytes):
    return gw.processor.process(store_raw(gw.engine, gw.blobs, raw, source="test").id)


def service_request(gw, lang: str) -> str:
    """A customer's first mail, routed as a Service Request (as a mailbox would)."""
    stored = store_raw(gw.engine, gw.blobs, first_mail(lang), source="test")
    with session_for(gw.engine) as s:
        row = s.get(InboundMessage, stored.id)
        row.process = "service-request"
        s.add(row)
        s.commit()
    out = gw.processor.process(stored.id)
    assert out.outcome == "created" and out.ticket.startswith("SR-")
    return out.ticket


def ask_approval(gw, number: str, lang: str) -> Request:
    """An agent asks for approval: the status and its mail together."""
    actions.set_status(gw, number, lifecycle.APPROVAL, StatusData(approval_text=QUOTE[lang]), by="agent@localhost")
    row = outbox(gw, number)[-1]
    assert row.event == "approval"
    return Request(row)


def outbox(gw, number: str) -> list[Outbox]:
    """The ticket's outbox copies, oldest first, rendered as the deliverer renders them."""
    render_pending(gw.engine, gw.notifier)
    with session_for(gw.engine) as s:
        t = get_ticket(s, number)
        rows = list(s.exec(select(Outbox).where(Outbox.ticket_id == t.id).order_by(col(Outbox.id))))
        for r in rows:
            s.expunge(r)
        return rows


def status(gw, number: str) -> str:
    with session_for(gw.engine) as s:
        return get_ticket(s, number).status


def body(row: Outbox) -> str:
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    return msg.get_body(("plain",)).get_content()

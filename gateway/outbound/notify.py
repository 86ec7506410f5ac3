"""Notifications: decide who gets which mail, render it, and write it to the outbox in the
caller's transaction (so a status change and its mail land together or not at all).

Recipients are the Reporting and the Affected Person, once each (one mail to both).
The language is the Affected Person's, else their company's, else the config's default,
else English (manual §1.5); dates are shown in the time zone of the person greeted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP

from sqlalchemy import func, insert
from sqlmodel import Session, col, select

from gateway.config import Config
from gateway.outbound.compose import (Envelope, build_bytes, conversation_guid, header_text, new_message_id,
                                      shorten, thread_index)
from gateway.outbound.labels import APPROVE_WORD, PROCESS_LABELS, REJECT_WORD, STATUS_LABELS, WAITING_LABELS
from gateway.outbound.render import FALLBACK_LANGUAGE, LANGUAGES, RenderedMail, Renderer, RenderError
from gateway.tokens import reply_address, with_marker
from store import lifecycle
from store.db import Prepared
from store.models import Company, Outbox, Person, Ticket, TicketMessage, aware, utcnow
from store.tickets import latest_public_update

log = logging.getLogger("gateway.outbound")

MAX_REFERENCES = 20


def thread_references(thread: list[str], limit: int = MAX_REFERENCES) -> tuple[str, ...]:
    """The References of the next mail of a ticket: the root and the latest ones.

    Keeping the first (RFC 5322 3.6.4: trim from the middle) lets a client that saw only
    the start of the conversation still attach the mail to it."""
    ids = [m for m in thread if m]
    if len(ids) <= limit:
        return tuple(ids)
    return (ids[0], *ids[len(ids) - (limit - 1):])


def stable_subject(number: str, title: str) -> str:
    """``[INC-000001] <title>``: the same on every mail of a ticket (Gmail threads by it)."""
    title = shorten(header_text(title))
    return f"[{number}] {title}" if title else f"[{number}]"


@dataclass(frozen=True)
class Composed:
    """A notification ready to be queued: who, in which language, and the MIME message."""

    event: str
    language: str
    recipients: tuple[Person, ...]
    mail: RenderedMail
    raw: bytes  # the MIME message as sent (CRLF)
    subject: str
    message_id: str

    @property
    def message(self) -> EmailMessage:
        """The message as the standard library parses it (previews; not the hot path)."""
        return message_from_bytes(self.raw, policy=SMTP)


@dataclass(frozen=True)
class KnownThread:
    """What ``compose`` would otherwise read back from the database, when the caller knows
    it: for a ticket created in the same transaction, its one mail's Message-ID, that
    mail's text as the latest update, and no change linked to it yet."""

    message_ids: tuple[str, ...]
    latest_update: str
    change_number: str = ""


# Built once: a statement made per call (``insert(...).values(...)``) computes its cache
# key again each time, which cost more than executing it.
_INSERT_OUTBOX = Prepared(insert(Outbox.__table__).returning(Outbox.__table__.c.id))
_INSERT_MESSAGE = Prepared(insert(TicketMessage.__table__))


@dataclass(frozen=True)
class Notifier:
    config: Config
    renderer: Renderer

    def language_for(self, affected: Person, session: Session | None = None) -> str:
        """The Affected Person's language, else their company's (looked up in ``session``),
        else the config's default, else English."""
        candidates = [affected.language]
        if session is not None and affected.company:
            company = session.get(Company, affected.company)
            if company is not None:
                candidates.append(company.language)
        candidates.append(self.config.gateway.default_language)
        for lang in candidates:
            if lang in LANGUAGES:
                return lang
        return FALLBACK_LANGUAGE

    def context(self, ticket: Ticket, recipient: Person, lang: str, *, latest_update: str = "",
                change_number: str = "", extra: dict | None = None) -> dict:
        """Everything a template may use; every key is always present (templates are
        rendered with undefined variables as errors)."""
        try:
            tr = self.renderer.translations(lang)
        except RenderError as exc:  # a broken override catalog: the shipped words, and say so
            log.error("%s", exc)
            tr = self.renderer.translations(lang, use_override=False)
        solved_at = aware(ticket.solved_at)
        close_on = solved_at + timedelta(days=self.config.lifecycle.close_after_days) if solved_at else None
        ctx = {
            "ticket": ticket,
            "recipient": recipient,
            "helpdesk": {"name": self.config.gateway.name, "address": self.config.helpdesk_address},
            "process_label": tr.gettext(PROCESS_LABELS.get(ticket.process, ticket.process)),
            "status_label": tr.gettext(STATUS_LABELS.get(ticket.status, ticket.status)),
            "waiting_reason": ticket.waiting_reason or "",
            "waiting_label": tr.gettext(WAITING_LABELS[ticket.waiting_reason]) if ticket.waiting_reason else "",
            "reason": ticket.status_reason or "",
            "latest_update": latest_update,
            "appointment": aware(ticket.appointment_at),
            "place": ticket.appointment_place or "",
            "solution": ticket.solution or "",
            "close_after_days": self.config.lifecycle.close_after_days,
            "close_on": close_on,
            "approval_text": ticket.approval_text or "",
            "approve_word": tr.gettext(APPROVE_WORD),
            "reject_word": tr.gettext(REJECT_WORD),
            "change_number": change_number,
        }
        ctx.update(extra or {})
        return ctx

    def recipients(self, session: Session, ticket: Ticket, only: list[Person] | None = None) -> list[Person]:
        reporter = session.get(Person, ticket.reporting_person_id)
        affected = session.get(Person, ticket.affected_person_id)
        people: list[Person] = []
        for person in only or [reporter, affected]:
            if person is not None and person.id not in [p.id for p in people]:
                people.append(person)
        return people

    def compose(
        self,
        session: Session,
        ticket: Ticket,
        event: str,
        *,
        in_reply_to: str | None = None,
        auto_submitted: str = "auto-generated",
        extra: dict | None = None,
        only: list[Person] | None = None,
        now: datetime | None = None,
        safe: bool = True,
        known: KnownThread | None = None,
    ) -> Composed | None:
        """Render ``event`` for ``ticket`` as a MIME message; writes nothing.

        None when nobody can be mailed (every recipient undeliverable).  ``safe`` falls
        back to the shipped template when an admin's override is broken."""
        now = now or utcnow()
        people = self.recipients(session, ticket, only)
        skipped = [p.email for p in people if p.undeliverable]
        people = [p for p in people if not p.undeliverable]
        if skipped:
            log.info("%s: %s not mailed to undeliverable %s", ticket.number, event, ", ".join(skipped))
        if not people:
            return None
        affected = session.get(Person, ticket.affected_person_id)
        lang = self.language_for(affected or people[0], session)
        # The affected person's name in the greeting when they are among the recipients.
        greeted = affected if affected is not None and affected.id in [p.id for p in people] else people[0]
        if known is not None:
            change, latest, thread = known.change_number, known.latest_update, list(known.message_ids)
        else:
            change = session.exec(
                select(Ticket.number).where(Ticket.linked_ticket_id == ticket.id, Ticket.process == "change")
                .order_by(col(Ticket.id).desc())
            ).first() if ticket.id is not None else None
            latest = latest_public_update(session, ticket)
            thread = list(
                session.exec(
                    select(TicketMessage.message_id)
                    .where(TicketMessage.ticket_id == ticket.id, col(TicketMessage.message_id).is_not(None))
                    .order_by(col(TicketMessage.created_at), col(TicketMessage.id))
                )
            )
        ctx = self.context(ticket, greeted, lang, latest_update=latest or "", change_number=change or "",
                           extra=extra)
        render = self.renderer.render_safe if safe else self.renderer.render
        mail = render(event, lang, ctx)

        if in_reply_to and in_reply_to not in thread:
            # The mail being answered is not (yet) a message of the ticket: still chain to it.
            thread.append(in_reply_to)
        references = thread_references(thread)
        if in_reply_to is None and references:
            in_reply_to = references[-1]
        message_id = new_message_id(self.config.message_id_domain)
        topic = stable_subject(ticket.number, ticket.title)
        # An approval request's address names the request (1, 2, ...): the answer to an
        # earlier or already decided one is then told apart, In-Reply-To or not.
        request = None
        if event == "approval" and ticket.id is not None:
            request = 1 + session.exec(select(func.count()).select_from(Outbox)
                                       .where(Outbox.ticket_id == ticket.id, Outbox.event == "approval")).one()
        reply_to = reply_address(self.config.gateway.secret, self.config.helpdesk_address, ticket.number, request)
        # Whatever the template, the HTML carries the reply address hidden at its end
        # (gateway.tokens.with_marker): the last way a reply finds its ticket.
        mail = replace(mail, html=with_marker(mail.html, reply_to))
        envelope = Envelope(
            from_name=self.config.gateway.name,
            from_addr=self.config.helpdesk_address,
            to=tuple((p.name, p.email) for p in people),
            reply_to=reply_to,
            message_id=message_id,
            in_reply_to=in_reply_to,
            references=references,
            number=ticket.number,
            loop_id=self.config.helpdesk_address,
            auto_submitted=auto_submitted,
            date=now,
            subject=topic if self.config.outbound.stable_subject and header_text(ticket.title) else None,
            thread_topic=topic,
            thread_index=thread_index(conversation_guid(ticket.number, self.config.message_id_domain),
                                      ticket.created_at or now, now),
            flag=mail.action or None,
        )
        raw, subject = build_bytes(mail, envelope)
        return Composed(event, lang, tuple(people), mail, raw, subject, message_id)

    def enqueue(
        self,
        session: Session,
        ticket: Ticket,
        event: str,
        *,
        in_reply_to: str | None = None,
        auto_submitted: str = "auto-generated",
        extra: dict | None = None,
        only: list[Person] | None = None,
        now: datetime | None = None,
        known: KnownThread | None = None,
        want_row: bool = True,
    ) -> Outbox | None:
        """Render ``event`` for ``ticket`` and add it to the outbox (not committed here).

        Returns the outbox row as an object (None when nobody can be mailed); with
        ``want_row=False`` (the mail path, which does not use it) only whether one was
        queued: True or None."""
        now = now or utcnow()
        composed = self.compose(session, ticket, event, in_reply_to=in_reply_to, auto_submitted=auto_submitted,
                                extra=extra, only=only, now=now, known=known)
        if composed is None:
            return None
        # Core inserts on the session's connection, in its transaction: the unit of work's
        # flush for these two rows cost more than rendering the mail (bench/run.py).
        values = dict(ticket_id=ticket.id, event=event, recipients=",".join(p.email for p in composed.recipients),
                      language=composed.language, subject=composed.subject, message_id=composed.message_id,
                      raw=composed.raw, state="pending", attempts=0, next_attempt_at=now, last_answer=None,
                      created_at=now, sent_at=None)
        conn = session.connection()
        outbox_id = _INSERT_OUTBOX.execute(conn, values)
        _INSERT_MESSAGE.execute(conn, dict(
            ticket_id=ticket.id, direction="out", internal=False, from_addr=self.config.helpdesk_address,
            to_addrs=values["recipients"], cc_addrs="", subject=composed.subject, body_text=composed.mail.text,
            body_full=None, body_html=None, message_id=composed.message_id, inbound_id=None, outbox_id=outbox_id,
            created_at=now))
        log.info("%s: %s mail <%s> queued for %s in %s", ticket.number, event, composed.message_id,
                 values["recipients"], composed.language)
        return Outbox(id=outbox_id, **values) if want_row else True

    def compose_notice(self, event: str, *, to: tuple[str, str], lang: str, in_reply_to: str | None = None,
                       extra: dict | None = None, now: datetime | None = None) -> Composed:
        """A mail about no ticket (``too-large``: a mail the desk could not read) to
        ``to`` = (name, address), in ``lang``, as a MIME message; writes nothing.

        It answers the sender's mail (In-Reply-To, ``Auto-Submitted: auto-replied``) and
        its replies go to the plain helpdesk address: no reply token, no [number] tag."""
        now = now or utcnow()
        name, address = to
        lang = lang if lang in LANGUAGES else FALLBACK_LANGUAGE
        recipient = Person(email=address, name=name or "", language=lang)
        ctx = {"recipient": recipient,
               "helpdesk": {"name": self.config.gateway.name, "address": self.config.helpdesk_address},
               **(extra or {})}
        mail = self.renderer.render_safe(event, lang, ctx)
        message_id = new_message_id(self.config.message_id_domain)
        envelope = Envelope(
            from_name=self.config.gateway.name, from_addr=self.config.helpdesk_address, to=((name, address),),
            reply_to=self.config.helpdesk_address, message_id=message_id, in_reply_to=in_reply_to,
            references=(in_reply_to,) if in_reply_to else (), number="", loop_id=self.config.helpdesk_address,
            auto_submitted="auto-replied", date=now, flag=mail.action or None)
        raw, subject = build_bytes(mail, envelope)
        return Composed(event, lang, (recipient,), mail, raw, subject, message_id)

    def enqueue_notice(self, session: Session, event: str, *, to: tuple[str, str], lang: str,
                       in_reply_to: str | None = None, extra: dict | None = None,
                       now: datetime | None = None) -> Outbox:
        """``compose_notice``, added to the outbox (not committed here); no message on a ticket."""
        now = now or utcnow()
        composed = self.compose_notice(event, to=to, lang=lang, in_reply_to=in_reply_to, extra=extra, now=now)
        address = to[1]
        values = dict(ticket_id=None, event=event, recipients=address, language=composed.language,
                      subject=composed.subject, message_id=composed.message_id, raw=composed.raw, state="pending",
                      attempts=0, next_attempt_at=now, last_answer=None, created_at=now, sent_at=None)
        outbox_id = _INSERT_OUTBOX.execute(session.connection(), values)
        log.info("%s mail <%s> queued for %s in %s", event, composed.message_id, address, composed.language)
        return Outbox(id=outbox_id, **values)

    def event_for(self, status: str) -> str | None:
        """The template event mailed when a ticket arrives in ``status`` (manual §1.5)."""
        return lifecycle.NOTIFIED.get(status)


# Sample data for previews and ``templates check``: a ticket in the status its event is
# sent in, with the data of that status only (as store.tickets.change_status keeps it), so
# that no preview shows « Statut : En cours » beside « le ticket reste donc résolu ».
SAMPLE_NOW = datetime(2026, 11, 27, 9, 30, tzinfo=timezone.utc)
# The status a ticket is in when each event is sent.
SAMPLE_STATUS = {**{event: status for status, event in lifecycle.NOTIFIED.items()},
                 "approval-recorded": lifecycle.IN_PROGRESS, "approval-unclear": lifecycle.APPROVAL,
                 "reopen-needs-comment": lifecycle.SOLVED, "closed-new-ticket": lifecycle.NEW,
                 "too-large": lifecycle.NEW}

# What a customer and an agent would write, per language, so that a preview reads true.
SAMPLE_TEXT = {
    "fr": {"title": "L'imprimante du 3e étage est en panne",
           "mail": "Bonjour,\n\nL'imprimante du 3e étage affiche l'erreur E52 depuis ce matin.\n\nMarie Dupont",
           "request": "Imprimante couleur pour le 3e étage",
           "request_mail": "Bonjour,\n\nIl nous faudrait une imprimante couleur au 3e étage.\n\nMarie Dupont",
           "update": "Le technicien a trouvé du papier coincé dans l'unité de fixation.",
           "rejected": "Cette imprimante n'est pas couverte par votre contrat de maintenance.",
           "postponed": "Merci de nous indiquer le numéro de série de l'imprimante (étiquette au dos).",
           "question": "Quel bac papier est bloqué\u202f?",
           "solution": "L'unité de fixation a été remplacée.",
           "approval": "Installation d'une imprimante couleur (450 EUR).",
           "place": "3e étage, local 301",
           "approve": "Approuvé, vous pouvez commander.",
           "unclear": "Combien coûte la livraison\u202f?"},
    "nl": {"title": "De printer op de 3de verdieping is defect",
           "mail": "Goedemorgen,\n\nDe printer op de 3de verdieping geeft sinds vanochtend fout E52.\n\nMarie Dupont",
           "request": "Kleurenprinter voor de 3de verdieping",
           "request_mail": "Goedemorgen,\n\nWe hebben een kleurenprinter nodig op de 3de verdieping.\n\nMarie Dupont",
           "update": "De technicus vond papier dat vastzat in de fixeereenheid.",
           "rejected": "Deze printer valt niet onder uw onderhoudscontract.",
           "postponed": "Wilt u ons het serienummer van de printer bezorgen (sticker op de achterkant)?",
           "question": "Welke papierlade zit vast?",
           "solution": "De fixeereenheid werd vervangen.",
           "approval": "Installatie van een kleurenprinter (450 EUR).",
           "place": "3de verdieping, lokaal 301",
           "approve": "Akkoord, u mag bestellen.",
           "unclear": "Hoeveel kost de levering?"},
    "en": {"title": "Printer on the 3rd floor out of order",
           "mail": "Hello,\n\nThe printer on the 3rd floor has shown error E52 since this morning.\n\nMarie Dupont",
           "request": "Colour printer for the 3rd floor",
           "request_mail": "Hello,\n\nWe need a colour printer on the 3rd floor.\n\nMarie Dupont",
           "update": "The technician found paper stuck in the fuser unit.",
           "rejected": "This printer is not covered by your maintenance contract.",
           "postponed": "Please tell us the serial number of the printer (label on the back).",
           "question": "Which paper tray is jammed?",
           "solution": "The fuser unit was replaced.",
           "approval": "Installation of a colour printer (EUR 450).",
           "place": "3rd floor, room 301",
           "approve": "Approved, you may order it.",
           "unclear": "How much is the delivery?"},
    "de": {"title": "Drucker im 3. Stock defekt",
           "mail": "Guten Tag,\n\nDer Drucker im 3. Stock zeigt seit heute Morgen den Fehler E52.\n\nMarie Dupont",
           "request": "Farbdrucker für den 3. Stock",
           "request_mail": "Guten Tag,\n\nwir brauchen einen Farbdrucker im 3. Stock.\n\nMarie Dupont",
           "update": "Der Techniker hat in der Fixiereinheit eingeklemmtes Papier gefunden.",
           "rejected": "Dieser Drucker ist nicht durch Ihren Wartungsvertrag abgedeckt.",
           "postponed": "Bitte nennen Sie uns die Seriennummer des Druckers (Etikett auf der Rückseite).",
           "question": "Welches Papierfach klemmt?",
           "solution": "Die Fixiereinheit wurde ersetzt.",
           "approval": "Installation eines Farbdruckers (450 EUR).",
           "place": "3. Stock, Raum 301",
           "approve": "Genehmigt, Sie können bestellen.",
           "unclear": "Was kostet die Lieferung?"},
}


def sample_texts(lang: str) -> dict[str, str]:
    return SAMPLE_TEXT.get(lang, SAMPLE_TEXT["en"])


def sample_person(lang: str = "en") -> Person:
    return Person(id=0, email="marie.dupont@example.com", name="Marie Dupont", language=lang,
                  company="Example SA", timezone="Europe/Brussels")


def sample_ticket(event: str, waiting_reason: str | None = None, lang: str = "en") -> tuple[Ticket, Person]:
    """A ticket in the status ``event`` is sent in, with that status's data, and its
    affected person (who reported it too)."""
    texts = sample_texts(lang)
    person = sample_person(lang)
    status = SAMPLE_STATUS.get(event, lifecycle.IN_PROGRESS)
    approval = event.startswith("approval")  # a Service Request: a colour printer, for approval
    reason = (waiting_reason or "customer-feedback") if status == lifecycle.WAITING else None
    ticket = Ticket(
        id=None, number="SR-000123" if approval else "INC-000123",
        process="service-request" if approval else "incident",
        status=status, title=texts["request" if approval else "title"],
        description=texts["request_mail" if approval else "mail"], personal_reference="PO1234",
        reporting_person_id=0, affected_person_id=0,
        waiting_reason=reason,
        status_reason={lifecycle.REJECTED: texts["rejected"], lifecycle.POSTPONED: texts["postponed"],
                       lifecycle.WAITING: texts["question"] if reason == "customer-feedback" else None}.get(status),
        appointment_at=SAMPLE_NOW + timedelta(days=4, hours=4) if status == lifecycle.PLANNED else None,
        appointment_place=texts["place"] if status == lifecycle.PLANNED else None,
        solution=texts["solution"] if status == lifecycle.SOLVED else None,
        solved_at=SAMPLE_NOW if status == lifecycle.SOLVED else None,
        approval_text=texts["approval"] if approval else None,
        created_at=SAMPLE_NOW, updated_at=SAMPLE_NOW,
    )
    return ticket, person


def sample_context(notifier: Notifier, event: str, lang: str, waiting_reason: str | None = None,
                   recipient: Person | None = None) -> dict:
    """The context of ``event`` on the sample ticket, for ``recipient`` (else the sample person)."""
    ticket, person = sample_ticket(event, waiting_reason, lang)
    return notifier.context(ticket, recipient or person, lang, latest_update=sample_texts(lang)["update"],
                            change_number="CHG-000042" if ticket.waiting_reason == "rfc" else "",
                            extra=sample_extra(event, ticket, person, lang))


def sample_extra(event: str, ticket: Ticket, person: Person, lang: str) -> dict:
    """What the reply-handling events pass besides the ticket (gateway.ingest.process)."""
    if event == "approval-recorded":
        return {"decision": "approved", "approver": person.name or person.email, "approver_address": person.email,
                "answer": sample_texts(lang)["approve"]}
    if event == "approval-unclear":
        return {"statement": sample_texts(lang)["unclear"]}
    if event == "too-large":
        return {"original_subject": ticket.title, "size": 40_055_193, "limit": 25 * 2**20}
    if event == "closed-new-ticket":
        closed = Ticket(number="INC-000007", process=ticket.process, status=lifecycle.CLOSED, title=ticket.title,
                        reporting_person_id=0, affected_person_id=0)
        return {"closed_ticket": closed}
    return {}

"""Notifications, rendered: a queued outbox row made into the MIME message the relay gets.

What a mail is about, for whom and in which language was decided when it was queued
(store.notifications); here its template is rendered with that snapshot, in the row's
language, for its one recipient (greeted by name, dates in their time zone), and the
message is built with the headers that thread it.  The deliverer does this before a
row's first attempt and keeps the bytes, so every retry sends the same message; a
preview (``gateway templates preview``) does it to a row that is never written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP

from gateway.config import Config
from gateway.outbound.compose import Envelope, build_bytes, conversation_guid, header_text, shorten, thread_index
from gateway.outbound.labels import APPROVE_WORD, PROCESS_LABELS, REJECT_WORD, STATUS_LABELS, WAITING_LABELS
from gateway.outbound.render import SHIPPED_DIR, RenderedMail, Renderer, RenderError
from gateway.tokens import reply_address, with_marker
from store import lifecycle
from store.models import Outbox, Person, Ticket, aware
from store.notifications import load_context

log = logging.getLogger("gateway.outbound")


def stable_subject(number: str, title: str) -> str:
    """``[INC-000001] <title>``: the same on every mail of a ticket (Gmail threads by it)."""
    title = shorten(header_text(title))
    return f"[{number}] {title}" if title else f"[{number}]"


@dataclass(frozen=True)
class Composed:
    """A notification rendered: the MIME message for its one recipient."""

    event: str
    language: str
    recipient: str
    mail: RenderedMail
    raw: bytes  # the MIME message as sent (CRLF)
    subject: str
    message_id: str

    @property
    def message(self) -> EmailMessage:
        """The message as the standard library parses it (previews; not the hot path)."""
        return message_from_bytes(self.raw, policy=SMTP)


@dataclass(frozen=True)
class Notifier:
    config: Config
    renderer: Renderer

    def context(self, ticket, recipient, lang: str, *, latest_update: str = "", change_number: str = "",
                extra: dict | None = None) -> dict:
        """Everything a template may use; every key is always present (templates are
        rendered with undefined variables as errors).  ``ticket`` and ``recipient`` are
        the snapshots a row was queued with (or a Ticket and a Person)."""
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

    def compose(self, row: Outbox, *, safe: bool = True) -> Composed:
        """Render ``row`` (a queued copy) as the MIME message its recipient gets; writes
        nothing.  ``safe`` falls back to the shipped template when an admin's override is
        broken (a bad override never stops a mail); raises RenderError otherwise."""
        snap = load_context(row.context)
        ticket, recipient, lang = snap["ticket"], snap["recipient"], row.language
        if ticket is None:  # a notice about no ticket (store.notifications.queue_notice)
            ctx = {"recipient": recipient,
                   "helpdesk": {"name": self.config.gateway.name, "address": self.config.helpdesk_address},
                   **snap["extra"]}
        else:
            ctx = self.context(ticket, recipient, lang, latest_update=snap["latest_update"],
                               change_number=snap["change_number"], extra=snap["extra"])
        render = self.renderer.render_safe if safe else self.renderer.render
        mail = render(row.event, lang, ctx)
        created = aware(row.created_at)
        if ticket is None:
            reply_to, topic, index, subject = self.config.helpdesk_address, None, None, None
        else:
            # An approval request's address names the request (1, 2, ...): the answer to
            # an earlier or already decided one is then told apart, In-Reply-To or not.
            reply_to = reply_address(self.config.gateway.secret, self.config.helpdesk_address, ticket.number,
                                     snap["approval_request"])
            # Whatever the template, the HTML carries the reply address hidden at its end
            # (gateway.tokens.with_marker): the last way a reply finds its ticket.
            mail = replace(mail, html=with_marker(mail.html, reply_to))
            topic = stable_subject(ticket.number, ticket.title)
            subject = topic if self.config.outbound.stable_subject and header_text(ticket.title) else None
            index = thread_index(conversation_guid(ticket.number, self.config.message_id_domain),
                                 aware(ticket.created_at) or created, created)
        envelope = Envelope(
            from_name=self.config.gateway.name,
            from_addr=self.config.helpdesk_address,
            to=((row.recipient_name, row.recipient),),
            reply_to=reply_to,
            message_id=row.message_id,
            in_reply_to=row.in_reply_to,
            references=tuple(json.loads(row.thread_ids or "[]")),
            number=ticket.number if ticket is not None else "",
            loop_id=self.config.helpdesk_address,
            auto_submitted=row.auto_submitted,
            date=created,
            subject=subject,
            thread_topic=topic,
            thread_index=index,
        )
        raw, subject = build_bytes(mail, envelope)
        return Composed(row.event, lang, row.recipient, mail, raw, subject, row.message_id)

    def event_for(self, status: str) -> str | None:
        """The template event mailed when a ticket arrives in ``status`` (manual §1.5)."""
        return lifecycle.NOTIFIED.get(status)


def renderer_for(config: Config) -> Renderer:
    """The shipped templates, with the admin's override folder first when configured."""
    override = config.path(config.templates.override_dir) if config.templates.override_dir else None
    return Renderer(SHIPPED_DIR, override)


def notifier_for(config: Config) -> Notifier:
    return Notifier(config, renderer_for(config))


def warm_up(notifier: Notifier) -> float:
    """Render every event in every language once, on sample data, before the first real
    mail: compiling the templates and catalogs and loading the languages' date formats
    made a deliverer's first mail take ~190 ms instead of ~10.  Returns the seconds it
    took; a broken override is reported when it is used, not here."""
    import time

    from gateway.outbound.render import EVENTS, LANGUAGES

    start = time.monotonic()
    for lang in LANGUAGES:
        for event in EVENTS:
            try:
                notifier.renderer.render_safe(event, lang, sample_context(notifier, event, lang))
            except Exception:  # noqa: BLE001
                pass
    return time.monotonic() - start


# Sample data for previews and ``templates check``: every field an event can show is set.
SAMPLE_NOW = datetime(2026, 11, 27, 9, 30, tzinfo=timezone.utc)


# What a customer and an agent would write, per language, so that a preview reads true.
SAMPLE_TEXT = {
    "fr": ("L'imprimante du 3e étage est en panne", "La pièce doit être commandée.",
           "L'unité de fixation a été remplacée.", "Installation d'une imprimante couleur (450 EUR).",
           "Le technicien repassera avec la pièce.", "3e étage, local 301"),
    "nl": ("De printer op de 3de verdieping is defect", "Het onderdeel moet besteld worden.",
           "De fuser-eenheid werd vervangen.", "Installatie van een kleurenprinter (450 EUR).",
           "De technicus komt terug met het onderdeel.", "3de verdieping, lokaal 301"),
    "en": ("Printer on the 3rd floor out of order", "The part has to be ordered.",
           "The fuser unit was replaced.", "Installation of a colour printer (EUR 450).",
           "The technician will come back with the part.", "3rd floor, room 301"),
    "de": ("Drucker im 3. Stock defekt", "Das Ersatzteil muss bestellt werden.",
           "Die Fixiereinheit wurde ersetzt.", "Installation eines Farbdruckers (450 EUR).",
           "Der Techniker kommt mit dem Ersatzteil wieder.", "3. Stock, Raum 301"),
}


def sample_ticket(event: str, waiting_reason: str | None = None, lang: str = "en") -> tuple[Ticket, Person]:
    """A ticket in the status of ``event`` with its data, and its affected person."""
    title, reason, solution, approval, _update, place = SAMPLE_TEXT.get(lang, SAMPLE_TEXT["en"])
    person = Person(id=0, email="marie.dupont@example.com", name="Marie Dupont", language=lang,
                    company="Example SA", timezone="Europe/Brussels")
    status = {v: k for k, v in lifecycle.NOTIFIED.items()}.get(event, lifecycle.IN_PROGRESS)
    ticket = Ticket(
        id=None, number="SR-000123" if event.startswith("approval") else "INC-000123",
        process="service-request" if event.startswith("approval") else "incident",
        status=status, title=title,
        description="The printer shows error E52.", personal_reference="PO1234",
        reporting_person_id=0, affected_person_id=0,
        waiting_reason=(waiting_reason or "customer-feedback") if status == lifecycle.WAITING else None,
        status_reason=reason if status in (lifecycle.REJECTED, lifecycle.POSTPONED,
                                                                  lifecycle.WAITING) else None,
        appointment_at=SAMPLE_NOW + timedelta(days=3, hours=4), appointment_place=place,
        solution=solution, solved_at=SAMPLE_NOW, approval_text=approval,
        created_at=SAMPLE_NOW, updated_at=SAMPLE_NOW,
    )
    return ticket, person


def sample_context(notifier: Notifier, event: str, lang: str, waiting_reason: str | None = None) -> dict:
    ticket, person = sample_ticket(event, waiting_reason, lang)
    update = SAMPLE_TEXT.get(lang, SAMPLE_TEXT["en"])[4]
    return notifier.context(ticket, person, lang, latest_update=update,
                            change_number="CHG-000042" if ticket.waiting_reason == "rfc" else "",
                            extra=sample_extra(event, ticket, person, lang))


def sample_extra(event: str, ticket: Ticket, person: Person, lang: str) -> dict:
    """What the reply-handling events pass besides the ticket (gateway.ingest.process)."""
    if event == "approval-recorded":
        return {"decision": "approved", "approver": person.name or person.email,
                "answer": SAMPLE_TEXT.get(lang, SAMPLE_TEXT["en"])[3]}
    if event == "too-large":
        return {"original_subject": ticket.title, "size": 40_055_193, "limit": 25 * 2**20}
    if event == "closed-new-ticket":
        closed = Ticket(number="INC-000007", process=ticket.process, status=lifecycle.CLOSED, title=ticket.title,
                        reporting_person_id=0, affected_person_id=0)
        return {"closed_ticket": closed}
    return {}


def sample_row(config: Config, event: str, lang: str, waiting_reason: str | None = None) -> Outbox:
    """The outbox row ``event`` would be on the sample ticket, for its sample person."""
    from store.notifications import row_values
    from gateway.outbound.render import TICKETLESS

    ticket, person = sample_ticket(event, waiting_reason, lang)
    update = SAMPLE_TEXT.get(lang, SAMPLE_TEXT["en"])[4]
    values = row_values(
        config.notice_settings(), event=event, ticket=None if event in TICKETLESS else ticket, recipient=person,
        address=person.email, language=lang, thread=[], in_reply_to=None,
        auto_submitted="auto-replied" if event in TICKETLESS else "auto-generated", latest_update=update,
        change_number="CHG-000042" if ticket.waiting_reason == "rfc" else "",
        approval_request=1 if event == "approval" else None,
        extra=sample_extra(event, ticket, person, lang), now=SAMPLE_NOW)
    return Outbox(**values)

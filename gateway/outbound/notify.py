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
                extra: dict | None = None, link: str = "") -> dict:
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
            # The recipient's signed link to the ticket on the customers' pages ("": none).
            "link": link,
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
            ctx = {"recipient": recipient, "link": "",
                   "helpdesk": {"name": self.config.gateway.name, "address": self.config.helpdesk_address},
                   **snap["extra"]}
        else:
            # A row queued before links existed has none: its mail says nothing of the pages.
            ctx = self.context(ticket, recipient, lang, latest_update=snap["latest_update"],
                               change_number=snap["change_number"], extra=snap["extra"],
                               link=snap.get("link") or "")
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
            # A mail that asks something of the customer says so in the inbox (Outlook's
            # follow-up flag); render.py's action block.
            flag=mail.action or None,
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


# Sample data for previews and ``templates check``: a ticket in the status its event is
# sent in, with the data of that status only (as store.tickets.change_status keeps it), so
# that no preview shows « Statut : En cours » beside « le ticket reste donc résolu ».
SAMPLE_NOW = datetime(2026, 11, 27, 9, 30, tzinfo=timezone.utc)
# The status a ticket is in when each event is sent.
SAMPLE_STATUS = {**{event: status for status, event in lifecycle.NOTIFIED.items()},
                 "approval-recorded": lifecycle.IN_PROGRESS, "approval-unclear": lifecycle.APPROVAL,
                 "reopen-needs-comment": lifecycle.SOLVED, "closed-new-ticket": lifecycle.NEW,
                 "too-large": lifecycle.NEW, "sign-in": lifecycle.NEW}

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
                            extra=sample_extra(event, ticket, person, lang),
                            link=f"{notifier.config.public_url}/portal/t/{ticket.number}.1.1767225600.{'0' * 32}")


def sample_extra(event: str, ticket: Ticket, person: Person, lang: str) -> dict:
    """What the reply-handling events pass besides the ticket (gateway.ingest.process)."""
    if event == "approval-recorded":
        return {"decision": "approved", "approver": person.name or person.email, "approver_address": person.email,
                "answer": sample_texts(lang)["approve"]}
    if event == "approval-unclear":
        return {"statement": sample_texts(lang)["unclear"]}
    if event == "too-large":
        return {"original_subject": ticket.title, "size": 40_055_193, "limit": 25 * 2**20}
    if event == "sign-in":
        return {"sign_in_link": f"http://127.0.0.1:8025/portal/sign-in/{'x' * 43}", "minutes": 15}
    if event == "closed-new-ticket":
        closed = Ticket(number="INC-000007", process=ticket.process, status=lifecycle.CLOSED, title=ticket.title,
                        reporting_person_id=0, affected_person_id=0)
        return {"closed_ticket": closed}
    return {}

"""Notifications: decide who gets which mail, render it, and write it to the outbox in the
caller's transaction (so a status change and its mail land together or not at all)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from gateway.config import Config
from gateway.outbound.compose import (Envelope, build_message, conversation_guid, header_text, new_message_id,
                                      shorten, thread_index)
from gateway.outbound.labels import PROCESS_LABELS, STATUS_LABELS, WAITING_LABELS
from gateway.outbound.render import LANGUAGES, Renderer
from gateway.tokens import reply_address
from store.models import Outbox, Person, Ticket, TicketMessage, utcnow
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
class Notifier:
    config: Config
    renderer: Renderer

    def language_for(self, affected: Person) -> str:
        """The Affected Person's language, else the config's default, else English."""
        for lang in (affected.language, self.config.gateway.default_language):
            if lang in LANGUAGES:
                return lang
        return "en"

    def context(self, session: Session, ticket: Ticket, recipient: Person, lang: str, extra: dict | None) -> dict:
        tr = self.renderer.translations(lang)
        ctx = {
            "ticket": ticket,
            "recipient": recipient,
            "helpdesk": {"name": self.config.gateway.name, "address": self.config.helpdesk_address},
            "process_label": tr.gettext(PROCESS_LABELS.get(ticket.process, ticket.process)),
            "status_label": tr.gettext(STATUS_LABELS.get(ticket.status, ticket.status)),
            "waiting_label": tr.gettext(WAITING_LABELS[ticket.waiting_reason]) if ticket.waiting_reason else "",
            "latest_update": latest_public_update(session, ticket) or "",
        }
        ctx.update(extra or {})
        return ctx

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
    ) -> Outbox | None:
        """Render ``event`` for ``ticket`` and add it to the outbox (not committed here)."""
        now = now or utcnow()
        reporter = session.get(Person, ticket.reporting_person_id)
        affected = session.get(Person, ticket.affected_person_id)
        people: list[Person] = []
        for person in only or [reporter, affected]:
            if person is not None and person.id not in [p.id for p in people]:
                people.append(person)
        skipped = [p.email for p in people if p.undeliverable]
        people = [p for p in people if not p.undeliverable]
        if skipped:
            log.info("%s: %s not mailed to undeliverable %s", ticket.number, event, ", ".join(skipped))
        if not people:
            return None
        lang = self.language_for(affected or people[0])
        # The affected person's name in the greeting when they are among the recipients.
        greeted = affected if affected in people else people[0]
        mail = self.renderer.render_safe(event, lang, self.context(session, ticket, greeted, lang, extra))

        thread = list(
            session.exec(
                select(TicketMessage.message_id)
                .where(TicketMessage.ticket_id == ticket.id, col(TicketMessage.message_id).is_not(None))
                .order_by(col(TicketMessage.created_at), col(TicketMessage.id))
            )
        )
        if in_reply_to and in_reply_to not in thread:
            # The mail being answered is not (yet) a message of the ticket: still chain to it.
            thread.append(in_reply_to)
        references = thread_references(thread)
        if in_reply_to is None and references:
            in_reply_to = references[-1]
        message_id = new_message_id(self.config.message_id_domain)
        topic = stable_subject(ticket.number, ticket.title)
        envelope = Envelope(
            from_name=self.config.gateway.name,
            from_addr=self.config.helpdesk_address,
            to=tuple((p.name, p.email) for p in people),
            reply_to=reply_address(self.config.gateway.secret, self.config.helpdesk_address, ticket.number),
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
        )
        msg = build_message(mail, envelope)
        row = Outbox(
            ticket_id=ticket.id,
            event=event,
            recipients=",".join(p.email for p in people),
            language=lang,
            subject=str(msg["Subject"]),
            message_id=message_id,
            raw=msg.as_bytes(),
            created_at=now,
            next_attempt_at=now,
        )
        session.add(row)
        session.flush()
        session.add(
            TicketMessage(
                ticket_id=ticket.id,
                direction="out",
                from_addr=self.config.helpdesk_address,
                to_addrs=row.recipients,
                subject=row.subject,
                body_text=mail.text,
                message_id=message_id,
                outbox_id=row.id,
                created_at=now,
            )
        )
        return row

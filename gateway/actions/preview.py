"""What ``gateway templates preview`` shows: the mail a customer gets, byte for byte but
its Date and Message-ID (and the time in Outlook's Thread-Index), because it is made as
the outbox makes it: the row ``store.notifications`` would queue (``plan``;
``notice_values`` for a mail about no ticket), composed by ``Notifier.compose`` as the
deliverer composes it, never by a copy of either.

On a real ticket it is the next mail of the event for that ticket, as it stands: its
thread, its people, its language.  On sample data it is the same, for a sample ticket
kept in a database in memory for the time of the preview: the customer's first mail, our
confirmation, an agent's public comment, and the customer's answer for the events that
answer one, in the status the event is sent in (``notify.SAMPLE_STATUS``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, col, create_engine, select

from gateway.ingest.answers import first_statement
from gateway.outbound.notify import (SAMPLE_NOW, Composed, Notifier, sample_extra, sample_texts,
                                     sample_ticket)
from gateway.outbound.render import ANSWERS, TICKETLESS
from store import lifecycle
from store.models import Outbox, Person, Ticket, TicketMessage
from store.notifications import notice_values, plan
from store.tickets import get_ticket


class NobodyToMail(Exception):
    """Every recipient of the ticket is undeliverable."""


def preview_sample(notifier: Notifier, event: str, lang: str, waiting_reason: str | None = None) -> Composed:
    """The mail of ``event`` in ``lang`` on the sample ticket."""
    settings = notifier.config.notice_settings()
    if event in TICKETLESS:
        ticket, person = sample_ticket(event, waiting_reason, lang)
        values = notice_values(settings, event, to=(person.name, person.email), language=lang,
                               in_reply_to="sample-1@client.example", now=SAMPLE_NOW,
                               extra=sample_extra(event, ticket, person, lang))
        return notifier.compose(Outbox(**values), safe=False)
    engine = create_engine("sqlite://", poolclass=StaticPool)
    try:
        SQLModel.metadata.create_all(engine)
        with Session(engine, expire_on_commit=False) as session:
            ticket, in_reply_to, extra = _sample_ticket(session, notifier, event, lang, waiting_reason)
            rows = plan(session, settings, ticket, event, in_reply_to=in_reply_to,
                        auto_submitted="auto-replied" if in_reply_to else "auto-generated",
                        extra=extra, now=SAMPLE_NOW + timedelta(hours=2))
    finally:
        engine.dispose()
    return notifier.compose(Outbox(**rows[-1]), safe=False)  # the sample person is deliverable


def _sample_ticket(session: Session, notifier: Notifier, event: str, lang: str,
                   waiting_reason: str | None) -> tuple[Ticket, str | None, dict]:
    texts = sample_texts(lang)
    ticket, person = sample_ticket(event, waiting_reason, lang)
    person.id = None
    session.add(person)
    session.flush()
    ticket.reporting_person_id = ticket.affected_person_id = person.id
    session.add(ticket)
    session.flush()
    helpdesk = notifier.config.helpdesk_address

    def message(minutes: int, direction: str, body: str, message_id: str | None, internal: bool = False):
        session.add(TicketMessage(ticket_id=ticket.id, direction=direction, internal=internal,
                                  from_addr=person.email if direction == "in" else helpdesk,
                                  to_addrs=helpdesk if direction == "in" else person.email, subject=ticket.title,
                                  body_text=body, message_id=message_id,
                                  created_at=SAMPLE_NOW + timedelta(minutes=minutes)))

    message(0, "in", ticket.description, "sample-1@client.example")
    if event in ("new", "closed-new-ticket"):
        session.flush()
        return ticket, "sample-1@client.example", sample_extra(event, ticket, person, lang)
    message(1, "out", "", f"sample-2@{notifier.config.message_id_domain}")
    message(30, "note", texts["update"], None)
    if ticket.waiting_reason == "rfc":
        session.add(Ticket(number="CHG-000042", process="change", status=lifecycle.IN_PROGRESS, title=ticket.title,
                           reporting_person_id=person.id, affected_person_id=person.id,
                           linked_ticket_id=ticket.id, created_at=SAMPLE_NOW))
    in_reply_to = None
    if event in ANSWERS:
        answer = {"approval-recorded": texts["approve"], "approval-unclear": texts["unclear"]}.get(event, "")
        message(60, "in", answer, "sample-3@client.example", internal=event == "reopen-needs-comment")
        in_reply_to = "sample-3@client.example"
    session.flush()
    return ticket, in_reply_to, sample_extra(event, ticket, person, lang)


def preview_ticket(notifier: Notifier, session: Session, number: str, event: str,
                   now: datetime | None = None) -> Composed:
    """The next mail of ``event`` for ticket ``number``, as it stands, as its Affected
    Person gets it; writes nothing (the caller rolls the session back).  Raises
    store.tickets.NotFound, NobodyToMail."""
    ticket = get_ticket(session, number)
    messages = list(session.exec(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id)
                                 .order_by(col(TicketMessage.created_at), col(TicketMessage.id))))
    received = [m for m in messages if m.direction == "in"]
    answers = event in ANSWERS or (event == "new" and bool(messages) and messages[0].direction == "in")
    in_reply_to = received[-1].message_id if answers and received else None
    rows = plan(session, notifier.config.notice_settings(), ticket, event, in_reply_to=in_reply_to,
                auto_submitted="auto-replied" if answers else "auto-generated",
                extra=_extra(session, ticket, event, received), now=now)
    if not rows:
        raise NobodyToMail(f"{ticket.number}: nobody to mail (every recipient is undeliverable)")
    # The Affected Person's copy (the last: the Reporting Person's comes first).
    return notifier.compose(Outbox(**rows[-1]), safe=False)


def _extra(session: Session, ticket: Ticket, event: str, received: list[TicketMessage]) -> dict:
    """What ingest queues with the events that answer a mail (gateway.ingest.decide.reply_effects), read from
    the ticket: its latest mail received is the answer."""
    answer = received[-1].body_text if received else ""
    affected = session.get(Person, ticket.affected_person_id)
    if event == "approval-recorded":
        return {"decision": "refused" if ticket.status == lifecycle.REJECTED else "approved",
                "approver": (affected.name or affected.email) if affected else "",
                "approver_address": affected.email if affected else "", "answer": answer}
    if event == "approval-unclear":
        return {"statement": first_statement(answer)}
    if event == "closed-new-ticket":
        closed = session.get(Ticket, ticket.linked_ticket_id) if ticket.linked_ticket_id else None
        return {"closed_ticket": closed or ticket}
    return {}

"""What an agent does to tickets (the phone channel and the service desk's hands).

Each operation is one transaction: the ticket change, its history row and the mail it
sends (queued in the outbox by ``store.notifications.queue``, rendered later by the
deliverer) are committed together or not at all.  A refused move raises
``LifecycleError`` and changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session, select

from gateway import metrics
from store import audit, lifecycle, webhooks
from store.db import PROCESS_PREFIX, session_for
from store.lifecycle import LifecycleError, StatusData
from store.models import Attachment, Person, Ticket, TicketMessage, utcnow
from store.notifications import Queued, queue
from store.tickets import change_status, create_ticket as store_create_ticket, get_or_create_person, get_ticket, \
    solved_due

log = logging.getLogger("gateway.lifecycle")


@dataclass(frozen=True)
class Done:
    """The result of an agent operation, for the command line and scripts."""

    number: str
    status: str
    mails: tuple[str, ...] = ()  # events queued, e.g. ("waiting",)
    recipients: tuple[str, ...] = ()
    linked: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"number": self.number, "status": self.status, "mails": list(self.mails),
                "recipients": list(self.recipients), "linked": self.linked, **self.extra}


@dataclass(frozen=True)
class Actor:
    """Who acts through a face that writes the audit log (the API: ``token:NAME``) and
    from which client address; written in the transaction of the change."""

    name: str
    client: str = ""


def _audit(session: Session, actor: Actor | None, action: str, target: str, before=None, after=None) -> None:
    if actor is not None:
        audit.record(session, actor.name, action, target, before=before, after=after, client=actor.client)


@dataclass(frozen=True)
class NewFile:
    """A file given with a comment: its name (cleaned as a mail's attachment's), type and bytes."""

    filename: str
    content_type: str
    data: bytes


def _queued(copies: list[Queued]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The events queued (once each, in order) and their recipients."""
    events = tuple(dict.fromkeys(c.event for c in copies))
    people = tuple(dict.fromkeys(c.recipient for c in copies))
    return events, people


def _check_email(value: str, what: str) -> str:
    value = (value or "").strip()
    local, _, domain = value.rpartition("@")
    if not local or "." not in domain:
        raise LifecycleError(f"{what}: {value!r} is not an e-mail address")
    return value


def create_ticket(app, *, process: str, reporter: str, title: str, description: str, affected: str | None = None,
                  reference: str | None = None, by: str = "agent", now: datetime | None = None,
                  actor: Actor | None = None, within=None) -> Done:
    """Register a ticket given by phone (or typed in by an agent, or by the customer on
    the web) and send the confirmation.  ``within(session, ticket)``, when given, adds to
    the same transaction (the web's first message and its files).

    Unknown people are created with no language, so that their company's or the
    config's default language applies until one is set."""
    if process not in PROCESS_PREFIX:
        raise LifecycleError(f"unknown process {process!r}; one of {', '.join(PROCESS_PREFIX)}")
    if not (title or "").strip():
        raise LifecycleError("a ticket needs a title")
    if not (description or "").strip():
        raise LifecycleError("a ticket needs a description")
    reporter = _check_email(reporter, "reporter")
    affected = _check_email(affected, "affected person") if affected else None
    reference = (reference or "").strip().strip("#").strip() or None
    now = now or utcnow()
    with session_for(app.engine) as session:
        reporting, _ = get_or_create_person(session, reporter, language="")
        affected_person = get_or_create_person(session, affected, language="")[0] if affected else reporting
        ticket = store_create_ticket(session, process=process, title=title, description=description.strip(),
                                     reporter=reporting, affected=affected_person, reference=reference,
                                     reference_source="agent" if reference else None, by=by, now=now)
        if within is not None:
            within(session, ticket)
        copies = queue(session, app.notices, ticket, "new", now=now)
        webhooks.queue(session, app.config.webhooks, "ticket.created",
                       webhooks.ticket_data(ticket, channel="phone", by=by), now=now)
        _audit(session, actor, "ticket.create", ticket.number,
               after={"process": process, "reporter": reporter, "affected": affected, "title": title})
        session.commit()
        metrics.ticket_created(process)
        mails, people = _queued(copies)
        log.info("%s created by %s (%s)", ticket.number, by, process, extra={"ticket": ticket.number})
        return Done(ticket.number, ticket.status, mails, people)


def _locked(session: Session, number: str) -> Ticket:
    """The ticket, locked until the commit: two agents (or an agent and the automatic
    close) moving the same ticket take turns, and the second sees the first's status.
    (SQLite's BEGIN IMMEDIATE already serialises writers; PostgreSQL needs FOR UPDATE.)"""
    ticket = session.exec(select(Ticket).where(Ticket.number == number.strip().upper()).with_for_update()).first()
    if ticket is None:
        get_ticket(session, number)  # raises NotFound with the usual message
    return ticket


def _move(app, session: Session, ticket: Ticket, target: str, data: StatusData, *, by: str,
          now: datetime) -> list[Queued]:
    """Change the status and queue its mail, in ``session`` (the caller commits)."""
    change = change_status(session, ticket, target, data, by=by, now=now)
    webhooks.queue(session, app.config.webhooks, "ticket.status_changed",
                   webhooks.ticket_data(ticket, from_status=change.from_status, to_status=change.to_status, by=by),
                   now=now)
    if change.from_status == lifecycle.SOLVED and change.to_status == lifecycle.IN_PROGRESS:
        # The manual's mandatory comment when a solution is refused is part of the ticket.
        session.add(TicketMessage(ticket_id=ticket.id, direction="note", internal=False, from_addr=by,
                                  body_text=data.note or "", created_at=now))
    event = lifecycle.NOTIFIED.get(change.to_status)
    if event is None:
        return []
    session.flush()
    return queue(session, app.notices, ticket, event, now=now)


def set_status(app, number: str, status: str, data: StatusData, *, by: str = "agent",
               now: datetime | None = None, actor: Actor | None = None) -> Done:
    """Move ticket ``number`` to ``status`` with ``data``; mail the customer when the
    manual says so, in the same transaction."""
    now = now or utcnow()
    with session_for(app.engine) as session:
        ticket = _locked(session, number)
        before = ticket.status
        copies = _move(app, session, ticket, status, data, by=by, now=now)
        _audit(session, actor, "ticket.status", ticket.number, before={"status": before},
               after={"status": ticket.status, **{k: v for k, v in vars(data).items() if v is not None}})
        session.commit()
        mails, people = _queued(copies)
        log.info("%s -> %s by %s%s", ticket.number, ticket.status, by,
                 f" (mailed {', '.join(people)})" if people else "")
        return Done(ticket.number, ticket.status, mails, people)


def comment(app, number: str, text: str, *, internal: bool = False, by: str = "agent",
            now: datetime | None = None, files: list[NewFile] | tuple = (), actor: Actor | None = None) -> Done:
    """Add a comment: public ones are shown to the customer as the latest update (in the
    Waiting and Postponed mails); internal ones never leave the service desk.  ``files``
    are kept as the comment's attachments, under the limits of a mail's."""
    from gateway.ingest.parse import clean_filename

    text = (text or "").strip()
    if not text:
        raise LifecycleError("a comment needs a text")
    limits = app.config.limits
    if len(files) > limits.max_parts:
        raise LifecycleError(f"at most {limits.max_parts} files with a comment ({len(files)} given)")
    total = sum(len(f.data) for f in files)
    if total > app.config.smtp.max_message_size:
        raise LifecycleError(f"the files make {total} bytes, more than a mail may ([smtp] max_message_size, "
                             f"{app.config.smtp.max_message_size} bytes)")
    kept = [(clean_filename(f.filename, f"attachment-{i + 1}.bin"), (f.content_type or "").split(";")[0].strip().lower()
             or "application/octet-stream", app.blobs.put(f.data), len(f.data)) for i, f in enumerate(files)]
    now = now or utcnow()
    with session_for(app.engine) as session:
        ticket = _locked(session, number)
        if ticket.status == lifecycle.CLOSED:
            raise lifecycle.TicketClosed(f"{ticket.number} is Closed: a Closed ticket is final")
        note = TicketMessage(ticket_id=ticket.id, direction="note", internal=internal, from_addr=by,
                             body_text=text, created_at=now)
        session.add(note)
        session.flush()
        for filename, content_type, sha, size in kept:
            session.add(Attachment(message_id=note.id, filename=filename, content_type=content_type, size=size,
                                   sha256=sha))
        ticket.updated_at = now
        session.add(ticket)
        webhooks.queue(session, app.config.webhooks, "ticket.comment_added",
                       webhooks.ticket_data(ticket, internal=internal, by=by, attachments=len(kept)), now=now)
        _audit(session, actor, "ticket.note" if internal else "ticket.comment", ticket.number,
               after={"internal": internal, "attachments": [name for name, *_ in kept]})
        session.commit()
        return Done(ticket.number, ticket.status, extra={"internal": internal, "message_id": note.id})


def convert_to_change(app, number: str, *, by: str = "agent", note: str | None = None,
                      now: datetime | None = None) -> Done:
    """Turn an Incident or Service Request into a Non-Standard Change: a new ``CHG-``
    ticket linked to it, and the original in Waiting with reason ``rfc``."""
    now = now or utcnow()
    with session_for(app.engine) as session:
        original = _locked(session, number)
        if original.process not in lifecycle.CONVERTIBLE_PROCESSES:
            raise LifecycleError(f"{original.number} is a {original.process}: only an Incident or a Service Request "
                                 f"can be converted to a Change")
        existing = session.exec(select(Ticket.number).where(Ticket.linked_ticket_id == original.id,
                                                            Ticket.process == "change")).first()
        if existing:
            raise LifecycleError(f"{original.number} was already converted to {existing}")
        # Refuse before creating anything when the original may not wait.
        data = StatusData(waiting_reason="rfc", note=note)
        lifecycle.check_transition(original.process, original.status, lifecycle.WAITING, data)
        change = store_create_ticket(
            session, process="change", title=original.title,
            description=f"{original.description}\n\n(converted from {original.number})".strip(),
            reporter=session.get(Person, original.reporting_person_id),
            affected=session.get(Person, original.affected_person_id),
            reference=original.personal_reference, reference_source=original.reference_source,
            by=by, linked=original, now=now)
        history_note = note or f"converted to {change.number}"
        change_copies = queue(session, app.notices, change, "new", now=now)
        wait_copies = _move(app, session, original, lifecycle.WAITING,
                            StatusData(waiting_reason="rfc", note=history_note), by=by, now=now)
        session.commit()
        metrics.ticket_created("change")
        mails, people = _queued(wait_copies + change_copies)
        log.info("%s converted to %s by %s", original.number, change.number, by)
        return Done(original.number, original.status, mails, people, linked=change.number)


def close_solved(app, now: datetime | None = None) -> list[str]:
    """Close every Solved ticket whose ``close_after_days`` have passed; return their
    numbers.  Each ticket is its own transaction, so one failure does not hold the rest."""
    now = now or utcnow()
    days = app.config.lifecycle.close_after_days
    with session_for(app.engine) as session:
        due = [t.number for t in solved_due(session, now, days)]
    closed = []
    for number in due:
        try:
            with session_for(app.engine) as session:
                ticket = _locked(session, number)
                if ticket.status != lifecycle.SOLVED:  # reopened meanwhile
                    continue
                _move(app, session, ticket, lifecycle.CLOSED,
                      StatusData(note=f"closed automatically {days} days after Solved"), by="system", now=now)
                session.commit()
                closed.append(number)
        except Exception:
            log.exception("%s: closing failed; will retry on the next run", number)
    if closed:
        log.info("closed %d solved ticket(s): %s", len(closed), ", ".join(closed))
    return closed

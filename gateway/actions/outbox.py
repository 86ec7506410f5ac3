"""Notifications: list, show with every delivery attempt, send again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select

from gateway.errors import NotFound, Refused
from gateway.outbound.outbox import requeue
from store.db import session_for
from store.models import DeliveryAttempt, Outbox, Ticket


def outbox_json(row: Outbox, number: str | None) -> dict:
    return {
        "id": row.id,
        "ticket": number,
        "event": row.event,
        "to": [row.recipient],
        "language": row.language,
        "subject": row.subject,
        "message_id": row.message_id,
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.state == "pending" else None,
        "last_answer": row.last_answer,
    }


def listing(app, *, state: str | None = None, after_id: int | None = None, limit: int | None = None) -> list[dict]:
    """Notifications in id order (oldest first)."""
    with session_for(app.engine) as session:
        query = select(Outbox, Ticket.number).join(Ticket, col(Ticket.id) == col(Outbox.ticket_id), isouter=True)
        if state:
            query = query.where(Outbox.state == state)
        if after_id is not None:
            query = query.where(col(Outbox.id) > after_id)
        query = query.order_by(col(Outbox.id))
        if limit:
            query = query.limit(limit)
        return [outbox_json(o, n) for o, n in session.exec(query)]


def show(app, outbox_id: int) -> dict:
    """One notification with every delivery attempt (``attempts_log``)."""
    with session_for(app.engine) as session:
        row = session.get(Outbox, outbox_id)
        if row is None:
            raise NotFound(f"no outbox mail {outbox_id}")
        ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
        data = outbox_json(row, ticket.number if ticket else None)
        data["attempts_log"] = [
            {"at": a.at.isoformat(), "outcome": a.outcome, "answer": a.answer}
            for a in session.exec(select(DeliveryAttempt).where(DeliveryAttempt.outbox_id == row.id)
                                  .order_by(col(DeliveryAttempt.at), col(DeliveryAttempt.id)))
        ]
        return data


@dataclass(frozen=True)
class Retried:
    """The notifications made pending again, and the ids asked for that are none."""

    ids: list[int]
    missing: list[int]


def retry(app, ids: list[int] | None = None, *, failed: bool = False, now: datetime | None = None) -> Retried:
    """Make notifications pending and due now again, the give-up clock restarted: the
    mails ``ids`` (pending, failed, or sent: an operator may want a copy sent again), or
    every failed one (``failed``).  An id that names no notification is reported, the
    others are sent again."""
    if not failed and not ids:
        raise Refused("name the notifications to send again (ids) or ask for every failed one")
    done = requeue(app.engine, None if failed else list(ids or []), failed=failed, now=now)
    return Retried(done, [] if failed else sorted(set(ids or []) - set(done)))

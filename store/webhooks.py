"""Webhook events: queued in the transaction of the change they tell about (the outbox
pattern of store.notifications); delivered by the deliverer (gateway.outbound.webhooks)
with retries on a schedule, at least once, with the same id every attempt.

Each event is signed as the Standard Webhooks specification says
(https://www.standardwebhooks.com): the headers ``webhook-id`` (the event's id, the same
on every attempt: a receiver drops what it has seen), ``webhook-timestamp`` (Unix
seconds of this attempt) and ``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256,
keyed with the base64-decoded secret after ``whsec_``, of ``id.timestamp.body``).
The body is JSON: ``{"type": ..., "timestamp": ..., "data": {...}}``.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from datetime import datetime

from sqlmodel import Session, col, select

from store.models import WebhookEvent, utcnow

EVENTS = ("ticket.created", "ticket.status_changed", "ticket.comment_added", "mail.quarantined",
          "notification.failed")
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def queue(session: Session, hooks, event: str, data: dict, now: datetime | None = None) -> list[str]:
    """One event for every configured webhook that asked for ``event``, in ``session``
    (the caller commits it with the change).  Returns the events' ids."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    wanted = [hook for hook in hooks if event in hook.events]
    if not wanted:
        return []
    now = now or utcnow()
    body = json.dumps({"type": event, "timestamp": now.isoformat(), "data": data}, ensure_ascii=False,
                      separators=(",", ":"), default=str)
    ids = []
    for hook in wanted:
        event_id = "msg_" + secrets.token_urlsafe(18)
        session.add(WebhookEvent(event_id=event_id, url=hook.url, event=event, payload=body, created_at=now,
                                 next_attempt_at=now))
        ids.append(event_id)
    return ids


def listing(session: Session, state: str | None = None, limit: int = 100) -> list[WebhookEvent]:
    query = select(WebhookEvent)
    if state:
        query = query.where(WebhookEvent.state == state)
    return list(session.exec(query.order_by(col(WebhookEvent.id).desc()).limit(limit)))


def counts(session: Session) -> dict[str, int]:
    """Events by state (pending, delivered, failed), for /metrics."""
    from sqlalchemy import func

    found = Counter({state: 0 for state in (PENDING, DELIVERED, FAILED)})
    for state, n in session.exec(select(WebhookEvent.state, func.count()).group_by(WebhookEvent.state)):
        found[state] = n
    return dict(found)


def ticket_data(ticket, **extra) -> dict:
    """What every ticket event says of its ticket (no description, no mail text)."""
    return {"ticket": {"number": ticket.number, "process": ticket.process, "status": ticket.status,
                       "title": ticket.title}, **extra}


def mail_processed(session: Session, hooks, inbound_id: int, outcome: str, ticket_number: str | None,
                   detail: str | None) -> None:
    """The events of a processed mail, in the processing's transaction: ticket.created
    for a mail that opened a ticket, mail.quarantined for one held for a person."""
    if not hooks:
        return
    if outcome == "quarantined":
        queue(session, hooks, "mail.quarantined", {"inbound_id": inbound_id, "reason": detail})
    elif outcome in ("created", "new-from-closed") and ticket_number:
        from store.models import Ticket

        ticket = session.exec(select(Ticket).where(Ticket.number == ticket_number)).first()
        if ticket is not None:
            queue(session, hooks, "ticket.created", ticket_data(ticket, channel="mail", inbound_id=inbound_id))

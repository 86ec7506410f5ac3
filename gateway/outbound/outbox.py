"""The outbox worker: sends what the outbox holds, records each attempt, retries on a schedule.

Delivery is at-least-once: a crash between the relay's 250 and the commit of ``sent``
sends the mail again at the next run, with the same Message-ID (stored in the row's
raw bytes), so that clients and relays can drop the copy.  Losing a notification is
worse than a duplicate that carries the same Message-ID.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from gateway.config import Config
from gateway.outbound.transports import SendResult, Transport
from store.db import session_for
from store.models import DeliveryAttempt, Outbox, utcnow

log = logging.getLogger("gateway.outbound")


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[int, ...]
    give_up_after: int

    @classmethod
    def from_config(cls, config: Config) -> "RetryPolicy":
        return cls(config.outbound.retry_schedule, config.outbound.give_up_after)

    def next_attempt(self, attempts: int, first_attempt: datetime, now: datetime) -> datetime | None:
        """When to try again after ``attempts`` failed tries; None to give up."""
        delay = self.schedule[min(attempts - 1, len(self.schedule) - 1)]
        when = now + timedelta(seconds=delay)
        if when > first_attempt + timedelta(seconds=self.give_up_after):
            return None
        return when


def _aware(dt: datetime) -> datetime:
    from datetime import timezone

    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def deliver_pending(
    engine: Engine, config: Config, transport: Transport, *, now: datetime | None = None, limit: int = 100
) -> list[tuple[int, SendResult]]:
    """Try every pending mail that is due; return (outbox id, result) for each."""
    now = now or utcnow()
    policy = RetryPolicy.from_config(config)
    with session_for(engine) as session:
        due = list(
            session.exec(
                select(Outbox.id)
                .where(Outbox.state == "pending", col(Outbox.next_attempt_at) <= now)
                .order_by(col(Outbox.next_attempt_at), col(Outbox.id))
                .limit(limit)
            )
        )
    if not due:
        return []
    results: list[tuple[int, SendResult]] = []
    with transport:
        for outbox_id in due:
            with session_for(engine) as session:
                row = session.get(Outbox, outbox_id)
                if row is None or row.state != "pending":
                    continue
                recipients = [r for r in row.recipients.split(",") if r]
                result = transport.send(config.helpdesk_address, recipients, row.raw, f"{row.id:06d}-{row.message_id}")
                first = session.exec(
                    select(DeliveryAttempt.at).where(DeliveryAttempt.outbox_id == row.id).order_by(col(DeliveryAttempt.at))
                ).first()
                session.add(DeliveryAttempt(outbox_id=row.id, at=now, outcome=result.outcome, answer=result.answer))
                row.attempts += 1
                row.last_answer = result.answer
                if result.outcome == "sent":
                    row.state = "sent"
                    row.sent_at = now
                elif result.outcome == "permanent":
                    row.state = "failed"
                else:
                    when = policy.next_attempt(row.attempts, _aware(first) if first else now, now)
                    if when is None:
                        row.state = "failed"
                        row.last_answer = f"gave up after {row.attempts} attempts: {result.answer}"
                    else:
                        row.next_attempt_at = when
                session.add(row)
                session.commit()
                log.info("outbox %s %s <%s> ticket=%s: %s %s", row.id, row.event, row.message_id, row.ticket_id,
                         result.outcome, result.answer)
                results.append((outbox_id, result))
    return results

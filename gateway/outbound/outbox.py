"""The outbox worker: sends what the outbox holds, records each attempt, retries on a schedule.

Failures are classified once, in the transport: a 4xx, a refused or dropped connection or
a timeout is temporary and the mail is tried again after the next delay of
``outbound.retry_schedule`` (the last delay repeats), until ``outbound.give_up_after``
seconds after it was queued; a 5xx is permanent and the mail is failed at once.  Every
attempt is a ``DeliveryAttempt`` row with the server's answer.

At least once, at most twice
----------------------------
No database transaction is open while the relay is talking: the row is read, the
transaction ends, the mail is sent, and the outcome is committed in a new transaction.
If the process dies (or the commit fails) after the relay's ``250`` and before that
commit, the row is still ``pending`` and the next run sends the mail again, byte for
byte: the same raw message, hence the same Message-ID, so relays and clients that drop
duplicates by Message-ID (Gmail, Exchange, Thunderbird's duplicate filter) show it once.
The other choice, marking the row ``sending`` before talking to the relay, would make a
crash at the same moment lose the notification or leave it for an operator to guess
about; for a service desk a duplicate confirmation is cheap and a lost one is not.
The window is one mail wide (the commit follows each send), so a crash repeats one mail,
never a batch.  When the commit fails and the process lives on (database locked or
gone), the result is kept on the transport (``Transport.unrecorded``) and committed at
the next run without sending again, so a sick database never turns into a mail sent
at every run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from gateway import metrics
from gateway.config import Config
from gateway.outbound.transports import SendResult, Transport
from gateway.tokens import bounce_address
from store.addresses import key as address_key
from store.db import session_for
from store.models import DeliveryAttempt, Outbox, Person, aware, utcnow

log = logging.getLogger("gateway.outbound")

# A DeliveryAttempt with this outcome records that an operator asked for a new try; the
# give-up deadline counts from it.
REQUEUED = "requeued"
# The answer of an attempt that never reached the relay (every recipient undeliverable):
# the relay's health (gateway.health) leaves it out.
NOT_SENT = "not sent: "


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[int, ...]
    give_up_after: int

    @classmethod
    def from_config(cls, config: Config) -> "RetryPolicy":
        return cls(tuple(config.outbound.retry_schedule) or (300,), config.outbound.give_up_after)

    def next_attempt(self, attempts: int, queued_at: datetime, now: datetime) -> datetime | None:
        """When to try again after ``attempts`` failed tries; None to give up.

        The delay is the schedule's entry for this failure (the last one repeats).  A mail
        is not given up before its deadline: when the next delay would pass it, one last
        try is made at the deadline itself (as an MTA bounces on the first failure after
        its queue lifetime, not before)."""
        delay = self.schedule[min(max(attempts, 1) - 1, len(self.schedule) - 1)]
        deadline = queued_at + timedelta(seconds=self.give_up_after)
        if now >= deadline:
            return None
        return min(now + timedelta(seconds=delay), deadline)


@dataclass(frozen=True)
class Delivery:
    """One due mail, read in a short transaction and sent outside any."""

    outbox_id: int
    message_id: str
    ticket_id: int | None
    event: str
    recipients: tuple[str, ...]
    skipped: tuple[str, ...]  # undeliverable persons, never sent to
    raw: bytes
    queued_at: datetime | None = None  # for the delivery-time metric


def _undeliverable(session: Session, recipients: list[str]) -> set[str]:
    if not recipients:
        return set()
    normalized = {address_key(r): r for r in recipients}
    rows = session.exec(
        select(Person.email).where(col(Person.email).in_(list(normalized)), col(Person.undeliverable).is_(True))
    )
    return {normalized[e] for e in rows if e in normalized}


def _load_due(engine: Engine, now: datetime, limit: int) -> list[Delivery]:
    """The pending mails due at ``now``, oldest first, with their recipients checked: one
    read for the batch (a read a mail cost four round trips on PostgreSQL)."""
    with session_for(engine) as session:
        rows = list(session.exec(
            select(Outbox)
            .where(Outbox.state == "pending", col(Outbox.next_attempt_at) <= now)
            .order_by(col(Outbox.next_attempt_at), col(Outbox.id))
            .limit(limit)))
        if not rows:
            return []
        recipients = {row.id: [r for r in row.recipients.split(",") if r] for row in rows}
        # An address can become undeliverable after its mail was queued (a hard bounce of
        # an earlier mail): checked here, at sending time, not only when queueing.
        skipped = _undeliverable(session, sorted({r for rs in recipients.values() for r in rs}))
        return [Delivery(
            outbox_id=row.id,
            message_id=row.message_id,
            ticket_id=row.ticket_id,
            event=row.event,
            recipients=tuple(r for r in recipients[row.id] if r not in skipped),
            skipped=tuple(r for r in recipients[row.id] if r in skipped),
            raw=row.raw,
            queued_at=aware(row.created_at),
        ) for row in rows]


def _queued_at(session: Session, row: Outbox) -> datetime:
    """Start of the give-up clock and of the schedule: queueing, or the latest operator retry."""
    requeued = session.exec(
        select(func.max(DeliveryAttempt.at)).where(
            DeliveryAttempt.outbox_id == row.id, DeliveryAttempt.outcome == REQUEUED
        )
    ).first()
    return max(aware(d) for d in (requeued, row.created_at) if d is not None)


def _failures_since(session: Session, row: Outbox, since: datetime) -> int:
    attempts = session.exec(
        select(DeliveryAttempt.at).where(DeliveryAttempt.outbox_id == row.id, DeliveryAttempt.outcome != REQUEUED)
    )
    return sum(1 for at in attempts if aware(at) >= since)


def record(engine: Engine, policy: RetryPolicy, delivery: Delivery, result: SendResult, now: datetime) -> str:
    """Commit the outcome of one attempt: the attempt row and the outbox row's new state;
    return that state."""
    if result.outcome == "sent" and not result.retry:
        # The common case, as two statements (the unit of work's read and flush of the row
        # cost more than sending on PostgreSQL).  The row is pending while only this
        # process delivers; an operator's retry of a sent mail makes it pending again.
        with engine.begin() as conn:
            conn.execute(_ATTEMPT, dict(outbox_id=delivery.outbox_id, at=now, outcome="sent", answer=result.answer))
            conn.execute(_SENT, dict(b_id=delivery.outbox_id, last_answer=result.answer, sent_at=now))
        return "sent"
    with session_for(engine) as session:
        row = session.get(Outbox, delivery.outbox_id)
        assert row is not None
        session.add(DeliveryAttempt(outbox_id=row.id, at=now, outcome=result.outcome, answer=result.answer))
        row.attempts += 1
        row.last_answer = result.answer
        if result.outcome == "sent" and result.retry:
            # Some recipients were refused for now: the mail stays pending for them only.
            row.recipients = ",".join(result.retry)
            result = SendResult("temporary", result.answer)
        if result.outcome == "sent":
            row.state = "sent"
            row.sent_at = now
        elif result.outcome == "permanent":
            row.state = "failed"
        else:
            session.flush()
            queued_at = _queued_at(session, row)
            when = policy.next_attempt(_failures_since(session, row, queued_at), queued_at, now)
            if when is None:
                row.state = "failed"
                row.last_answer = f"gave up after {row.attempts} attempts: {result.answer}"
            else:
                row.next_attempt_at = when
        session.add(row)
        session.commit()
        return row.state


_ATTEMPT = insert(DeliveryAttempt.__table__)
_OUTBOX = Outbox.__table__
_SENT = (update(_OUTBOX).where(_OUTBOX.c.id == bindparam("b_id"))
         .values(state="sent", attempts=_OUTBOX.c.attempts + 1, last_answer=bindparam("last_answer"),
                 sent_at=bindparam("sent_at")))


def _skip_all(engine: Engine, delivery: Delivery, now: datetime) -> None:
    with session_for(engine) as session:
        row = session.get(Outbox, delivery.outbox_id)
        assert row is not None
        answer = f"{NOT_SENT}every recipient is undeliverable ({', '.join(delivery.skipped)})"
        session.add(DeliveryAttempt(outbox_id=row.id, at=now, outcome="permanent", answer=answer))
        row.state = "failed"
        row.last_answer = answer
        session.add(row)
        session.commit()


def deliver_pending(
    engine: Engine, config: Config, transport: Transport, *, now: datetime | None = None, limit: int = 100
) -> list[tuple[int, SendResult]]:
    """Try every pending mail that is due at ``now``; return (outbox id, result) for each tried.

    ``now`` is the clock: tests pass it to check the retry times without sleeping.  The
    transport's connection is opened once for the batch.  A failure to reach the relay at
    all ends the batch (the rest stays due for the next run) rather than waiting out a
    timeout per mail."""
    now = aware(now or utcnow())
    policy = RetryPolicy.from_config(config)
    results: list[tuple[int, SendResult]] = []
    # First what was sent but not recorded by an earlier run of this process.
    for outbox_id, (delivery, result, at) in list(transport.unrecorded.items()):
        record(engine, policy, delivery, result, at)  # still failing: raise, send nothing
        del transport.unrecorded[outbox_id]
        log.info("outbox %s <%s>: recorded late: %s %s", outbox_id, delivery.message_id, result.outcome,
                 result.answer)
        results.append((outbox_id, result))
    due = _load_due(engine, now, limit)
    if not due:
        return results
    with transport:
        for delivery in due:
            outbox_id = delivery.outbox_id
            if not delivery.recipients:
                _skip_all(engine, delivery, now)
                metrics.notification("failed")
                log.info("outbox %s %s <%s>: failed, every recipient undeliverable", outbox_id, delivery.event,
                         delivery.message_id)
                continue
            if delivery.skipped:
                log.info("outbox %s <%s>: not sent to undeliverable %s", outbox_id, delivery.message_id,
                         ", ".join(delivery.skipped))
            sender = (bounce_address(config.gateway.secret, config.helpdesk_address, outbox_id)
                      if config.outbound.verp else config.helpdesk_address)
            result = transport.send(sender, list(delivery.recipients), delivery.raw,
                                    f"{outbox_id:06d}-{delivery.message_id}")
            answered_at = utcnow()
            try:
                state = record(engine, policy, delivery, result, now)
            except Exception:
                transport.unrecorded[outbox_id] = (delivery, result, now)
                log.exception("outbox %s <%s> ticket=%s: %s but not recorded; recorded at the next run, "
                              "not sent again", outbox_id, delivery.message_id, delivery.ticket_id, result.outcome)
                raise
            log.info("outbox %s %s <%s> ticket=%s: %s (%s) %s", outbox_id, delivery.event, delivery.message_id,
                     delivery.ticket_id, result.outcome, state, result.answer,
                     extra={"outbox_id": outbox_id, "message_id": delivery.message_id, "outcome": state})
            # Sent, failed for good, or kept to be retried (a 4xx, or some recipients
            # refused for now): the relay's 250 times the wait since queueing.
            metrics.notification("retried" if state == "pending" else state,
                                 (answered_at - delivery.queued_at).total_seconds()
                                 if state == "sent" and delivery.queued_at else None)
            results.append((outbox_id, result))
            if result.connection:
                log.warning("relay unreachable; the rest of the batch waits for the next run: %s", result.answer)
                break
    return results


def requeue(engine: Engine, outbox_ids: list[int] | None = None, *, failed: bool = False,
            now: datetime | None = None) -> list[int]:
    """Make mails pending and due now again (``gateway outbox retry``); return their ids.

    ``outbox_ids``: these mails (pending, failed, or sent: an operator may want a copy sent
    again); ``failed``: every failed mail.  The give-up clock restarts at ``now``."""
    now = aware(now or utcnow())
    with session_for(engine) as session:
        query = select(Outbox)
        if failed:
            query = query.where(Outbox.state == "failed")
        else:
            query = query.where(col(Outbox.id).in_(outbox_ids or []))
        rows = list(session.exec(query.order_by(col(Outbox.id))))
        for row in rows:
            session.add(DeliveryAttempt(outbox_id=row.id, at=now, outcome=REQUEUED,
                                        answer=f"sent again on request (was {row.state})"))
            row.state = "pending"
            row.next_attempt_at = now
            row.sent_at = None
            session.add(row)
        session.commit()
        return [row.id for row in rows]

"""The outbox worker: sends what the outbox holds, records each attempt, retries on a schedule.

A row is one copy for one recipient, queued with what it says (store.notifications);
before its first attempt the row is rendered (gateway.outbound.notify) and its bytes
kept, so every attempt sends the same message.  Rows are claimed before they are sent
(``claimed_by``/``claimed_until``: PostgreSQL's SKIP LOCKED and a lease), so several
deliverers — several instances on one database — never send a row at once, and a dead
deliverer's rows are taken over; a row is marked sent in the transaction that ends its
claim.

Failures are classified once, in the transport: a 4xx, a refused or dropped connection or
a timeout is temporary and the mail is tried again after the next delay of
``outbound.retry_schedule`` (the last delay repeats), until ``outbound.give_up_after``
seconds after it was queued; a 5xx is permanent and the mail is failed at once.  Every
attempt is a ``DeliveryAttempt`` row with the server's answer.

At least once, at most twice
----------------------------
No database transaction is open while the relay is talking: the row is claimed, the
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
import os
import select as select_module
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from gateway import metrics
from gateway.config import Config
from gateway.outbound.transports import SendResult, Transport
from gateway.tokens import bounce_address
from store.addresses import key as address_key
from store.db import session_for
from gateway.heartbeat import MISSED_BEATS
from store.models import DeliveryAttempt, Outbox, Person, ServiceProcess, Ticket, TicketMessage, aware, utcnow
from store.vocabulary import FAILED, PENDING, SENT

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
    """One due mail, claimed in a short transaction and sent outside any."""

    outbox_id: int
    message_id: str
    ticket_id: int | None
    event: str
    recipient: str
    undeliverable: bool  # the person was marked undeliverable since the mail was queued
    raw: bytes
    queued_at: datetime | None = None  # for the delivery-time metric


# A claimed row is this deliverer's until then; one that dies leaves its rows to another
# once the lease ends (a restarted deliverer on the same host takes its dead
# predecessor's at once: release_dead_claims).  Longer than a batch of CLAIM_BATCH mails
# against a slow relay, whose rows are given back as soon as the batch ends.
CLAIM_LEASE = timedelta(minutes=15)
CLAIM_BATCH = 20


def holder() -> str:
    """This process as a claim names it: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(engine: Engine, now: datetime, limit: int, me: str) -> list[Outbox]:
    """Claim the due rows, oldest first, up to ``limit``: rows another deliverer holds
    are skipped (PostgreSQL: SKIP LOCKED, then the lease; SQLite has one writer at a time)."""
    with session_for(engine) as session:
        ids = list(session.exec(
            select(Outbox.id)
            .where(Outbox.state == PENDING, col(Outbox.next_attempt_at) <= now,
                   or_(col(Outbox.claimed_until).is_(None), col(Outbox.claimed_until) < now))
            .order_by(col(Outbox.next_attempt_at), col(Outbox.id))
            .limit(limit)
            .with_for_update(skip_locked=True)))
        if not ids:
            return []
        session.execute(update(_OUTBOX).where(_OUTBOX.c.id.in_(ids))
                        .values(claimed_by=me, claimed_until=now + CLAIM_LEASE))
        rows = list(session.exec(select(Outbox).where(col(Outbox.id).in_(ids))
                                 .order_by(col(Outbox.next_attempt_at), col(Outbox.id))))
        session.commit()
        return rows


def _release(engine: Engine, outbox_ids: list[int], me: str) -> None:
    """Give back claimed rows that were not tried (the relay went away mid-batch)."""
    if not outbox_ids:
        return
    with engine.begin() as conn:
        conn.execute(update(_OUTBOX).where(_OUTBOX.c.id.in_(outbox_ids), _OUTBOX.c.claimed_by == me)
                     .values(claimed_by=None, claimed_until=None))


def release_dead_claims(engine: Engine, silent_after: timedelta | None = None, now: datetime | None = None) -> int:
    """Release the claims of deliverers that are no longer running (killed with their
    rows claimed), so another deliverer sends them now, not when their lease ends: those
    of this host whose process is gone, and, with ``silent_after``, those of another host
    whose heartbeat (gateway.heartbeat) says it stopped or has not been heard from for
    that long (a host that failed: issue 19).  Returns how many rows were released.  One
    read of the pending rows' holders (the state index) at each run."""
    host = socket.gethostname()
    now = aware(now or utcnow())
    with session_for(engine) as session:
        holders = set(session.exec(select(Outbox.claimed_by).where(col(Outbox.claimed_by).is_not(None),
                                                                   Outbox.state == PENDING)))
        dead = [h for h in holders if h and h.rpartition(":")[0] == host and not _running(h.rpartition(":")[2])]
        elsewhere = [h for h in holders if h and h.rpartition(":")[0] != host]
        if elsewhere and silent_after is not None:
            for name in elsewhere:
                their_host, _, pid = name.rpartition(":")
                if not pid.isdigit():
                    continue
                beat = session.exec(select(ServiceProcess.last_seen, ServiceProcess.stopped_at)
                                    .where(ServiceProcess.host == their_host, ServiceProcess.pid == int(pid))).first()
                if beat is not None and (beat[1] is not None or aware(beat[0]) < now - silent_after):
                    dead.append(name)
        if not dead:
            return 0
        # A row whose end the dead deliverer was giving the relay: the relay has it.
        handed = session.exec(select(Outbox.id, Outbox.handed_at, Outbox.message_id)
                              .where(col(Outbox.claimed_by).in_(dead), Outbox.state == PENDING,
                                     col(Outbox.handed_at).is_not(None))).all()
        answer = "the relay was given the whole mail when its deliverer died: taken as sent, not sent again"
        for outbox_id, at, message_id in handed:
            session.execute(_ATTEMPT.values(outbox_id=outbox_id, at=aware(at), outcome="sent", answer=answer))
            session.execute(_SENT.values(last_answer=answer, sent_at=aware(at)), {"b_id": outbox_id})
            log.warning("outbox %s <%s>: %s", outbox_id, message_id, answer)
        result = session.execute(update(_OUTBOX).where(_OUTBOX.c.claimed_by.in_(dead))
                                 .values(claimed_by=None, claimed_until=None, handed_at=None))
        session.commit()
        return (result.rowcount or 0)


def _running(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _render(engine: Engine, notifier, rows: list[Outbox], now: datetime) -> dict[int, bytes | str]:
    """The bytes of each row: its kept ``raw``, or rendered now and kept (in one
    transaction for the batch, before anything is sent, so a retry sends the same bytes).
    A row that cannot be rendered gets the error instead."""
    out: dict[int, bytes | str] = {}
    fresh: list[tuple[Outbox, object]] = []
    for row in rows:
        if row.raw is not None:
            out[row.id] = row.raw
            continue
        try:
            composed = notifier.compose(row)
        except Exception as exc:  # noqa: BLE001 - one mail's template, never the batch
            log.error("outbox %s %s <%s>: cannot be rendered: %s", row.id, row.event, row.message_id, exc)
            out[row.id] = f"cannot be rendered: {type(exc).__name__}: {exc}"
            continue
        fresh.append((row, composed))
    if fresh:
        with engine.begin() as conn:
            for row, composed in fresh:
                # Another deliverer may have rendered it meanwhile (its lease ended): its
                # bytes win, kept once.
                done = conn.execute(update(_OUTBOX).where(_OUTBOX.c.id == row.id, _OUTBOX.c.raw.is_(None))
                                    .values(raw=composed.raw, subject=composed.subject)).rowcount
                if done:
                    conn.execute(update(_MESSAGE).where(_MESSAGE.c.outbox_id == row.id)
                                 .values(subject=composed.subject, body_text=composed.mail.text))
                    out[row.id] = composed.raw
                else:
                    out[row.id] = conn.execute(select(_OUTBOX.c.raw).where(_OUTBOX.c.id == row.id)).scalar_one()
    return out


def render_pending(engine: Engine, notifier, limit: int = 1000) -> int:
    """Render the pending rows that were not rendered yet and keep their bytes, without
    sending anything (what the deliverer does before a first attempt); how many."""
    with session_for(engine) as session:
        rows = list(session.exec(select(Outbox).where(Outbox.state == PENDING, col(Outbox.raw).is_(None))
                                 .order_by(col(Outbox.id)).limit(limit)))
    return sum(isinstance(r, bytes) for r in _render(engine, notifier, rows, utcnow()).values())


def _undeliverable(session: Session, recipients: list[str]) -> set[str]:
    if not recipients:
        return set()
    normalized = {address_key(r): r for r in recipients}
    rows = session.exec(
        select(Person.email).where(col(Person.email).in_(list(normalized)), col(Person.undeliverable).is_(True))
    )
    return {normalized[e] for e in rows if e in normalized}


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


def record(engine: Engine, policy: RetryPolicy, delivery: Delivery, result: SendResult, now: datetime,
           hooks=()) -> str:
    """Commit the outcome of one attempt: the attempt row and the outbox row's new state,
    its claim ended in the same transaction; return that state."""
    if result.outcome == "sent":
        # The common case, as two statements (the unit of work's read and flush of the row
        # cost more than sending on PostgreSQL).
        with engine.begin() as conn:
            conn.execute(_ATTEMPT, dict(outbox_id=delivery.outbox_id, at=now, outcome="sent", answer=result.answer))
            conn.execute(_SENT, dict(b_id=delivery.outbox_id, last_answer=result.answer, sent_at=now))
        return SENT
    with session_for(engine) as session:
        row = session.get(Outbox, delivery.outbox_id)
        assert row is not None
        session.add(DeliveryAttempt(outbox_id=row.id, at=now, outcome=result.outcome, answer=result.answer))
        row.attempts += 1
        row.last_answer = result.answer
        row.claimed_by = row.claimed_until = row.handed_at = None
        if result.outcome == "permanent":
            row.state = FAILED
        else:
            session.flush()
            queued_at = _queued_at(session, row)
            when = policy.next_attempt(_failures_since(session, row, queued_at), queued_at, now)
            if when is None:
                row.state = FAILED
                row.last_answer = f"gave up after {row.attempts} attempts: {result.answer}"
            else:
                row.next_attempt_at = when
        if row.state == FAILED:
            _failed_event(session, hooks, row, now)
        session.add(row)
        session.commit()
        return row.state


_ATTEMPT = insert(DeliveryAttempt.__table__)
_OUTBOX = Outbox.__table__
_MESSAGE = TicketMessage.__table__
_SENT = (update(_OUTBOX).where(_OUTBOX.c.id == bindparam("b_id"))
         .values(state=SENT, attempts=_OUTBOX.c.attempts + 1, last_answer=bindparam("last_answer"),
                 sent_at=bindparam("sent_at"), claimed_by=None, claimed_until=None, handed_at=None))


def _handing(engine: Engine, outbox_id: int):
    """The relay has the whole mail but its end: say so durably as the end goes out.  A
    deliverer killed before the end went out leaves a mail the relay drops (sent again by
    another); one killed after it, a mail the relay has (counted as sent, not sent again:
    release_dead_claims).  SMTP cannot tell the two apart after the dot, so the doubt is
    kept to the moment between the note and the end leaving.

    On PostgreSQL that moment is a few instructions: the note's UPDATE is written to the
    database's socket (an autocommit statement the server carries out even if this
    process dies the next instant), the end is sent, and only then is the answer awaited
    (the function returned).  Waiting for the commit first, as on SQLite, would leave the
    whole commit (a WAL flush) as a window where a killed deliverer loses the mail."""
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            conn.execute(update(_OUTBOX).where(_OUTBOX.c.id == outbox_id).values(handed_at=utcnow()))
        return None
    from psycopg import pq

    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection.pgconn
        pg.send_query_params(b"UPDATE outbox SET handed_at = $1::timestamptz WHERE id = $2",
                             [utcnow().isoformat().encode(), str(outbox_id).encode()])
        while pg.flush():  # libpq is non-blocking under psycopg: the rest of the statement
            select_module.select([], [pg.socket], [], 30)
    except Exception:
        raw.invalidate()
        raise

    def finish() -> None:
        try:
            while True:
                pg.consume_input()
                if not pg.is_busy():
                    break
                select_module.select([pg.socket], [], [], 30)
            while (result := pg.get_result()) is not None:
                if result.status != pq.ExecStatus.COMMAND_OK:
                    log.error("outbox %s: the note that the relay has it was not written: %s", outbox_id,
                              (result.error_message or b"").decode("utf-8", "replace").strip())
        except Exception as exc:  # noqa: BLE001 - the mail went out; only the note of it is in doubt
            log.error("outbox %s: the note that the relay has it was not confirmed: %s", outbox_id, exc)
            raw.invalidate()
        finally:
            raw.close()
    return finish


def _failed_event(session: Session, hooks, row: Outbox, now: datetime) -> None:
    """The notification.failed webhook event, in the transaction that fails the row."""
    if not hooks:
        return
    from store import webhooks

    number = session.exec(select(Ticket.number).where(Ticket.id == row.ticket_id)).first() if row.ticket_id else None
    webhooks.queue(session, hooks, "notification.failed",
                   {"outbox_id": row.id, "ticket": number, "event": row.event, "recipient": row.recipient,
                    "attempts": row.attempts, "answer": row.last_answer}, now=now)


def _fail(engine: Engine, outbox_id: int, answer: str, now: datetime, hooks=()) -> None:
    """Fail a row for good without sending it (its recipient is undeliverable, its
    template cannot be rendered), with the reason as its answer."""
    with session_for(engine) as session:
        row = session.get(Outbox, outbox_id)
        assert row is not None
        session.add(DeliveryAttempt(outbox_id=row.id, at=now, outcome="permanent", answer=answer))
        row.state = FAILED
        row.last_answer = answer
        row.claimed_by = row.claimed_until = None
        _failed_event(session, hooks, row, now)
        session.add(row)
        session.commit()


def deliver_pending(
    engine: Engine, config: Config, transport: Transport, *, now: datetime | None = None, limit: int | None = 100,
    notifier=None,
) -> list[tuple[int, SendResult]]:
    """Try every pending mail that is due at ``now``, up to ``limit`` (None: all of them,
    for a command that delivers what it queued); return (outbox id,
    result) for each tried.

    Rows are claimed CLAIM_BATCH at a time (several deliverers share the outbox), rendered
    if they were not yet (``notifier``: gateway.outbound.notify.Notifier, made from the
    config when not given) and sent.  ``now`` is the clock: tests pass it to check the
    retry times without sleeping.  The transport's connection is opened once for the
    batch.  A failure to reach the relay at all ends the run (the rest stays due for the
    next one) rather than waiting out a timeout per mail."""
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
    if notifier is None:
        from gateway.outbound.notify import notifier_for

        notifier = notifier_for(config)
    released = release_dead_claims(engine, timedelta(seconds=config.monitoring.heartbeat_interval * MISSED_BEATS))
    if released:
        log.info("took back %d notification(s) claimed by a deliverer that died", released)
    me = holder()
    tried = 0
    with transport:
        while limit is None or tried < limit:
            rows = _claim(engine, now, CLAIM_BATCH if limit is None else min(CLAIM_BATCH, limit - tried), me)
            if not rows:
                break
            tried += len(rows)
            left = [row.id for row in rows]
            try:
                if _deliver_claimed(engine, config, transport, notifier, policy, rows, now, results, left):
                    break  # the relay cannot be reached: the rest waits for the next run
            finally:
                _release(engine, left, me)
    return results


def _deliver_claimed(engine: Engine, config: Config, transport: Transport, notifier, policy: RetryPolicy,
                     rows: list[Outbox], now: datetime, results: list, left: list[int]) -> bool:
    """Send the claimed ``rows``; ``left`` loses each row once it is recorded.  True when
    the relay could not be reached (the run stops)."""
    raws = _render(engine, notifier, rows, now)
    with session_for(engine) as session:
        # An address can become undeliverable after its mail was queued (a hard bounce of
        # an earlier mail): checked here, at sending time, not only when queueing.
        skipped = _undeliverable(session, sorted({row.recipient for row in rows}))
    for row in rows:
        raw = raws[row.id]
        delivery = Delivery(row.id, row.message_id, row.ticket_id, row.event, row.recipient,
                            row.recipient in skipped, raw if isinstance(raw, bytes) else b"", aware(row.created_at))
        if not isinstance(raw, bytes):
            _fail(engine, row.id, f"{NOT_SENT}{raw}", now, config.webhooks)
            metrics.notification("failed")
            left.remove(row.id)
            continue
        if delivery.undeliverable:
            _fail(engine, row.id, f"{NOT_SENT}the recipient is undeliverable ({row.recipient})", now,
                  config.webhooks)
            metrics.notification("failed")
            left.remove(row.id)
            log.info("outbox %s %s <%s>: failed, recipient %s undeliverable", row.id, row.event, row.message_id,
                     row.recipient)
            continue
        sender = (bounce_address(config.gateway.secret, config.helpdesk_address, row.id)
                  if config.outbound.verp else config.helpdesk_address)
        result = transport.send(sender, [row.recipient], delivery.raw, f"{row.id:06d}-{row.message_id}",
                                at_end=lambda outbox_id=row.id: _handing(engine, outbox_id))
        answered_at = utcnow()
        try:
            state = record(engine, policy, delivery, result, now, config.webhooks)
        except Exception:
            transport.unrecorded[row.id] = (delivery, result, now)
            log.exception("outbox %s <%s> ticket=%s: %s but not recorded; recorded at the next run, "
                          "not sent again", row.id, row.message_id, row.ticket_id, result.outcome)
            raise
        left.remove(row.id)
        log.info("outbox %s %s <%s> ticket=%s to %s: %s (%s) %s", row.id, row.event, row.message_id, row.ticket_id,
                 row.recipient, result.outcome, state, result.answer,
                 extra={"outbox_id": row.id, "message_id": row.message_id, "outcome": state})
        # Sent, failed for good, or kept to be retried (a 4xx): the relay's 250 times the
        # wait since queueing.
        metrics.notification("retried" if state == PENDING else state,
                             (answered_at - delivery.queued_at).total_seconds()
                             if state == SENT and delivery.queued_at else None)
        results.append((row.id, result))
        if result.connection:
            log.warning("relay unreachable; the rest waits for the next run: %s", result.answer)
            return True
    return False


def requeue(engine: Engine, outbox_ids: list[int] | None = None, *, failed: bool = False,
            now: datetime | None = None) -> list[int]:
    """Make mails pending and due now again (``gateway outbox retry``); return their ids.

    ``outbox_ids``: these mails (pending, failed, or sent: an operator may want a copy sent
    again); ``failed``: every failed mail.  The give-up clock restarts at ``now``."""
    now = aware(now or utcnow())
    with session_for(engine) as session:
        query = select(Outbox)
        if failed:
            query = query.where(Outbox.state == FAILED)
        else:
            query = query.where(col(Outbox.id).in_(outbox_ids or []))
        rows = list(session.exec(query.order_by(col(Outbox.id))))
        for row in rows:
            session.add(DeliveryAttempt(outbox_id=row.id, at=now, outcome=REQUEUED,
                                        answer=f"sent again on request (was {row.state})"))
            row.state = PENDING
            row.next_attempt_at = now
            row.claimed_by = row.claimed_until = None
            row.sent_at = None
            session.add(row)
        session.commit()
        return [row.id for row in rows]

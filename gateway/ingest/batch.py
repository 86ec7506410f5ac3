"""The batch driver: several stored mails in one transaction (one commit, on SQLite one
wait for the write lock), parsed before it, with a savepoint a mail on SQLite and a retry
one mail a transaction on PostgreSQL; the waiting mails, oldest first."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable

from sqlmodel import col, select

from gateway import metrics
from gateway.errors import Quarantine, Wait
from gateway.ingest import faults
from gateway.ingest.apply import Outcome
from gateway.ingest.parse import ParsedMail, parse
from gateway.ingest.statements import sender_facts
from store.db import reader, session_for
from store.models import InboundMessage, utcnow
from store.vocabulary import RECEIVED


log = logging.getLogger("gateway.ingest")

# A batch (Batches.process_batch): at most this many mails, and this much raw mail
# parsed ahead (a few small mails, or one large one).
BATCH_MAILS = 16
BATCH_BYTES = 2_000_000

def received_seconds(received_at, now: datetime) -> float | None:
    """Seconds from a mail's storing (its 250) to ``now``; None if unreadable."""
    try:
        when = received_at if isinstance(received_at, datetime) else datetime.fromisoformat(str(received_at))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=now.tzinfo)
    return (now - when).total_seconds()


def _within(inbound_ids: list[int], rows: dict[int, tuple], max_bytes: int) -> list[str]:
    """The blobs of the mails a batch will read: in order, up to ``max_bytes`` (the first
    one always), as ``Batches._prepare`` walks them."""
    shas, total = [], 0
    for inbound_id in inbound_ids:
        _state, sha, size = rows.get(inbound_id, ("", "", 0))
        if shas and total + size > max_bytes:
            break
        total += size
        shas.append(sha)
    return shas


class Batches:
    """A part of ``gateway.ingest.process.Processor``: the one-mail step is its
    ``_one``, a failure's count its ``_failed``."""

    def process_batch(self, inbound_ids: list[int], yield_now: Callable[[], bool] = lambda: False,
                      max_bytes: int = BATCH_BYTES,
                      known: dict[int, tuple[str, int]] | None = None) -> list[Outcome]:
        """Process stored mails in one transaction: one commit (one fsync, on SQLite one
        wait for the write lock) for several mails.

        On SQLite each mail runs under its own SAVEPOINT: a mail that fails rolls back to
        its savepoint only (its attempt is counted in the same transaction, and it is
        quarantined after max_attempts); the others, each with its ticket, outbox row
        and inbound state, are committed together.  On PostgreSQL a savepoint is two
        more round trips a mail (SAVEPOINT, RELEASE), a fifth of a new ticket's: a batch
        runs without, and when a mail fails (or the commit does) the whole transaction
        is rolled back and every mail of the batch is done again alone, one mail a
        transaction, which counts the failing one's attempt.  Either way no mail's work
        is half kept and no other mail is lost with it.

        ``yield_now`` is asked between two mails: when it says another writer waits for
        the lock, the mails done so far are committed and the rest is left for the next
        call.  Mails are parsed before the transaction, up to ``max_bytes`` of raw mail
        (at least one), so the lock is not held while parsing.  Returns the outcomes of
        the mails it got to, in order (the rest stay ``received``).

        ``known``: the blob and size of each waiting mail, as ``pending`` read them; the
        mails are then not read again before they are parsed (on PostgreSQL a read is a
        transaction of three round trips).  The claim in the transaction still finds a
        mail another worker took meanwhile.  A batch of one mail needs no savepoint: if
        it fails, the whole transaction is rolled back and its attempt counted in a new
        one."""
        prepared = self._prepare(inbound_ids, max_bytes, known)
        self._done = []
        outcomes: list[Outcome] = []
        nested = len(prepared) > 1 and self.savepoints
        reached = 0  # mails started in the transaction (for the log)
        try:
            with session_for(self.engine) as session:
                for inbound_id, mail, quarantine in prepared:
                    if outcomes and yield_now():
                        break
                    reached += 1
                    outcomes.append(self._one(session, inbound_id, mail, quarantine, nested=nested))
                session.commit()
        except Exception as exc:
            self._done = []  # rolled back: nothing of it happened
            if len(prepared) == 1:
                return [self._failed(prepared[0][0], exc)]
            # Nothing of the transaction was kept: each mail again alone (a failing one
            # counts its attempt), parsed already.
            log.warning("processing %d mails together failed at the %d. (%s: %s); processing them one by one",
                        len(prepared), reached, type(exc).__name__, exc)
            self._ahead.update({i: (m, q) for i, m, q in prepared})
            return [self.process(i) for i, _m, _q in prepared]
        # Parsed but left for the next batch (yield_now said so): not parsed twice.
        self._ahead.update({i: (m, q) for i, m, q in prepared[len(outcomes):]})
        if len(self._ahead) > 4 * BATCH_MAILS:  # taken by another worker meanwhile: let go
            for stale in sorted(self._ahead)[:len(self._ahead) - 4 * BATCH_MAILS]:
                del self._ahead[stale]
        for (inbound_id, *_rest), outcome in zip(prepared, outcomes):
            if outcome.outcome not in ("busy", "retry"):
                log.info("<%s> %s%s%s", outcome.message_id, outcome.outcome,
                         f" {outcome.ticket}" if outcome.ticket else "",
                         f" ({outcome.detail})" if outcome.detail else "",
                         extra={"message_id": outcome.message_id, "inbound_id": inbound_id,
                                "outcome": outcome.outcome, "ticket": outcome.ticket})
        self._count_done()
        return outcomes

    def _count_done(self) -> None:
        """Count the mails of the transaction just committed (gateway.metrics)."""
        now = utcnow()
        for _inbound_id, outcome, ticket, received_at, failed in self._done:
            if failed:
                metrics.processing_failed()
            if outcome != "retry":
                metrics.processed(outcome, ticket, received_seconds(received_at, now) if received_at else None)
        self._done = []

    def _prepare(self, inbound_ids: list[int], max_bytes: int,
                 known: dict[int, tuple[str, int]] | None = None) -> list[tuple[int, ParsedMail | None,
                                                                              Quarantine | None]]:
        # Read and parse before the write transaction: on SQLite a transaction holds the
        # database's write lock (BEGIN IMMEDIATE).  Attachment blobs are content-addressed,
        # so storing them early is harmless if the transaction is later rolled back.
        rows = self._rows(inbound_ids, known)
        prepared = []
        total = 0
        # What the sender checks read of each row, in one query for the batch.
        to_read = [i for i in inbound_ids if rows.get(i, ("",))[0] == RECEIVED and i not in self._ahead]
        facts = sender_facts(self.engine, to_read) if self.config.verifying else {}
        # The small ones' bytes in one query when they are in the database (get_small).
        small = self.blobs.get_small(_within(to_read, rows, max_bytes))
        for inbound_id in inbound_ids:
            if inbound_id not in rows:
                raise LookupError(f"no inbound message {inbound_id}")
            state, sha, size = rows[inbound_id]
            if prepared and total + size > max_bytes:
                break
            total += size
            ahead = self._ahead.pop(inbound_id, None)
            if ahead is not None and state == RECEIVED:
                prepared.append((inbound_id, *ahead))
                continue
            mail, quarantine = (self._read(inbound_id, sha, facts.get(inbound_id), small.get(sha))
                                if state == RECEIVED else (None, None))
            prepared.append((inbound_id, mail, quarantine))
            if isinstance(quarantine, Wait):  # the others would wait too: left for the next batch
                break
        return prepared

    def _rows(self, inbound_ids: list[int], known: dict[int, tuple[str, int]] | None) -> dict[int, tuple]:
        """{id: (state, blob, size)} of the stored mails: as the caller read them when it
        did (``known``: those it found waiting), else read here."""
        if known is not None and all(i in known for i in inbound_ids):
            return {i: (RECEIVED, *known[i]) for i in inbound_ids}
        with reader(self.engine) as session:  # no write lock for this read (SQLite)
            return {i: (state, sha, size) for i, state, sha, size in session.exec(
                select(InboundMessage.id, InboundMessage.state, InboundMessage.sha256, InboundMessage.size)
                .where(col(InboundMessage.id).in_(inbound_ids)))}

    def _read(self, inbound_id: int, sha: str, facts: tuple | None,
              raw: bytes | None = None) -> tuple[ParsedMail | None, Quarantine | None]:
        """A stored mail checked (Processor.checked) and parsed, its large attachments
        stored; or why it is quarantined or waits; (None, None) when parsing failed
        otherwise (done again, and counted, in the transaction).  ``raw``: its bytes,
        when read already with the batch's."""
        mail: ParsedMail | None = None
        try:
            # The bytes read are not kept in a name here: the sender checks return them
            # with a header added (a copy), and a large mail's original is let go then,
            # not held through its parsing (+19 MB a worker for the 25 MB mail, bench.run).
            mail = parse(self.checked(inbound_id, self.blobs.get(sha) if raw is None else raw, facts=facts),
                         self.limits, blobs=self.blobs)
            faults.test_hook(mail.message_id)
            for att in mail.attachments:
                if att.blob is None:  # a large one was stored while parsed
                    self.blobs.put(att.data)
            return mail, None
        except (Quarantine, Wait) as exc:
            return mail, exc
        except Exception:  # noqa: BLE001 - done again, and counted, in the transaction
            return None, None

    def pending(self, limit: int = 100) -> list[tuple[int, str, int]]:
        """The stored mails waiting to be processed, oldest first: (id, blob, size)."""
        with reader(self.engine) as session:
            return [tuple(row) for row in session.exec(
                select(InboundMessage.id, InboundMessage.sha256, InboundMessage.size)
                .where(InboundMessage.state == RECEIVED, faults.due(utcnow()))
                .order_by(col(InboundMessage.id)).limit(limit))]

    def pending_ids(self, limit: int = 100) -> list[int]:
        with reader(self.engine) as session:
            return list(session.exec(select(InboundMessage.id).where(InboundMessage.state == RECEIVED,
                                                                      faults.due(utcnow()))
                                     .order_by(col(InboundMessage.id)).limit(limit)))

    def process_pending(self, limit: int = 100) -> list[Outcome]:
        ids = self.pending_ids(limit)
        outcomes: list[Outcome] = []
        while ids:
            done = self.process_batch(ids[:BATCH_MAILS])
            outcomes += done
            ids = ids[len(done):]
        return outcomes

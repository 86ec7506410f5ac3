"""Processing a stored mail: parse, gather the facts (gateway.ingest.gather), decide
(gateway.ingest.decide), and apply the decision (gateway.ingest.apply) in one transaction
together with the inbound row's new state; several mails a transaction in
gateway.ingest.batch.

A crash anywhere before the commit leaves the inbound row ``received``: the next run
does the work again from the raw bytes, and nothing is done twice.  A mail that fails
``max_attempts`` times is quarantined with the error as its reason, so one poison mail
never blocks the queue.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session

from gateway.config import Config
from gateway.errors import Quarantine, Wait
from gateway.ingest import faults
from gateway.ingest.apply import Apply, Outcome, with_defects
from gateway.ingest.batch import BATCH_BYTES, BATCH_MAILS, Batches
from gateway.ingest.decide import decide
from gateway.ingest.gather import Gather
from gateway.ingest.parse import Limits, ParsedMail, parse
from gateway.ingest.statements import CLAIM, KEEP_VERDICT, PARENT_LOOKUPS, PARENT_WAITING, InboundRow
from gateway.ingest.too_large import TooLarge
from store import webhooks
from store.addresses import key as address_key
from store.blobs import BlobStore
from store.db import session_for
from store.models import InboundMessage, utcnow
from store.tickets import REHEARSAL
from store.vocabulary import DOOR_SOURCES, PROCESSED, QUARANTINED, RECEIVED


__all__ = ["BATCH_BYTES", "BATCH_MAILS", "Outcome", "Processor"]

log = logging.getLogger("gateway.ingest")


class _NoSavepoint:
    """Stands for the savepoint of a mail processed alone in its transaction."""

    @staticmethod
    def commit() -> None:
        pass


_NO_SAVEPOINT = _NoSavepoint()


class Processor(Gather, Apply, Batches, TooLarge):
    def __init__(self, config: Config, engine: Engine, blobs: BlobStore):
        self.config = config
        self.engine = engine
        self.blobs = blobs
        # Which notification, for whom, about what is decided here and queued with the
        # ticket's change; the deliverer renders it (store.notifications).
        self.notices = config.notice_settings()
        self.limits = Limits(config.limits.max_parts, config.limits.max_depth, config.limits.max_header_length)
        # Mails parsed ahead of their transaction (gateway.ingest.batch).
        self._ahead: dict[int, tuple[ParsedMail | None, Quarantine | None]] = {}
        # A savepoint for each mail of a batch (process_batch): cheap in SQLite's
        # process, two round trips a mail on PostgreSQL, which redoes a failed batch
        # one mail at a time instead.
        self.savepoints = engine.dialect.name == "sqlite"
        # Every address we answer for is ours: mail from any of them is our own coming back.
        self.own = tuple(dict.fromkeys(address_key(a) for a in (*config.gateway.addresses, *config.routing.routes)))
        # Mails given an outcome in the open transaction: (inbound id, outcome, ticket,
        # received at, whether the attempt failed), counted (gateway.metrics) once it commits.
        self._done: list[tuple[int, str, str | None, object, bool]] = []
        self.verifier = self.scanner = None  # gateway.ingest.verify and .scan, made on first use
        # Verdicts on senders reached before the transaction (batch._prepare), kept on their
        # rows in it (_one): a transaction a mail of their own doubled the commits.
        self._verdicts: dict[int, str] = {}

    def checked(self, inbound_id: int, raw: bytes, session: Session | None = None,
                facts: tuple | None = None) -> bytes:
        """The stored mail as processing reads it: scanned for viruses ([scan],
        gateway.ingest.scan), with the gateway's own verdict on its sender on top when it
        verifies ([auth], gateway.ingest.verify); ``session``, the caller's transaction
        when it parses in one; ``facts``, what the verifier reads of the row, read with
        its batch's (statements.sender_facts)."""
        if self.scanner is None and self.config.scan.clamd:
            self._checks()
        if self.scanner is not None:
            self.scanner.scan(raw)  # before anything of it is kept (Quarantine, or Wait)
        if not self.config.verifying or facts is not None and not self._verifies(facts):
            return raw
        if self.verifier is None:
            self._checks()
        if session is not None:
            return self.verifier.stamp(inbound_id, raw, session)
        if len(self._verdicts) > 8 * BATCH_MAILS:  # mails another worker took meanwhile
            for stale in list(self._verdicts)[:len(self._verdicts) - 4 * BATCH_MAILS]:
                del self._verdicts[stale]
        return self.verifier.stamp(inbound_id, raw, keep=lambda kept: self._verdicts.__setitem__(inbound_id, kept),
                                   facts=facts)

    def _verifies(self, facts: tuple) -> bool:
        """Whether the sender checks have anything to do for a row of these facts
        (statements.sender_facts): a verdict kept already, or a sender to check; the
        others (a file ``gateway ingest`` took, unless [auth] other_sources) need not
        import the checks' libraries."""
        source, *_envelope, kept = facts
        return kept is not None or source in DOOR_SOURCES or self.config.auth.other_sources

    def _checks(self) -> None:
        """The sender's verifier and the virus scanner, their libraries imported where they
        are used (dkimpy and dnspython: ~0.3 s), once: by the warm-up in a worker that will
        use them."""
        from gateway.ingest.scan import Scanner
        from gateway.ingest.verify import Verifier

        self.verifier = Verifier(self.config, self.engine)
        self.scanner = Scanner(self.config) if self.config.scan.clamd else None

    def process(self, inbound_id: int) -> Outcome:
        """Process one stored mail; the result is committed with the inbound row's state."""
        return self.process_batch([inbound_id])[0]

    def _one(self, session: Session, inbound_id: int, mail: ParsedMail | None,
             quarantine: Quarantine | None, nested: bool = True) -> Outcome:
        """One mail inside the batch's transaction, under a savepoint of its own
        (``nested``); without one, a failure is raised for the caller to roll back."""
        savepoint = session.begin_nested() if nested else _NO_SAVEPOINT
        try:
            # Claim the row: on PostgreSQL several workers (or the worker and an IMAP
            # backfill) run at once, and one that finds the row locked leaves it to the
            # other, which commits its outcome; nothing is processed twice.  On SQLite
            # BEGIN IMMEDIATE serialises them, and the second finds the row done.
            row = next(iter(CLAIM.rows(session, {"b_id": inbound_id})), None)
            inbound = InboundRow(*row) if row is not None else None
            if inbound is None:
                savepoint.commit()
                return Outcome("", "", "busy", None, "being processed by another worker")
            if inbound.state != RECEIVED:
                savepoint.commit()
                return Outcome(inbound.source, inbound.message_id, inbound.outcome or inbound.state,
                               inbound.ticket_number, inbound.detail)
            # Read, not taken: a batch rolled back does this mail again alone (bounded by checked).
            if (verdict := self._verdicts.get(inbound_id)) is not None:
                KEEP_VERDICT.execute(session, {"b_id": inbound_id, "authentication": verdict})
            try:
                if quarantine is not None:
                    raise quarantine
                if mail is None:
                    mail = parse(self.checked(inbound.id, self.blobs.get(inbound.sha256), session), self.limits,
                                 blobs=self.blobs)
            except Wait as exc:  # not an attempt: the row stays received, tried again
                savepoint.commit()
                return Outcome(inbound.source, inbound.message_id, "busy", None, exc.reason)
            except Quarantine as exc:
                outcome = self.mark(session, inbound, Outcome(inbound.source, inbound.message_id,
                                                               QUARANTINED, None, exc.reason), QUARANTINED)
                webhooks.mail_processed(session, self.config.webhooks, inbound.id, QUARANTINED, None, exc.reason)
                savepoint.commit()
                self._done.append((inbound.id, QUARANTINED, None, inbound.received_at, False))
                return outcome
            parent = self._parent_waiting(session, inbound.id, mail)
            if parent is not None:
                savepoint.commit()
                self._ahead[inbound_id] = (mail, None)  # parsed: kept for the next attempt
                return Outcome(inbound.source, inbound.message_id, "busy", None,
                               f"waits for #{parent}, the mail it answers, to be processed first")
            sender = self.sender_of(session, mail)
            facts = self.gather(session, inbound, mail, sender)
            decision = decide(mail, facts)
            outcome = self.apply(session, inbound, mail, decision, sender)
            if mail.defects:
                outcome = replace(outcome, detail=with_defects(outcome.detail, mail.defects))
            state = QUARANTINED if outcome.outcome == QUARANTINED else PROCESSED
            outcome = self.mark(session, inbound, outcome, state)
            webhooks.mail_processed(session, self.config.webhooks, inbound.id, outcome.outcome, outcome.ticket,
                                    outcome.detail)
            savepoint.commit()
            self._done.append((inbound.id, outcome.outcome, outcome.ticket, inbound.received_at, False))
            return outcome
        except Exception as exc:
            if not nested:
                raise
            savepoint.rollback()
            self._done = [d for d in self._done if d[0] != inbound_id]
            return self._count_failure(session, inbound_id, exc)

    @staticmethod
    def _parent_waiting(session: Session, inbound_id: int, mail: ParsedMail) -> int | None:
        """The id of an earlier stored mail, still waiting, whose Message-ID this one names
        in In-Reply-To or References; None when there is none (or no reference at all).

        Several workers (PostgreSQL) take mails side by side: a reply
        stored just after its original could be processed first, find no ticket and open
        a new one.  It waits instead, and is taken again after the original."""
        # The mail it answers is In-Reply-To, else the last of References: those and the
        # few before them (one statement each; a mail rarely names more than two).
        mids = list(dict.fromkeys(m for m in (*mail.in_reply_to, *reversed(mail.references)) if m))[:PARENT_LOOKUPS]
        conn = session.connection()
        for mid in mids:
            found = PARENT_WAITING.execute(conn, {"b_mid": mid, "b_id": inbound_id})
            if found is not None:
                return found
        return None

    def _count_failure(self, session: Session, inbound_id: int, exc: Exception) -> Outcome:
        """Count a failed attempt; quarantine after max_attempts so the queue moves on.
        A fault of the surroundings is not the mail's: it waits, uncounted (faults)."""
        if (why := faults.surroundings(exc)) is not None:
            inbound = faults.postpone(session, inbound_id, why, self.config.limits)
            return Outcome(inbound.source, inbound.message_id, "retry", None, inbound.detail)
        log.error("processing inbound %s failed", inbound_id, exc_info=exc)
        inbound = session.get(InboundMessage, inbound_id)
        inbound.attempts += 1
        detail = f"processing failed: {type(exc).__name__}: {exc}"
        if inbound.attempts >= self.config.limits.max_attempts:
            inbound.state = inbound.outcome = QUARANTINED
            inbound.ticket_number = None
            inbound.processed_at = utcnow()
            webhooks.mail_processed(session, self.config.webhooks, inbound_id, "quarantined", None, detail)
        inbound.detail = detail
        session.add(inbound)
        session.flush()
        # A failed attempt is counted as such; the one that quarantines the mail as its
        # outcome too.
        self._done.append((inbound_id, QUARANTINED if inbound.state == QUARANTINED else "retry",
                           None, inbound.received_at, True))
        return Outcome(inbound.source, inbound.message_id, QUARANTINED if inbound.state == QUARANTINED else "retry",
                       None, detail)

    def _failed(self, inbound_id: int, exc: Exception) -> Outcome:
        """The transaction itself failed (its commit): count the attempt in a new one."""
        self._done = []
        if (why := faults.surroundings(exc)) is not None:
            source, message_id, detail = faults.postpone_alone(self.engine, inbound_id, why, self.config.limits)
            return Outcome(source, message_id, "retry", None, detail)
        with session_for(self.engine) as session:
            outcome = self._count_failure(session, inbound_id, exc)
            session.commit()
        self._count_done()
        if outcome.outcome == QUARANTINED:
            log.info("<%s> quarantined (%s)", outcome.message_id, outcome.detail)
        return outcome

    def warm_up(self) -> float:
        """Do the first mail's one-off work before the first real mail: a worker's first
        mail took ~190 ms instead of ~10 (compiling the SQL statements, among others), and
        on SQLite it held the write lock all that time, so the door's next commit (a
        sender's 250) waited for it.  (Templates are the deliverer's to warm up.)

        Processes a built-in sample mail in a transaction that is rolled back: nothing is
        kept, no ticket number is taken (store.tickets.REHEARSAL), no blob is written.
        Returns the seconds it took."""
        import time

        start = time.monotonic()
        raw = (b"From: Warm Up <warm-up@example.invalid>\r\nTo: " + self.config.helpdesk_address.encode() +
               b"\r\nSubject: =?utf-8?q?Imprimante_en_panne?= ##PO1##\r\nMessage-ID: <warm-up@example.invalid>\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               + "L'imprimante ne répond plus.\r\n".encode())
        quiet = logging.root.manager.disable
        logging.disable(logging.INFO)  # its "created"/"queued" lines would read as a real mail's
        rehearsal = REHEARSAL.set(True)  # no ticket number taken (a sequence's is gone for good)
        try:
            if self.verifier is None and (self.config.verifying or self.config.scan.clamd):
                self._checks()  # their libraries loaded now, not by the first mail
            mail = parse(raw, self.limits)
            with session_for(self.engine) as session:
                inbound_id = session.connection().execute(
                    insert(InboundMessage.__table__).returning(InboundMessage.__table__.c.id),
                    dict(received_at=utcnow(), source="warm-up", mail_from="", rcpt_to="", message_id="",
                         sha256="warm-up", size=len(raw), state=RECEIVED, attempts=0)).scalar_one()
                self._one(session, inbound_id, mail, None)
                session.rollback()
                self._done = []  # a rehearsal: nothing to count
        except Exception:  # noqa: BLE001 - only a head start; the real mails say what is wrong
            log.debug("warm-up failed", exc_info=True)
        finally:
            REHEARSAL.reset(rehearsal)
            logging.disable(quiet)
        return time.monotonic() - start

"""Processing a stored mail: parse, gather the facts, decide, and apply the decision in
one transaction together with the inbound row's new state.

A crash anywhere before the commit leaves the inbound row ``received``: the next run
does the work again from the raw bytes, and nothing is done twice.  A mail that fails
``max_attempts`` times is quarantined with the error as its reason, so one poison mail
never blocks the queue.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import Integer, String, bindparam, cast, func, insert, type_coerce, update
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gateway import metrics
from gateway.config import Config
from gateway.errors import Quarantine
from gateway.ingest.automatic import TEXT_KEY_CHARS, Automatic, classify, subject_key, text_key
from gateway.ingest.bounces import Report
from gateway.ingest import decisions
from gateway.ingest.answers import first_statement
from gateway.ingest.decide import (APPROVE, HOLD, NEEDS_COMMENT, REFUSE, REOPEN, RESUME, UNCLEAR, Facts, FollowUp,
                                   Ignore, NewTicket, QuarantineIt, Repeat, ThreadHit, clean_title, decide)
from gateway.ingest.language import detect_language
from gateway.ingest.parse import Limits, ParsedMail, parse
from gateway.ingest.references import find_reference
from gateway.ingest.threading import dmarc_failed, dmarc_passed, find_ticket, permission, signed_replies
from gateway.tokens import marked_addresses, verified_bounce
from store import lifecycle
from store.addresses import key as address_key
from store.blobs import BlobStore
from store.db import Prepared, reader, session_for
from store.lifecycle import StatusData
from store.models import Attachment, InboundMessage, Outbox, Person, StatusChange, Ticket, TicketMessage, utcnow
from store.notifications import KnownThread, language_for, queue, queue_notice
from store.tickets import REHEARSAL, add_person, change_status, create_ticket, get_or_create_person, get_ticket

log = logging.getLogger("gateway.ingest")

_NO_REPLY = re.compile(r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster|bounces?)([-+.].*)?$",
                       re.IGNORECASE)


def unanswerable_sender(mail: ParsedMail) -> str | None:
    """Why the sender must get no automatic answer (RFC 3834 §2), or None."""
    return_path = mail.header("return-path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        return "null return path"
    local = mail.from_addr.rpartition("@")[0]
    if _NO_REPLY.match(local):
        return f"no-reply sender {mail.from_addr}"
    return None


def with_defects(detail: str | None, defects: tuple[str, ...]) -> str:
    """The outcome's detail and what was wrong with the mail as it came (a missing
    boundary, a charset that did not decode, broken base64...): the agent who finds its
    text garbled sees why in ``gateway inbound show``, without opening the raw mail."""
    words = [re.sub(r"(?<=[a-z])(?=[A-Z])", " ", d[:-len("Defect")]).lower() if d.endswith("Defect") else d
             for d in defects]
    read = "as read: " + "; ".join(words)
    return f"{detail}; {read}" if detail else read


# A batch (Processor.process_batch): at most this many mails, and this much raw mail
# parsed ahead (a few small mails, or one large one).
BATCH_MAILS = 16
BATCH_BYTES = 2_000_000

# The inbound row's new state (Processor._mark), built once (its cache key is kept).
_INSERT_RECEIVED = Prepared(insert(TicketMessage.__table__).returning(TicketMessage.__table__.c.id))
_MARK = Prepared(update(InboundMessage.__table__).where(InboundMessage.__table__.c.id == bindparam("b_id")))

# Received mails of that Message-ID (the duplicate check) and the latest from a sender
# (the rate limit), built once for the same reason.
_SAME_MESSAGE_ID = Prepared(select(Ticket.number, TicketMessage.from_addr)
                    .join(TicketMessage, col(TicketMessage.ticket_id) == col(Ticket.id))
                    .where(col(TicketMessage.message_id) == bindparam("b_mid"), TicketMessage.direction == "in"))
_RECENT_FROM = Prepared(select(TicketMessage.id)
                .where(TicketMessage.direction == "in", col(TicketMessage.from_addr) == bindparam("b_from"),
                       col(TicketMessage.created_at) >= bindparam("b_since", type_=TicketMessage.__table__.c.created_at.type))
                .limit(bindparam("b_limit")))

# The claim of a stored mail (Processor._one): its row, locked on PostgreSQL (SKIP LOCKED:
# a row another worker holds is left to it); SQLite has no row locks and ignores the clause.
_INBOUND = InboundMessage.__table__
_CLAIM = Prepared(select(_INBOUND.c.id, _INBOUND.c.source, _INBOUND.c.rcpt_to, _INBOUND.c.process, _INBOUND.c.message_id,
                 _INBOUND.c.sha256, _INBOUND.c.state, _INBOUND.c.outcome, _INBOUND.c.ticket_number,
                 _INBOUND.c.detail,
                 # As the driver gives it (SQLite: text): a DateTime's result processing
                 # would take the statement off Prepared's fast path; only the
                 # processing-time metric reads it (received_seconds).
                 type_coerce(_INBOUND.c.received_at, String))
          .where(_INBOUND.c.id == bindparam("b_id")).with_for_update(skip_locked=True))


@dataclass(frozen=True)
class InboundRow:
    """What processing reads of a stored mail's row (a Core read: no ORM object to build)."""

    id: int
    source: str
    rcpt_to: str
    process: str | None
    message_id: str
    sha256: str
    state: str
    outcome: str | None
    ticket_number: str | None
    detail: str | None
    received_at: object = None  # a datetime, or SQLite's text of one


def received_seconds(received_at, now: datetime) -> float | None:
    """Seconds from a mail's storing (its 250) to ``now``; None if unreadable."""
    try:
        when = received_at if isinstance(received_at, datetime) else datetime.fromisoformat(str(received_at))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=now.tzinfo)
    return (now - when).total_seconds()


# An earlier stored mail, not yet processed, that this one answers (Processor._one): with
# several workers the reply could otherwise be processed first and miss its ticket.
_PARENT_WAITING = Prepared(select(_INBOUND.c.id)
                           .where(_INBOUND.c.message_id == bindparam("b_mid"), _INBOUND.c.state == "received",
                                  _INBOUND.c.id < bindparam("b_id"))
                           .limit(1))
PARENT_LOOKUPS = 6


# How many of a sender's latest mails are compared with a new one (Processor.repeat).
REPEAT_LOOKBACK = 20


# The sender's row (Processor.sender_of); booleans as integers, which need no result
# processing on SQLite (Prepared runs it on the cursor).
_PERSON = Person.__table__
_PERSON_BY_EMAIL = Prepared(select(_PERSON.c.id, _PERSON.c.email, _PERSON.c.name, _PERSON.c.language,
                                   _PERSON.c.company, cast(_PERSON.c.company_access, Integer), _PERSON.c.timezone,
                                   _PERSON.c.hard_bounces, cast(_PERSON.c.undeliverable, Integer))
                            .where(_PERSON.c.email == bindparam("b_email")))


# ``sender`` not looked up yet (gather and apply then read it themselves).
UNKNOWN = object()


class _NoSavepoint:
    """Stands for the savepoint of a mail processed alone in its transaction."""

    @staticmethod
    def commit() -> None:
        pass


_NO_SAVEPOINT = _NoSavepoint()


@dataclass(frozen=True)
class Outcome:
    source: str
    message_id: str
    outcome: str
    ticket: str | None
    detail: str | None

    def as_dict(self) -> dict:
        return asdict(self)


class Processor:
    def __init__(self, config: Config, engine: Engine, blobs: BlobStore):
        self.config = config
        self.engine = engine
        self.blobs = blobs
        # Which notification, for whom, about what is decided here and queued with the
        # ticket's change; the deliverer renders it (store.notifications).
        self.notices = config.notice_settings()
        self.limits = Limits(config.limits.max_parts, config.limits.max_depth, config.limits.max_header_length)
        # Every address we answer for is ours: mail from any of them is our own coming back.
        self._ahead: dict[int, tuple[ParsedMail | None, Quarantine | None]] = {}
        # A savepoint for each mail of a batch (process_batch): cheap in SQLite's
        # process, two round trips a mail on PostgreSQL, which redoes a failed batch
        # one mail at a time instead.
        self.savepoints = engine.dialect.name == "sqlite"
        self.own = tuple(dict.fromkeys(address_key(a) for a in (*config.gateway.addresses, *config.routing.routes)))
        # Mails given an outcome in the open transaction: (inbound id, outcome, ticket,
        # received at, whether the attempt failed), counted (gateway.metrics) once it commits.
        self._done: list[tuple[int, str, str | None, object, bool]] = []

    # Facts ----------------------------------------------------------------------------
    def route(self, inbound: InboundMessage, mail: ParsedMail) -> str:
        if inbound.process:
            return inbound.process
        routes = {address_key(k): v for k, v in self.config.routing.routes.items()}
        for addr in [a for a in inbound.rcpt_to.split(",") if a] + list(mail.to) + list(mail.cc):
            k = address_key(addr)
            local, _, domain = k.rpartition("@")
            plain = f"{local.split('+', 1)[0]}@{domain}"
            if plain in routes:
                return routes[plain]
        return self.config.routing.default_process

    def find_thread(self, session: Session, inbound: InboundMessage, mail: ParsedMail) -> ThreadHit | None:
        """The ticket the mail answers (``gateway.ingest.threading``) and what its sender may do."""
        recipients = [a for a in inbound.rcpt_to.split(",") if a] + list(mail.to) + list(mail.cc)
        found = find_ticket(session, mail, recipients, self.config.gateway.verifying_secrets(), self.own)
        if found is None:
            return None
        ticket, via = found
        may = permission(session, ticket, mail.from_addr, self.own)
        if not may.allowed:
            log.warning("<%s> %s referred to %s by %s but may not write into it: a ticket of their own",
                        mail.message_id, mail.from_addr, ticket.number, via)
        stale = (self._stale_request(session, ticket, mail, recipients)
                 if ticket.status == lifecycle.APPROVAL else None)
        return ThreadHit(ticket.number, ticket.status, via, may.allowed, ticket.waiting_reason,
                         may.approver, may.why, dmarc_failed(mail, self.config.gateway.authserv_id), stale)

    def _stale_request(self, session: Session, ticket: Ticket, mail: ParsedMail, recipients: list[str]) -> str | None:
        """When the mail answers one of the ticket's approval requests that is not open:
        an earlier one than the latest, or one decided since it was sent (the ticket came
        back to Approval without a new request).  The request is the one its In-Reply-To
        names, else the one whose reply address (``+CHG-000001.a2.<token>``) it was sent
        to or quotes in our HTML.  A mail that names no request (a new mail with the
        ticket's tag) answers the open question.  None when the request is open."""
        # Every copy of a request carries its number (one copy a recipient).
        copies = session.exec(select(Outbox.message_id, Outbox.created_at, Outbox.approval_request)
                              .where(Outbox.ticket_id == ticket.id, Outbox.event == "approval")
                              .order_by(col(Outbox.id))).all()
        if not copies:
            return None
        asked_at: dict[int, datetime] = {}
        for _mid, at, number in copies:
            asked_at.setdefault(number, at)
        latest = max(asked_at)
        answered = {mid for mid in mail.in_reply_to if mid}
        request = next((number for mid, _at, number in copies if mid in answered), None)
        if request is None:
            addresses = [*recipients, *marked_addresses(mail.html or "")]
            secrets = self.config.gateway.verifying_secrets()
            request = next((request for number, request in signed_replies(addresses, secrets, self.own)
                            if number == ticket.number and request is not None), None)
        if request is None:
            return None
        if request not in asked_at:  # signed by us, yet no such request: not this question
            return f"answers approval request {request}, which this ticket never had"
        asked = asked_at[request]
        if request < latest:
            return f"answers the earlier approval request of {asked:%Y-%m-%d %H:%M} UTC"
        decided = session.exec(select(StatusChange.at).where(StatusChange.ticket_id == ticket.id,
                                                             StatusChange.from_status == lifecycle.APPROVAL,
                                                             StatusChange.at > asked)
                               .order_by(col(StatusChange.at))).first()
        if decided is not None:
            return (f"answers the approval request of {asked:%Y-%m-%d %H:%M} UTC, already decided on "
                    f"{decided:%Y-%m-%d %H:%M} UTC")
        return None

    def sender_of(self, session: Session, mail: ParsedMail) -> Person | None:
        """The sender's Person, read once a mail: gather needs to know them, apply uses them.

        Read with a Prepared statement and joined to the session as a loaded row (the
        ORM's query machinery for it was ~11 % of the worker's time); a Person the
        session holds already (created by an earlier mail of the batch) is that one."""
        if not mail.from_addr:
            return None
        rows = _PERSON_BY_EMAIL.rows(session.connection(), {"b_email": address_key(mail.from_addr)})
        if not rows:
            return None
        pid, email, name, language, company, access, tz, bounces, undeliverable = rows[0]
        known = session.identity_map.get(identity_key(Person, pid))
        if known is not None:
            return known
        person = Person(id=pid, email=email, name=name, language=language, company=company,
                        company_access=bool(access), timezone=tz, hard_bounces=bounces,
                        undeliverable=bool(undeliverable))
        make_transient_to_detached(person)
        session.add(person)
        session.expire(person, ["created_at"])  # not read here: loaded if anyone asks
        return person

    def gather(self, session: Session, inbound: InboundMessage, mail: ParsedMail, sender=UNKNOWN) -> Facts:
        duplicate_of = None
        if mail.message_id:
            # The same mail delivered twice (other Received lines, so other bytes) has the
            # same Message-ID and sender.  A different sender reusing a Message-ID is not a
            # copy: dropping it would let anyone silence a mail by sending its ID first.
            # Core on the session's connection (no ORM result machinery for two columns);
            # the mails before this one in the batch are flushed (Processor._mark).
            rows = _SAME_MESSAGE_ID.rows(session.connection(), {"b_mid": mail.message_id})
            duplicate_of = next((n for n, f in rows if address_key(f) == address_key(mail.from_addr)), None)
        automatic = self._with_bounce_address(inbound, mail, classify(mail, self.own, self.config.message_id_domain))
        # Automatic mail finds no ticket, but for a read receipt, noted on the ticket it names.
        thread = None if automatic and not automatic.noted else self.find_thread(session, inbound, mail)
        if sender is UNKNOWN:
            sender = self.sender_of(session, mail)
        known = sender is not None
        # Whether it repeats: asked only of a known sender's mail that may open a ticket.
        may_open = thread is None or not thread.sender_allowed or thread.status == lifecycle.CLOSED
        process = self.route(inbound, mail)
        repeat = self.repeat(session, mail, sender, process) if known and not automatic and may_open else None
        return Facts(
            process=process,
            duplicate_of=duplicate_of,
            automatic=automatic,
            thread=thread,
            reference=None if automatic else find_reference(mail),
            sender_known=known,
            unknown_senders=self.config.gateway.unknown_senders,
            flood=self.flood(session, sender) if known and not automatic else None,
            repeat=repeat,
        )

    def _with_bounce_address(self, inbound, mail: ParsedMail, automatic: Automatic | None) -> Automatic | None:
        """A mail to the bounce address of one of our mails ([outbound] verp) is a report
        about that mail: the report gets its outbox id, and a mail nothing else recognises
        as a report becomes one (soft: only a real delivery report fails the mail)."""
        addresses = [*(inbound.rcpt_to or "").split(","), *mail.to, *mail.cc]
        secrets = self.config.gateway.verifying_secrets()
        ids = tuple(dict.fromkeys(i for i in (verified_bounce(secrets, a) for a in addresses if a) if i is not None))
        if not ids:
            return automatic
        if automatic is not None and automatic.report is not None and automatic.kind == "bounce":
            return replace(automatic, report=replace(automatic.report, outbox_ids=ids))
        if automatic is None:
            detail = f"mail to the bounce address of outbox mail #{ids[0]}"
            return Automatic("bounce", detail, Report("bounce", detail, False, (), (), ids))
        return automatic

    def flood(self, session: Session, sender: Person) -> str | None:
        """Why a new ticket from ``sender`` is held: they reported
        limits.new_tickets_per_sender tickets in the last new_tickets_window seconds
        already; None under the limit (or with no limit, 0)."""
        limits = self.config.limits
        if not limits.new_tickets_per_sender:
            return None
        since = utcnow() - timedelta(seconds=limits.new_tickets_window)
        recent = session.exec(select(Ticket.id).where(Ticket.reporting_person_id == sender.id,
                                                      col(Ticket.created_at) >= since)
                              .limit(limits.new_tickets_per_sender)).all()
        if len(recent) < limits.new_tickets_per_sender:
            return None
        return (f"flood: {sender.email} opened {len(recent)} tickets in the last {limits.new_tickets_window} s "
                f"([limits] new_tickets_per_sender = {limits.new_tickets_per_sender}); held for an agent "
                f"(gateway inbound reprocess takes it once the rate falls)")

    def repeat(self, session: Session, mail: ParsedMail, sender: Person, process: str) -> Repeat | None:
        """The facts of decide's loop rule: within [limits] loop_window, a mail of the
        same sender to the same desk (a ticket of ``process``) that said the same
        (``automatic.text_key``: the same subject and text but for ticket numbers,
        addresses, Message-IDs, dates and times; the same attachments), or one of our
        mails to the sender whose Message-ID this one names in its text (``_named_mail``).
        None when neither, or the rule is off.  One indexed query a mail; more only when a
        subject matches."""
        window = self.config.limits.loop_window
        if not window:
            return None
        since = utcnow() - timedelta(seconds=window)
        session.flush()  # an earlier mail of the batch counts (Core below does not autoflush)
        recent = session.exec(
            select(TicketMessage.id, Ticket.number, TicketMessage.subject)
            .join(Ticket, col(Ticket.id) == col(TicketMessage.ticket_id))
            .where(TicketMessage.direction == "in", TicketMessage.from_addr == mail.from_addr,
                   col(TicketMessage.created_at) >= since, Ticket.process == process)
            .order_by(col(TicketMessage.id).desc()).limit(REPEAT_LOOKBACK)).all()
        # The subjects first (a person's mails seldom share one); the texts of those that match.
        subject = subject_key(mail.subject)
        alike = [(message_id, number) for message_id, number, said in recent if subject_key(said) == subject]
        if alike:
            key = text_key(mail.subject, mail.text)
            files = sorted(att.sha256 for att in mail.attachments)
            texts = dict(session.exec(select(TicketMessage.id, func.substr(TicketMessage.body_full, 1, TEXT_KEY_CHARS))
                                      .where(col(TicketMessage.id).in_([m for m, _n in alike]))).all())
            for message_id, number in alike:
                if text_key(mail.subject, texts.get(message_id) or "") != key:
                    continue
                stored = sorted(session.exec(select(Attachment.sha256).where(Attachment.message_id == message_id)))
                if stored == files:
                    return Repeat(number, f"the same text as {mail.from_addr}'s mail on {number} in the last "
                                          f"{window} s: a loop; kept on {number}, no new ticket, no answer")
        return self._named_mail(session, mail, sender, since)

    def _named_mail(self, session: Session, mail: ParsedMail, sender: Person, since: datetime) -> Repeat | None:
        """A mail of ours, sent since ``since`` on a ticket of ``sender``'s, whose
        Message-ID ``mail`` names in its text ("your message <…@our domain> was received")
        rather than in In-Reply-To: a machine quoting our header.  People do not write
        Message-IDs; they do write ticket numbers, which therefore are no such sign (a
        robot that quotes a varying number is caught by text_key, which leaves it out)."""
        domain = self.config.message_id_domain.lower()
        if f"@{domain}" not in mail.text.lower():
            return None
        ours = re.compile(r"[^\s<>\"'@]+@" + re.escape(domain) + r"\b", re.IGNORECASE)
        ids = {m.lower() for m in ours.findall(mail.text[:TEXT_KEY_CHARS])}
        if not ids:
            return None
        number = session.exec(
            select(Ticket.number).join(TicketMessage, col(TicketMessage.ticket_id) == col(Ticket.id))
            .where(col(TicketMessage.message_id).in_(ids), TicketMessage.direction == "out",
                   col(TicketMessage.created_at) >= since,
                   (col(Ticket.reporting_person_id) == sender.id) | (col(Ticket.affected_person_id) == sender.id))
        ).first()
        if number is None:
            return None
        return Repeat(number, f"names the Message-ID of our mail on {number} in its text, not in In-Reply-To: "
                              f"a machine answering it; kept on {number}, no new ticket, no answer")

    def over_rate(self, session: Session, sender: str) -> bool:
        """More than limits.rate_limit mails from ``sender`` in the last rate_window seconds:
        the sender still gets tickets but no notifications, so a storm (a loop with a
        machine we do not recognise, or a mail bomb) cannot make us send a storm back."""
        since = utcnow() - timedelta(seconds=self.config.limits.rate_window)
        session.flush()  # the mail being processed counts (Core below does not autoflush)
        recent = _RECENT_FROM.rows(
            session.connection(), {"b_from": sender, "b_since": since, "b_limit": self.config.limits.rate_limit + 1})
        # The mail being processed is already among them.
        return len(recent) > self.config.limits.rate_limit

    def record_report(self, session: Session, mail: ParsedMail, automatic: Automatic) -> tuple[str | None, str]:
        """A bounce: mark the outbox mail that bounced as failed (a permanent failure) and
        count a hard bounce on its recipients; after outbound.undeliverable_after hard
        bounces the address is marked undeliverable.  Returns (ticket number, detail)."""
        report = automatic.report
        if report is None or report.kind != "bounce" or not (report.original_message_ids or report.outbox_ids):
            return None, automatic.detail
        rows = list(session.exec(select(Outbox).where(col(Outbox.id).in_(report.outbox_ids)).order_by(Outbox.id))) \
            if report.outbox_ids else []
        if report.original_message_ids:
            rows += [r for r in session.exec(select(Outbox).where(col(Outbox.message_id).in_(report.original_message_ids)))
                     if r.id not in report.outbox_ids]
        if not rows:
            return None, automatic.detail + "; no outbox mail of ours among the returned Message-IDs"
        ticket_number = None
        # The copies the report names by their recipient, when it names any (copies of a
        # mail queued before one row a recipient share its Message-ID).
        reported = {address_key(a) for a in report.recipients}
        rows = [r for r in rows if address_key(r.recipient) in reported] or rows
        for row in rows:
            answer = f"bounce <{mail.message_id}>: {automatic.detail}"
            row.last_answer = answer[:2000]
            if report.hard and row.state != "failed":
                row.state = "failed"
                person = session.exec(select(Person).where(Person.email == address_key(row.recipient))).first()
                if person is not None:
                    person.hard_bounces += 1
                    if person.hard_bounces >= self.config.outbound.undeliverable_after:
                        person.undeliverable = True
                    session.add(person)
            session.add(row)
            if row.ticket_id is not None and ticket_number is None:
                ticket = session.get(Ticket, row.ticket_id)
                ticket_number = ticket.number if ticket else None
        state = "marked failed" if report.hard else "delayed, kept"
        return ticket_number, f"{automatic.detail}; outbox <{rows[0].message_id}> {state}"

    def notify_too_large(self, header: bytes, size: int, limit: int, now: datetime | None = None) -> str:
        """Tell the sender of a mail too large to be read (gateway.ingest.imap: only its
        header was fetched) that no ticket was made and why: one notice, committed here.
        Returns what was done, for the inbound row's detail.

        Never to a machine (auto-replies, bounces, lists, our own mail), a no-reply or
        null return path, or an undeliverable person; and at most one such notice a
        sender a day, so a sender that keeps sending huge mails gets one answer."""
        try:
            mail = parse(header.rstrip(b"\r\n") + b"\r\n\r\n", self.limits)
        except Quarantine as exc:  # an ambiguous sender, say: nobody to answer
            return f"no notice: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - a header we cannot read is not answered
            return f"no notice: header unreadable ({type(exc).__name__})"
        automatic = classify(mail, self.own, self.config.message_id_domain)
        if automatic is not None:
            return f"no notice: {automatic.kind} ({automatic.detail})"
        unanswerable = unanswerable_sender(mail)
        if unanswerable:
            return f"no notice: {unanswerable}"
        if "@" not in mail.from_addr:
            return "no notice: no sender address"
        address = address_key(mail.from_addr)
        now = now or utcnow()
        with session_for(self.engine) as session:
            person = session.exec(select(Person).where(Person.email == address)).first()
            if person is not None and person.undeliverable:
                return f"no notice: {address} is undeliverable"
            recent = session.exec(select(Outbox.id).where(Outbox.event == "too-large", Outbox.recipient == address,
                                                          col(Outbox.created_at) >= now - timedelta(days=1))
                                  .limit(1)).first()
            if recent is not None:
                return f"no notice: {address} was told of a too-large mail in the last 24 hours"
            lang = (language_for(session, person, self.config.gateway.default_language) if person is not None
                    else self.language_of(mail))
            row = queue_notice(
                session, self.notices, "too-large", to=(mail.from_name, address), language=lang,
                in_reply_to=mail.message_id or None,
                extra={"original_subject": mail.subject, "size": size, "limit": limit}, now=now)
            if row is None:
                return f"no notice: {address} is not an address to send to"
            session.commit()
        return f"notice <{row.message_id}> queued for {address}"

    # Applying -------------------------------------------------------------------------
    def language_of(self, mail: ParsedMail) -> str:
        """Content-Language, else the language of the text when it is clear, else the default."""
        lang = (mail.content_language or "").split("-")[0].lower()
        if lang in ("fr", "nl", "en", "de"):
            return lang
        return detect_language(f"{mail.subject}\n{mail.text}") or self.config.gateway.default_language

    def add_message(self, session: Session, ticket: Ticket, inbound: InboundMessage, mail: ParsedMail,
                    body_text: str | None = None, internal: bool = False) -> int:
        """The received mail as a message of ``ticket``, with its attachments; its id.

        A Core insert in the session's transaction (or savepoint): the message is not read
        back as an object here, and the ORM's model construction and flush cost more than
        the insert on every mail."""
        msg_id = _INSERT_RECEIVED.execute(session.connection(), dict(
            ticket_id=ticket.id,
            direction="in",
            internal=internal,
            # Whether its To and Cc may join the thread (threading.permission).
            authenticated=dmarc_passed(mail, self.config.gateway.authserv_id),
            from_addr=mail.from_addr,
            to_addrs=",".join(mail.to),
            cc_addrs=",".join(mail.cc),
            subject=mail.subject,
            body_text=mail.text if body_text is None else body_text,
            body_full=mail.text,
            body_html=mail.html,
            message_id=mail.message_id or None,
            inbound_id=inbound.id,
            outbox_id=None,
            created_at=utcnow(),
        ))
        for att in mail.attachments:
            sha = att.blob or self.blobs.put(att.data)  # a large one is stored while parsed
            session.add(Attachment(message_id=msg_id, filename=att.filename, content_type=att.content_type,
                                   size=att.size, sha256=sha, inline=att.inline, content_id=att.content_id))
        return msg_id

    def _person(self, session: Session, mail: ParsedMail, sender) -> Person:
        """The sender as a Person, created on their first mail (``sender``: from sender_of)."""
        if sender is UNKNOWN:
            return get_or_create_person(session, mail.from_addr, mail.from_name, self.language_of(mail))[0]
        if sender is None:
            return add_person(session, mail.from_addr, mail.from_name, self.language_of(mail))
        if mail.from_name and not sender.name:
            sender.name = mail.from_name
            session.add(sender)
        return sender

    def apply(self, session: Session, inbound: InboundMessage, mail: ParsedMail, decision, sender=UNKNOWN) -> Outcome:
        source, mid = inbound.source, mail.message_id
        if isinstance(decision, Ignore):
            if decision.note and decision.ticket:
                # Kept where the agents look, internal: no answer, no change, and (being
                # internal) no thread membership for its addresses, no place in References.
                self.add_message(session, get_ticket(session, decision.ticket), inbound, mail, internal=True)
            return Outcome(source, mid, decision.outcome, decision.ticket, decision.detail)
        if isinstance(decision, QuarantineIt):
            return Outcome(source, mid, "quarantined", None, decision.reason)
        if isinstance(decision, FollowUp):
            return self.apply_reply(session, inbound, mail, decision, sender)
        assert isinstance(decision, NewTicket)
        person = self._person(session, mail, sender)
        linked = get_ticket(session, decision.linked_to) if decision.linked_to else None
        title = decision.title
        if linked is not None and self._answers_our_subject(session, linked, title):
            # A reply to one of our mails: its subject is our wording, the closed ticket's title is theirs.
            title = linked.title
        ticket = create_ticket(
            session,
            process=decision.process,
            title=title,
            description=mail.text if decision.description is None else decision.description,
            reporter=person,
            reference=decision.reference.value if decision.reference else None,
            reference_source=decision.reference.source if decision.reference else None,
            by=person.email,
            linked=linked,
        )
        self.add_message(session, ticket, inbound, mail, body_text=decision.description)
        # The ticket is new: its thread is this mail, its latest update this mail's text,
        # and no change can be linked to it yet (nothing to read back for the notification).
        known = KnownThread((mail.message_id,) if mail.message_id else (),
                            mail.text if decision.description is None else decision.description)
        if decision.refers_to:
            session.add(TicketMessage(ticket_id=ticket.id, direction="note", internal=True,
                                      body_text=f"The sender referred to {decision.refers_to} (by {decision.refers_via}), "
                                                f"which they may not write into; this new ticket was opened instead."))
        if linked is not None:
            session.add(TicketMessage(ticket_id=ticket.id, direction="note", internal=True,
                                      body_text=f"Opened from a reply to {linked.number}, which is Closed."))
            self.notify(session, ticket, "closed-new-ticket", mail, extra={"closed_ticket": linked}, known=known)
        else:
            self.notify(session, ticket, "new", mail, known=known)
        detail = f"follows {linked.number}, which is Closed" if linked is not None else (
            f"sender may not write into {decision.refers_to}" if decision.refers_to else None)
        return Outcome(source, mid, decision.outcome, ticket.number, detail)

    @staticmethod
    def _answers_our_subject(session: Session, ticket: Ticket, title: str) -> bool:
        sent = session.exec(select(TicketMessage.subject).where(TicketMessage.ticket_id == ticket.id,
                                                                TicketMessage.direction == "out"))
        return any(clean_title(subject) == title for subject in sent) or title == ticket.title

    def apply_reply(self, session: Session, inbound: InboundMessage, mail: ParsedMail, reply: FollowUp,
                    sender=UNKNOWN) -> Outcome:
        """Add an allowed sender's reply to its ticket and do what it asks, in the caller's
        transaction: the comment, the status change and the mail land together or not at all."""
        ticket = get_ticket(session, reply.number)
        by = address_key(mail.from_addr)
        # A reply that cannot reopen, or whose sender is not proven, is kept for the agents,
        # not shown as a public comment.
        self.add_message(session, ticket, inbound, mail, body_text=reply.comment,
                         internal=reply.action in (NEEDS_COMMENT, HOLD))
        ticket.updated_at = utcnow()
        session.add(ticket)
        if reply.action == RESUME:
            change_status(session, ticket, lifecycle.IN_PROGRESS,
                          StatusData(note=f"The customer answered by mail ({by}); the work resumes."), by=by)
        elif reply.action == REOPEN:
            change_status(session, ticket, lifecycle.IN_PROGRESS, StatusData(note=reply.comment), by=by)
        elif reply.action == NEEDS_COMMENT:
            person = self._person(session, mail, sender)
            self.notify(session, ticket, "reopen-needs-comment", mail, only=[person])
        elif reply.action in (APPROVE, REFUSE):
            decisions.spend(session, ticket, reply.action, inbound.id)  # once, whatever instance reads it
            approved = reply.action == APPROVE
            word = "approved" if approved else "refused"
            if approved:
                change_status(session, ticket, lifecycle.IN_PROGRESS,
                              StatusData(note=f"Approved by {by} by mail: {reply.comment}"), by=by)
            else:
                change_status(session, ticket, lifecycle.REJECTED,
                              StatusData(reason=reply.comment, note=f"Refused by {by} by mail: {reply.comment}"),
                              by=by)
            self.notify(session, ticket, "approval-recorded", mail,
                        extra={"decision": word, "approver": mail.from_name or by, "approver_address": by,
                               "answer": reply.comment})
        elif reply.action == UNCLEAR:
            # The customer may believe they decided: they are told what was read and how to answer.
            person = self._person(session, mail, sender)
            self.notify(session, ticket, "approval-unclear", mail, only=[person],
                        extra={"statement": first_statement(reply.comment)})
        log.info("<%s> %s %s: %s", mail.message_id, ticket.number, reply.action, reply.detail)
        return Outcome(inbound.source, mail.message_id, reply.outcome, ticket.number, reply.detail)

    def notify(self, session: Session, ticket: Ticket, event: str, mail: ParsedMail, **kwargs) -> None:
        """Answer a customer's mail, unless its sender is over the rate limit: they still get
        tickets, but no notifications until the rate falls, so a storm (a loop with a
        machine we do not recognise, or a mail bomb) cannot make us send a storm back."""
        session.flush()
        if self.over_rate(session, mail.from_addr):
            log.warning("<%s> %s: %s is over the rate limit, no %s notification", mail.message_id, ticket.number,
                        mail.from_addr, event)
            return
        unanswerable = unanswerable_sender(mail)
        if unanswerable:
            # The ticket is made, but a machine's address gets no answer ("ticket trick":
            # a sign-up mail sent to us must not have its contents echoed back).
            log.info("<%s> %s: no %s notification: %s", mail.message_id, ticket.number, event, unanswerable)
            return
        queue(session, self.notices, ticket, event, in_reply_to=mail.message_id or None,
              auto_submitted="auto-replied", **kwargs)

    # Driving --------------------------------------------------------------------------
    def process(self, inbound_id: int) -> Outcome:
        """Process one stored mail; the result is committed with the inbound row's state."""
        return self.process_batch([inbound_id])[0]

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
        if known is not None and all(i in known for i in inbound_ids):
            rows = {i: ("received", *known[i]) for i in inbound_ids}
        else:
            with reader(self.engine) as session:  # no write lock for this read (SQLite)
                rows = {i: (state, sha, size) for i, state, sha, size in session.exec(
                    select(InboundMessage.id, InboundMessage.state, InboundMessage.sha256, InboundMessage.size)
                    .where(col(InboundMessage.id).in_(inbound_ids)))}
        prepared = []
        total = 0
        for inbound_id in inbound_ids:
            if inbound_id not in rows:
                raise LookupError(f"no inbound message {inbound_id}")
            state, sha, size = rows[inbound_id]
            if prepared and total + size > max_bytes:
                break
            total += size
            ahead = self._ahead.pop(inbound_id, None)
            if ahead is not None and state == "received":
                prepared.append((inbound_id, *ahead))
                continue
            mail: ParsedMail | None = None
            quarantine: Quarantine | None = None
            if state == "received":
                try:
                    mail = parse(self.blobs.get(sha), self.limits, blobs=self.blobs)
                    for att in mail.attachments:
                        if att.blob is None:  # a large one was stored while parsed
                            self.blobs.put(att.data)
                except Quarantine as exc:
                    quarantine = exc
                except Exception:  # noqa: BLE001 - done again, and counted, in the transaction
                    mail = None
            prepared.append((inbound_id, mail, quarantine))
        return prepared

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
            row = next(iter(_CLAIM.rows(session.connection(), {"b_id": inbound_id})), None)
            inbound = InboundRow(*row) if row is not None else None
            if inbound is None:
                savepoint.commit()
                return Outcome("", "", "busy", None, "being processed by another worker")
            if inbound.state != "received":
                savepoint.commit()
                return Outcome(inbound.source, inbound.message_id, inbound.outcome or inbound.state,
                               inbound.ticket_number, inbound.detail)
            try:
                if quarantine is not None:
                    raise quarantine
                if mail is None:
                    mail = parse(self.blobs.get(inbound.sha256), self.limits, blobs=self.blobs)
            except Quarantine as exc:
                outcome = self._mark(session, inbound, Outcome(inbound.source, inbound.message_id,
                                                               "quarantined", None, exc.reason), "quarantined")
                savepoint.commit()
                self._done.append((inbound.id, "quarantined", None, inbound.received_at, False))
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
            if isinstance(decision, Ignore) and decision.outcome == "bounce" and facts.automatic is not None:
                number, detail = self.record_report(session, mail, facts.automatic)
                decision = Ignore("bounce", detail, number)
            outcome = self.apply(session, inbound, mail, decision, sender)
            if mail.defects:
                outcome = replace(outcome, detail=with_defects(outcome.detail, mail.defects))
            state = "quarantined" if outcome.outcome == "quarantined" else "processed"
            outcome = self._mark(session, inbound, outcome, state)
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
            found = _PARENT_WAITING.execute(conn, {"b_mid": mid, "b_id": inbound_id})
            if found is not None:
                return found
        return None

    @staticmethod
    def _mark(session: Session, inbound: InboundMessage, outcome: Outcome, state: str) -> Outcome:
        """The inbound row's new state, in the caller's transaction (a Core UPDATE: the
        unit of work's flush of the one row cost more than the statement)."""
        session.flush()  # the mail's own rows first, so the statement order stays that of the work
        _MARK.execute(session.connection(), {"b_id": inbound.id, "state": state, "outcome": outcome.outcome,
                                             "ticket_number": outcome.ticket, "detail": outcome.detail,
                                             "processed_at": utcnow()})
        return outcome

    def _count_failure(self, session: Session, inbound_id: int, exc: Exception) -> Outcome:
        """Count a failed attempt; quarantine after max_attempts so the queue moves on."""
        log.error("processing inbound %s failed", inbound_id, exc_info=exc)
        inbound = session.get(InboundMessage, inbound_id)
        inbound.attempts += 1
        detail = f"processing failed: {type(exc).__name__}: {exc}"
        if inbound.attempts >= self.config.limits.max_attempts:
            inbound.state = inbound.outcome = "quarantined"
            inbound.ticket_number = None
            inbound.processed_at = utcnow()
        inbound.detail = detail
        session.add(inbound)
        session.flush()
        # A failed attempt is counted as such; the one that quarantines the mail as its
        # outcome too.
        self._done.append((inbound_id, "quarantined" if inbound.state == "quarantined" else "retry",
                           None, inbound.received_at, True))
        return Outcome(inbound.source, inbound.message_id, "quarantined" if inbound.state == "quarantined" else "retry",
                       None, detail)

    def _failed(self, inbound_id: int, exc: Exception) -> Outcome:
        """The transaction itself failed (its commit): count the attempt in a new one."""
        self._done = []
        with session_for(self.engine) as session:
            outcome = self._count_failure(session, inbound_id, exc)
            session.commit()
        self._count_done()
        if outcome.outcome == "quarantined":
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
            mail = parse(raw, self.limits)
            with session_for(self.engine) as session:
                inbound_id = session.connection().execute(
                    insert(InboundMessage.__table__).returning(InboundMessage.__table__.c.id),
                    dict(received_at=utcnow(), source="warm-up", mail_from="", rcpt_to="", message_id="",
                         sha256="warm-up", size=len(raw), state="received", attempts=0)).scalar_one()
                self._one(session, inbound_id, mail, None)
                session.rollback()
                self._done = []  # a rehearsal: nothing to count
        except Exception:  # noqa: BLE001 - only a head start; the real mails say what is wrong
            log.debug("warm-up failed", exc_info=True)
        finally:
            REHEARSAL.reset(rehearsal)
            logging.disable(quiet)
        return time.monotonic() - start

    def pending(self, limit: int = 100) -> list[tuple[int, str, int]]:
        """The stored mails waiting to be processed, oldest first: (id, blob, size)."""
        with reader(self.engine) as session:
            return [tuple(row) for row in session.exec(
                select(InboundMessage.id, InboundMessage.sha256, InboundMessage.size)
                .where(InboundMessage.state == "received").order_by(col(InboundMessage.id)).limit(limit))]

    def pending_ids(self, limit: int = 100) -> list[int]:
        with reader(self.engine) as session:
            return list(session.exec(select(InboundMessage.id).where(InboundMessage.state == "received")
                                     .order_by(col(InboundMessage.id)).limit(limit)))

    def process_pending(self, limit: int = 100) -> list[Outcome]:
        ids = self.pending_ids(limit)
        outcomes: list[Outcome] = []
        while ids:
            done = self.process_batch(ids[:BATCH_MAILS])
            outcomes += done
            ids = ids[len(done):]
        return outcomes

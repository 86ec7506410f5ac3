"""The statements the worker runs for every mail, built once (their cache keys kept) and
run through ``store.db.Prepared`` (the fast path beside SQLAlchemy's execute, measured in
BENCHMARKS.md); their query plans are checked by tests/test_query_plans.py."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, String, bindparam, cast, insert, type_coerce, update
from sqlmodel import col, select

from store.db import Prepared, reader
from store.models import InboundMessage, Person, Ticket, TicketMessage
from store.vocabulary import RECEIVED


# The inbound row's new state (Apply.mark, gateway.ingest.apply), built once (its cache key is kept).
INSERT_RECEIVED = Prepared(insert(TicketMessage.__table__).returning(TicketMessage.__table__.c.id))
MARK = Prepared(update(InboundMessage.__table__).where(InboundMessage.__table__.c.id == bindparam("b_id")))
# A verdict on the sender reached before the transaction, kept on its row in it
# (Processor._one): the same UPDATE of the row by id (Prepared compiles one form for each
# set of columns given).
KEEP_VERDICT = MARK

# Received mails of that Message-ID (the duplicate check) and the latest from a sender
# (the rate limit), built once for the same reason.
SAME_MESSAGE_ID = Prepared(select(Ticket.number, TicketMessage.from_addr)
                    .join(TicketMessage, col(TicketMessage.ticket_id) == col(Ticket.id))
                    .where(col(TicketMessage.message_id) == bindparam("b_mid"), TicketMessage.direction == "in"))
RECENT_FROM = Prepared(select(TicketMessage.id)
                .where(TicketMessage.direction == "in", col(TicketMessage.from_addr) == bindparam("b_from"),
                       col(TicketMessage.created_at) >= bindparam("b_since", type_=TicketMessage.__table__.c.created_at.type))
                .limit(bindparam("b_limit")))

# The claim of a stored mail (Processor._one, gateway.ingest.process): its row, locked on PostgreSQL (SKIP LOCKED:
# a row another worker holds is left to it); SQLite has no row locks and ignores the clause.
INBOUND = InboundMessage.__table__
CLAIM = Prepared(select(INBOUND.c.id, INBOUND.c.source, INBOUND.c.rcpt_to, INBOUND.c.process, INBOUND.c.message_id,
                 INBOUND.c.sha256, INBOUND.c.state, INBOUND.c.outcome, INBOUND.c.ticket_number,
                 INBOUND.c.detail,
                 # As the driver gives it (SQLite: text): a DateTime's result processing
                 # would take the statement off Prepared's fast path; only the
                 # processing-time metric reads it (received_seconds).
                 type_coerce(INBOUND.c.received_at, String))
          .where(INBOUND.c.id == bindparam("b_id")).with_for_update(skip_locked=True))


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


# An earlier stored mail, not yet processed, that this one answers (Processor._one, gateway.ingest.process): with
# several workers the reply could otherwise be processed first and miss its ticket.
PARENT_WAITING = Prepared(select(INBOUND.c.id)
                           .where(INBOUND.c.message_id == bindparam("b_mid"), INBOUND.c.state == RECEIVED,
                                  INBOUND.c.id < bindparam("b_id"))
                           .limit(1))
PARENT_LOOKUPS = 6


# How many of a sender's latest mails are compared with a new one (Gather.repeat, gateway.ingest.gather).
REPEAT_LOOKBACK = 20


# The sender's row (Gather.sender_of); booleans as integers, which need no result
# processing on SQLite (Prepared runs it on the cursor).
PERSON = Person.__table__
PERSON_BY_EMAIL = Prepared(select(PERSON.c.id, PERSON.c.email, PERSON.c.name, PERSON.c.language,
                                   PERSON.c.company, cast(PERSON.c.company_access, Integer), PERSON.c.timezone,
                                   PERSON.c.hard_bounces, cast(PERSON.c.undeliverable, Integer))
                            .where(PERSON.c.email == bindparam("b_email")))


# What the sender checks read of a stored row (gateway.ingest.verify): its source, envelope
# sender, client address, HELO and a verdict kept already.
SENDER_FACTS = (INBOUND.c.id, INBOUND.c.source, INBOUND.c.mail_from, INBOUND.c.peer, INBOUND.c.helo,
                INBOUND.c.authentication)


def sender_facts(engine, inbound_ids: list[int], session=None) -> dict[int, tuple]:
    """``SENDER_FACTS`` of each of ``inbound_ids`` in one query, as {id: (source,
    mail_from, peer, helo, authentication)}: in ``session``, else in a reading session of
    its own (no write lock on SQLite)."""
    if not inbound_ids:
        return {}
    query = select(*SENDER_FACTS).where(INBOUND.c.id.in_(inbound_ids))
    if session is not None:
        return {row[0]: tuple(row[1:]) for row in session.exec(query)}
    with reader(engine) as readable:
        return {row[0]: tuple(row[1:]) for row in readable.exec(query)}

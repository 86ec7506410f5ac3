"""Ticket operations inside a caller's session (the caller commits).

Every status change goes through ``change_status``, which applies the lifecycle rules
and writes the history row.  Callers that must also mail the customer write the outbox
row in the same session before committing, so that both land or neither does.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, func, insert, or_, update
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from store import lifecycle
from store.addresses import key as address_key
from store.db import PROCESS_PREFIX, Prepared, connection_of
from store.lifecycle import LifecycleError, StatusData
from store.models import Counter, Person, StatusChange, Ticket, TicketMessage, utcnow


class NotFound(LookupError):
    pass


_COUNTER = Counter.__table__
_NEXT_NUMBER = Prepared(update(_COUNTER).where(_COUNTER.c.process == bindparam("b_process"))
                .values(value=_COUNTER.c.value + 1).returning(_COUNTER.c.value))
# PostgreSQL: one sequence a process (store revision 0003).
_NEXT_IN_SEQUENCE = {process: Prepared(select(func.nextval("ticket_number_" + process.replace("-", "_"))))
                     for process in PROCESS_PREFIX}

# Set while a worker rehearses a mail (Processor.warm_up): a number is made up, none is
# taken, since a sequence's number is gone even when the transaction is rolled back.
REHEARSAL: ContextVar[bool] = ContextVar("rehearsal", default=False)


def next_number(session: Session, process: str) -> str:
    """Take the next number of ``process`` (``INC-000001``) inside the caller's transaction.

    SQLite: the process's counter row, gapless (one writer at a time).  PostgreSQL: the
    process's sequence, which holds no lock until the commit, so several workers open
    tickets side by side; a number taken by a transaction that is rolled back is skipped
    (never given twice)."""
    if process not in PROCESS_PREFIX:
        raise LifecycleError(f"unknown process {process!r}; one of {', '.join(PROCESS_PREFIX)}")
    if REHEARSAL.get():
        return f"{PROCESS_PREFIX[process]}-000000"
    # Core statements on the session's connection: the ORM's bulk-update path around it
    # (synchronising objects that are never loaded) cost more than the statement itself.
    conn = connection_of(session)
    if conn.dialect.name == "postgresql":
        value = _NEXT_IN_SEQUENCE[process].execute(conn, {})
    else:
        value = _NEXT_NUMBER.execute(conn, {"b_process": process})
    return f"{PROCESS_PREFIX[process]}-{value:06d}"


def find_person(session: Session, email: str) -> Person | None:
    return session.exec(select(Person).where(Person.email == address_key(email))).first()


def get_or_create_person(session: Session, email: str, name: str = "", language: str = "en") -> tuple[Person, bool]:
    person = find_person(session, email)
    if person is not None:
        if name and not person.name:
            person.name = name
            session.add(person)
        return person, False
    return add_person(session, email, name, language), True


def new_row(model, **values):
    """A new, transient object of ``model`` (a table class) with ``values`` and the model's
    own defaults for the rest: what ``model(**values)`` gives, without SQLModel's
    constructor (its per-field default resolution through pydantic and the instrumented
    attributes: ~55 us against ~3 for a Person, twice on every new ticket's mail)."""
    manager, fields, names = _construction(model)
    row = manager.new_instance()
    state = row.__dict__
    for name, default, factory in fields:
        state[name] = factory() if factory is not None else default
    unknown = values.keys() - names
    if unknown:
        raise TypeError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
    state.update(values)
    return row


def _construction(model) -> tuple:
    made = _CONSTRUCTION.get(model)
    if made is None:
        from pydantic_core import PydanticUndefined
        from sqlalchemy import inspect
        from sqlalchemy.orm import configure_mappers

        configure_mappers()  # the attributes' instrumentation, which the constructor would have set up
        fields = []
        for name, field in model.model_fields.items():
            if field.default_factory is not None:
                fields.append((name, None, field.default_factory))
            elif field.default is not PydanticUndefined:
                fields.append((name, field.default, None))
            else:  # required: given by the caller, or None as the constructor leaves it unset
                fields.append((name, None, None))
        made = _CONSTRUCTION[model] = (inspect(model).class_manager, tuple(fields), frozenset(model.model_fields))
    return made


_CONSTRUCTION: dict = {}


def insert_row(session: Session, model, **values):
    """Insert a new row of ``model`` at once and keep it in the session as a loaded object.

    What ``session.add(model(**values)); session.flush()`` does for one object, at a
    fraction of the cost on the mail path: the object built by ``new_row`` (the model's
    defaults applied), a Core INSERT of every column on the session's connection, in its
    transaction, then the object joins the identity map as if it had been read, so
    ``session.get`` finds it and later changes to it are flushed as usual."""
    row = new_row(model, **values)
    table = model.__table__
    state = row.__dict__
    values = {c.name: state[c.name] for c in table.columns if not c.primary_key}
    statement = _INSERT_RETURNING.get(table.name)
    if statement is None:
        statement = _INSERT_RETURNING[table.name] = Prepared(insert(table).returning(table.c.id))
    row.id = statement.execute(session, values)
    make_transient_to_detached(row)
    session.add(row)
    return row


def load_row(session: Session, model, row_id: int | None):
    """The object of ``model`` with id ``row_id`` in ``session`` (None when there is none):
    the one the session holds already, else read by a Core statement built once and
    joined to the session as if the ORM had loaded it (``session.get``'s query costs more
    than the statement on every mail that replies)."""
    if row_id is None:
        return None
    held = session.identity_map.get(identity_key(model, row_id))
    if held is not None:
        return held
    statement = _SELECT_BY_ID.get(model)
    if statement is None:
        table = model.__table__
        statement = _SELECT_BY_ID[model] = select(*table.columns).where(table.c.id == bindparam("b_id"))
    found = connection_of(session).execute(statement, {"b_id": row_id}).mappings().first()
    if found is None:
        return None
    row = new_row(model, **found)
    make_transient_to_detached(row)
    session.add(row)
    return row


_SELECT_BY_ID: dict = {}
_INSERT_RETURNING: dict = {}
_TICKET_ID = Prepared(select(Ticket.__table__.c.id).where(Ticket.__table__.c.number == bindparam("b_number")))


def add_person(session: Session, email: str, name: str = "", language: str = "en") -> Person:
    """A new person (the caller knows there is none with ``email``), inserted for its id."""
    return insert_row(session, Person, email=address_key(email), name=name or "", language=language)


def find_ticket_by_number(session: Session, number: str) -> Ticket | None:
    """The ticket numbered ``number`` (any case, blanks around it ignored), or None."""
    return load_row(session, Ticket, _TICKET_ID.execute(session, {"b_number": number.strip().upper()}))


def get_ticket(session: Session, number: str) -> Ticket:
    ticket = find_ticket_by_number(session, number)
    if ticket is None:
        raise NotFound(f"no ticket {number}")
    return ticket


def create_ticket(
    session: Session,
    *,
    process: str,
    title: str,
    description: str,
    reporter: Person,
    affected: Person | None = None,
    reference: str | None = None,
    reference_source: str | None = None,
    by: str = "",
    linked: Ticket | None = None,
    now: datetime | None = None,
) -> Ticket:
    now = now or utcnow()
    ticket = insert_row(
        session,
        Ticket,
        number=next_number(session, process),
        process=process,
        status=lifecycle.NEW,
        title=title.strip() or "(no subject)",
        description=description,
        personal_reference=reference,
        reference_source=reference_source if reference else None,
        reporting_person_id=reporter.id,
        affected_person_id=(affected or reporter).id,
        linked_ticket_id=linked.id if linked else None,
        created_at=now,
        updated_at=now,
    )
    # The first history row as a Core insert in the session's transaction (or savepoint):
    # nothing reads it back as an object, and an ORM row costs a model construction and a
    # share of the next flush on every new ticket.
    _INSERT_CHANGE.execute(session, dict(ticket_id=ticket.id, at=now, from_status=None,
                                                      to_status=lifecycle.NEW, by=by, note=None))
    return ticket


# Built once (a statement built per call recomputes its cache key).
_INSERT_CHANGE = Prepared(insert(StatusChange.__table__))


def change_status(
    session: Session, ticket: Ticket, target: str, data: StatusData, *, by: str, now: datetime | None = None
) -> StatusChange:
    """Move ``ticket`` to ``target`` if the rules allow it, recording the history.

    Raises ``LifecycleError`` (naming both statuses) and changes nothing when the move
    is refused.  The ticket keeps the data of its current status only: a reason, an
    appointment or a solution of an earlier status is in the history, not on the ticket.
    """
    now = _utc(now or utcnow())
    target = lifecycle.canonical_status(target)
    data = _stripped(data)
    lifecycle.check_transition(ticket.process, ticket.status, target, data)
    previous = ticket.status
    ticket.status = target
    ticket.updated_at = now
    ticket.waiting_reason = data.waiting_reason if target == lifecycle.WAITING else None
    if target == lifecycle.WAITING:
        ticket.status_reason = data.note
    elif target in (lifecycle.REJECTED, lifecycle.POSTPONED):
        ticket.status_reason = data.reason
    else:
        ticket.status_reason = None
    if target == lifecycle.PLANNED:
        # Stored in UTC: SQLite keeps no offset, so an aware local time would be misread.
        ticket.appointment_at = _utc(data.at)
        ticket.appointment_place = data.place
    if target == lifecycle.SOLVED:
        ticket.solution = data.solution
        ticket.solved_at = now
    elif target != lifecycle.CLOSED:
        # Reopened: the 14 days start again at the next Solved.
        ticket.solved_at = None
    if target == lifecycle.APPROVAL:
        ticket.approval_text = data.approval_text
    session.add(ticket)
    note = data.note
    if note is None:
        note = data.reason or data.solution or data.approval_text
        if target == lifecycle.PLANNED and data.at is not None:
            note = data.at.isoformat() + (f" ({data.place})" if data.place else "")
    change = StatusChange(ticket_id=ticket.id, at=now, from_status=previous, to_status=target, by=by, note=note)
    session.add(change)
    return change


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:  # read back from a database column: UTC by convention
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _stripped(data: StatusData) -> StatusData:
    """Blank texts count as absent, so that '   ' is not a reason."""

    def clean(value: str | None) -> str | None:
        return value.strip() or None if isinstance(value, str) else value

    return replace(data, reason=clean(data.reason), waiting_reason=clean(data.waiting_reason),
                   place=clean(data.place), solution=clean(data.solution),
                   approval_text=clean(data.approval_text), note=clean(data.note))


def solved_due(session: Session, now: datetime, close_after_days: int) -> list[Ticket]:
    """Solved tickets whose ``close_after_days`` have passed at ``now``."""
    cutoff = _utc(now) - timedelta(days=close_after_days)
    return list(session.exec(
        select(Ticket).where(Ticket.status == lifecycle.SOLVED, col(Ticket.solved_at).is_not(None))
        .where(col(Ticket.solved_at) <= cutoff).order_by(col(Ticket.id))
    ))


def latest_public_update(session: Session, ticket: Ticket) -> str | None:
    """The latest public comment or mail text on the ticket (for Waiting/Postponed mails)."""
    msg = session.exec(
        select(TicketMessage)
        .where(TicketMessage.ticket_id == ticket.id, TicketMessage.internal == False)  # noqa: E712
        .where(col(TicketMessage.direction).in_(("in", "note")))
        .order_by(col(TicketMessage.created_at).desc(), col(TicketMessage.id).desc())
    ).first()
    return msg.body_text if msg else None


def search_tickets(
    session: Session, *, status: str | None = None, text: str | None = None, include_closed: bool = False
) -> list[Ticket]:
    """The manual's search: number, title, status, name and personal reference.

    With no status given, Closed tickets are left out (manual §2).
    """
    return find_tickets(session, TicketQuery(statuses=(status,) if status else (), text=text,
                                             include_closed=include_closed, limit=None))


@dataclass(frozen=True)
class TicketQuery:
    """A search of tickets: every field given narrows it.  ``text`` is the manual's search
    (number, title, status, name, e-mail or personal reference); ``person`` an e-mail or a
    name of the reporting or affected person; ranges are inclusive.  With no status,
    Closed tickets are left out unless ``include_closed``.  ``after_id``: the page after
    that ticket (in id order); ``limit`` None: all."""

    text: str | None = None
    number: str | None = None
    title: str | None = None
    statuses: tuple[str, ...] = ()
    person: str | None = None
    reference: str | None = None
    process: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    include_closed: bool = False
    after_id: int | None = None
    limit: int | None = 50


def _people_like(like: str):
    return select(Person.id).where(or_(Person.name.ilike(like), Person.email.ilike(like)))  # type: ignore[attr-defined]


def find_tickets(session: Session, q: TicketQuery) -> list[Ticket]:
    """The tickets ``q`` asks for, in id order (ValueError, LifecycleError: a bad status)."""
    query = select(Ticket)
    if q.statuses:
        query = query.where(col(Ticket.status).in_([lifecycle.canonical_status(s) for s in q.statuses]))
    elif not q.include_closed:
        query = query.where(Ticket.status != lifecycle.CLOSED)
    if q.text:
        like = f"%{q.text.strip().lower()}%"
        people = _people_like(like)
        query = query.where(
            or_(
                col(Ticket.number).ilike(like),
                col(Ticket.title).ilike(like),
                col(Ticket.status).ilike(like),
                col(Ticket.personal_reference).ilike(like),
                col(Ticket.reporting_person_id).in_(people),
                col(Ticket.affected_person_id).in_(people),
            )
        )
    if q.number:
        query = query.where(Ticket.number == q.number.strip().upper())
    if q.title:
        query = query.where(col(Ticket.title).ilike(f"%{q.title.strip()}%"))
    if q.reference:
        query = query.where(func.lower(Ticket.personal_reference) == q.reference.strip().strip("#").lower())
    if q.process:
        query = query.where(Ticket.process == q.process)
    if q.person:
        people = _people_like(f"%{q.person.strip().lower()}%")
        query = query.where(or_(col(Ticket.reporting_person_id).in_(people),
                                col(Ticket.affected_person_id).in_(people)))
    for column, low, high in ((Ticket.created_at, q.created_from, q.created_to),
                              (Ticket.updated_at, q.updated_from, q.updated_to)):
        if low is not None:
            query = query.where(col(column) >= low)
        if high is not None:
            query = query.where(col(column) <= high)
    if q.after_id is not None:
        query = query.where(col(Ticket.id) > q.after_id)
    query = query.order_by(col(Ticket.id))
    if q.limit is not None:
        query = query.limit(q.limit)
    return list(session.exec(query))

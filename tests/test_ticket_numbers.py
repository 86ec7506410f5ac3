"""Ticket numbers: one series a process, never given twice.  SQLite takes them from the
counter table (gapless: one writer at a time); PostgreSQL from a sequence a process
(store revision 0003), which holds no lock until the commit, so two workers open
tickets side by side and take several mails a transaction; a number taken by a
transaction that is rolled back is skipped there."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import Session

from store import schema
from store.db import make_engine, session_for
from store.models import Counter, Person
from store.tickets import REHEARSAL, add_person, create_ticket, next_number


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def new_ticket(engine, title: str, *, commit: bool = True, process: str = "incident") -> str:
    with session_for(engine) as session:
        person = session.get(Person, 1) or add_person(session, "jeanne@example.be", "Jeanne")
        number = create_ticket(session, process=process, title=title, description="", reporter=person).number
        if commit:
            session.commit()
        else:
            session.rollback()
        return number


def test_numbers_continue_across_the_upgrade_and_back(engine):
    """A database at 0002 whose counter stood at 41 gives INC-000042 next, on both; the
    downgrade leaves the counter at the last number given."""
    schema.upgrade(engine, "0002")
    with Session(engine) as session:
        counter = session.get(Counter, "incident")
        counter.value = 41
        session.add(counter)
        session.commit()
    schema.upgrade(engine)
    assert new_ticket(engine, "after the upgrade") == "INC-000042"
    assert new_ticket(engine, "a change", process="change") == "CHG-000001"
    assert new_ticket(engine, "next") == "INC-000043"
    schema.downgrade(engine, "0002")
    with Session(engine) as session:
        assert session.get(Counter, "incident").value == 43
        assert session.get(Counter, "change").value == 1
        assert session.get(Counter, "service-request").value == 0
    schema.upgrade(engine)
    assert new_ticket(engine, "up again") == "INC-000044"


def test_a_rolled_back_number_is_never_given_twice(engine):
    schema.ensure_current(engine)
    first = new_ticket(engine, "kept")
    lost = new_ticket(engine, "rolled back", commit=False)
    then = new_ticket(engine, "kept too")
    assert first == "INC-000001"
    if engine.dialect.name == "postgresql":  # the sequence moved on: a gap, no reuse
        assert (lost, then) == ("INC-000002", "INC-000003")
    else:  # the counter row was rolled back with the ticket
        assert (lost, then) == ("INC-000002", "INC-000002")


def test_a_rehearsal_takes_no_number(engine):
    """Processor.warm_up rehearses a mail: its made-up number is no one's."""
    schema.ensure_current(engine)
    token = REHEARSAL.set(True)
    try:
        with session_for(engine) as session:
            assert next_number(session, "incident") == "INC-000000"
            session.commit()
    finally:
        REHEARSAL.reset(token)
    assert new_ticket(engine, "first") == "INC-000001"


@pytest.mark.postgres
def test_two_transactions_take_numbers_side_by_side(postgres_url):
    """A transaction that took a number and has not committed (a worker's batch) does not
    hold up another one's number: with the counter row, the second waited for the
    first's commit.  A lock wait here fails at once (lock_timeout)."""
    engine = make_engine(postgres_url)
    try:
        schema.ensure_current(engine)
        with session_for(engine) as holding:
            assert next_number(holding, "incident") == "INC-000001"
            with session_for(engine) as other:
                other.connection().execute(text("SET LOCAL lock_timeout = '100ms'"))
                assert next_number(other, "incident") == "INC-000002"
                other.commit()
            holding.commit()
    finally:
        engine.dispose()

"""``store.db.Prepared`` (the worker's statements run on the DBAPI cursor) writes and
reads what ``Connection.execute`` would, on SQLite and PostgreSQL, and raises the same
SQLAlchemy exceptions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from store.db import Prepared
from store.models import InboundMessage

T = InboundMessage.__table__
WHEN = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=timezone.utc)


def row(i: int) -> dict:
    return dict(received_at=WHEN + timedelta(seconds=i), source="smtp", mail_from=f"a{i}@example.org",
                rcpt_to="helpdesk@localhost", message_id=f"m{i}@example.org", sha256=f"{i:064x}", size=i,
                state="received", attempts=0)


def test_insert_update_select_as_sqlalchemy_does(gw):
    fast = Prepared(insert(T).returning(T.c.id))
    with gw.engine.begin() as conn:
        ids = [fast.execute(conn, row(i)) for i in range(3)]
        slow_id = conn.execute(insert(T).returning(T.c.id), row(3)).scalar_one()
    assert ids == [slow_id - 3, slow_id - 2, slow_id - 1]
    mark = Prepared(update(T).where(T.c.id == bindparam("b_id")))
    with gw.engine.begin() as conn:
        mark.execute(conn, {"b_id": ids[1], "state": "processed", "processed_at": WHEN, "outcome": "created"})
    # Read back through SQLAlchemy: the same values, datetimes included.
    with gw.engine.connect() as conn:
        got = {r.id: r for r in conn.execute(select(T))}
    for i, row_id in enumerate(ids):
        assert got[row_id].received_at.replace(tzinfo=timezone.utc) == row(i)["received_at"]
        assert got[row_id].message_id == f"m{i}@example.org" and got[row_id].size == i
    assert got[ids[1]].state == "processed" and got[ids[1]].processed_at.replace(tzinfo=timezone.utc) == WHEN
    assert got[ids[0]].state == "received" and got[ids[0]].processed_at is None


def test_literals_in_the_statement_and_rows(gw):
    fast = Prepared(insert(T).returning(T.c.id))
    with gw.engine.begin() as conn:
        for i in range(4):
            fast.execute(conn, {**row(i), "state": "received" if i % 2 else "processed"})
    query = Prepared(select(T.c.id, T.c.message_id).where(T.c.state == "received", T.c.size >= bindparam("b_min"))
                     .order_by(T.c.id).limit(bindparam("b_limit")))
    with gw.engine.connect() as conn:
        assert [m for _, m in query.rows(conn, {"b_min": 0, "b_limit": 10})] == ["m1@example.org", "m3@example.org"]
        assert query.rows(conn, {"b_min": 2, "b_limit": 1})[0][1] == "m3@example.org"
        # A datetime result needs SQLAlchemy's processing (SQLite keeps text): handed to it.
        when = Prepared(select(T.c.received_at).where(T.c.message_id == bindparam("b_mid")))
        (value,) = when.rows(conn, {"b_mid": "m2@example.org"})[0]
        assert isinstance(value, datetime)
        # So is an expanding IN.
        among = Prepared(select(T.c.id).where(T.c.message_id.in_(bindparam("b_mids", expanding=True))))
        assert len(among.rows(conn, {"b_mids": ["m0@example.org", "m1@example.org", "nope"]})) == 2


def test_errors_are_sqlalchemys(gw):
    fast = Prepared(insert(T).returning(T.c.id))
    with gw.engine.connect() as conn:
        with conn.begin():
            fast.execute(conn, row(1))
        with pytest.raises(IntegrityError):
            with conn.begin():
                fast.execute(conn, row(1))  # the unique (message_id, sha256)


def test_inside_a_rolled_back_transaction_nothing_stays(gw):
    """It runs in the connection's transaction (and savepoints), not beside it."""
    fast = Prepared(insert(T).returning(T.c.id))
    with gw.engine.connect() as conn:
        tx = conn.begin()
        fast.execute(conn, row(1))
        nested = conn.begin_nested()
        fast.execute(conn, row(2))
        nested.rollback()
        fast.execute(conn, row(3))
        assert [m for (m,) in conn.execute(select(T.c.message_id).order_by(T.c.id))] == ["m1@example.org",
                                                                                        "m3@example.org"]
        tx.rollback()
    with gw.engine.connect() as conn:
        assert conn.execute(select(T.c.id)).all() == []


def test_given_a_session_it_runs_in_the_sessions_savepoints(gw):
    """Given a Session, it takes the session's connection (store.db.connection_of, which
    remembers it for the transaction): a savepoint begun after an earlier statement is
    still emitted and still undoes what ran in it, and after a commit the next statement
    runs in a new transaction."""
    from sqlmodel import Session

    fast = Prepared(insert(T).returning(T.c.id))
    with Session(gw.engine) as session:
        fast.execute(session, row(1))
        nested = session.begin_nested()
        fast.execute(session, row(2))
        nested.rollback()
        nested = session.begin_nested()
        fast.execute(session, row(3))
        nested.commit()
        fast.execute(session, row(4))
        session.commit()
        fast.execute(session, row(5))
        session.rollback()
        fast.execute(session, row(6))
        session.commit()
    with gw.engine.connect() as conn:
        assert [m for (m,) in conn.execute(select(T.c.message_id).order_by(T.c.id))] == [
            "m1@example.org", "m3@example.org", "m4@example.org", "m6@example.org"]

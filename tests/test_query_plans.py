"""The statements the worker runs for every mail look rows up by index: none reads a
table that grows with the store from end to end (SQLite's EXPLAIN QUERY PLAN).  The
rate limit's count did (``SCAN ticketmessage``) until store revision 0002."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from gateway.ingest import statements
from store.db import Prepared

WHEN = datetime(2026, 11, 28, tzinfo=timezone.utc)

# Per statement: parameters to plan it with.
PER_MAIL = {
    "rate limit (over_rate)": (statements.RECENT_FROM, {"b_from": "marie@example.org", "b_since": WHEN, "b_limit": 21}),
    "duplicate Message-ID (gather)": (statements.SAME_MESSAGE_ID, {"b_mid": "abc@example.org"}),
    "sender (sender_of)": (statements.PERSON_BY_EMAIL, {"b_email": "marie@example.org"}),
    "claim": (statements.CLAIM, {"b_id": 1}),
    "original still waiting (_parent_waiting)": (statements.PARENT_WAITING, {"b_mid": "abc@example.org", "b_id": 9}),
}


def plan(conn, prepared: Prepared, params: dict) -> list[str]:
    compiled = prepared.statement.compile(dialect=conn.dialect)
    args = {k: (v.isoformat(sep=" ") if isinstance(v, datetime) else v)
            for k, v in compiled.construct_params(params).items()}
    ordered = tuple(args[name] for name in compiled.positiontup)
    raw = conn.connection.dbapi_connection
    return [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + compiled.string, ordered)]


@pytest.mark.parametrize("name", sorted(PER_MAIL))
def test_per_mail_statements_use_an_index(sqlite_gw, name):
    statement, params = PER_MAIL[name]
    with sqlite_gw.engine.connect() as conn:
        steps = plan(conn, statement, params)
    assert steps and all(not step.startswith("SCAN ") for step in steps), steps


def test_the_rate_limit_index_exists(sqlite_gw):
    with sqlite_gw.engine.connect() as conn:
        names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    assert "ix_ticketmessage_from_addr_created_at" in names

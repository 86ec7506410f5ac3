"""Single-use approval decisions (issue 19): an approval request is decided once,
whatever instance reads the answer, even when two instances read two copies of it at the
same moment (the real PostgreSQL, two gateways on it)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import func, select, text

from gateway.ingest.inbound import store_raw
from store import lifecycle
from store.db import session_for
from store.models import ApprovalDecision, Outbox, StatusChange
from conftest import POSTGRES_URL
from harness.ingest import make_app
from harness.approvals import ANSWERS, ask_approval, gmail, outbox, service_request, status


def _blocked_behind(conn, me: int) -> int:
    """How many backends wait, directly or in a queue, behind the backend ``me``."""
    found = {me}
    while True:
        rows = conn.execute("select pid, pg_blocking_pids(pid) from pg_stat_activity").fetchall()
        more = {pid for pid, blockers in rows if pid not in found and set(blockers or ()) & found}
        if not more:
            return len(found) - 1
        found |= more


def _decisions(app, number_id: int) -> tuple[int, int, int]:
    with app.engine.connect() as conn:
        changes = conn.execute(select(func.count()).select_from(StatusChange)
                               .where(StatusChange.ticket_id == number_id,
                                      StatusChange.from_status == lifecycle.APPROVAL)).scalar()
        recorded = conn.execute(select(func.count()).select_from(Outbox)
                                .where(Outbox.ticket_id == number_id, Outbox.event == "approval-recorded")).scalar()
        rows = conn.execute(select(func.count()).select_from(ApprovalDecision)).scalar()
    return changes, recorded, rows


@pytest.mark.postgres
def test_an_answer_replayed_to_another_instance_at_the_same_moment_decides_once(tmp_path, postgres_url):
    one = make_app(tmp_path / "one", database_url=postgres_url)
    two = make_app(tmp_path / "two", database_url=postgres_url)
    try:
        number = service_request(one, "en")
        request = ask_approval(one, number, "en")
        answer, meant = ANSWERS[("en", "gmail")]
        raw = gmail("en", answer, request)
        # The same answer through a second relay: other bytes (a Received line more), the
        # same Message-ID, stored by the other instance's door.
        replay = b"Received: from relay2.client.example by mx2.example; Fri, 27 Nov 2026 11:15:45 +0100\n" + raw
        first = store_raw(one.engine, one.blobs, raw, source="smtp").id
        second = store_raw(two.engine, two.blobs, replay, source="smtp").id
        with session_for(one.engine) as s:
            ticket_id = s.exec(text("select id from ticket where number = :n").bindparams(n=number)).scalar()
        # Hold the ticket's row, so that both instances have read the ticket in Approval
        # and wait to write it: the moment two hosts decide at once.
        schema = postgres_url.rsplit("%3D", 1)[1]
        holder = psycopg.connect(POSTGRES_URL)
        holder.execute(f"set search_path to {schema}")
        holder.execute("select id from ticket where id = %s for update", (ticket_id,))
        me = holder.execute("select pg_backend_pid()").fetchone()[0]
        outcomes = {}
        threads = [threading.Thread(target=lambda app, i: outcomes.__setitem__(i, app.processor.process(i)),
                                    args=(app, i)) for app, i in ((one, first), (two, second))]
        watcher = psycopg.connect(POSTGRES_URL, autocommit=True)
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while _blocked_behind(watcher, me) < 2:
                assert time.monotonic() < deadline, "the two instances did not both wait for the ticket"
                time.sleep(0.05)
            holder.rollback()
            for t in threads:
                t.join(timeout=60)
        finally:
            holder.close()
            watcher.close()
        got = sorted(o.outcome for o in outcomes.values())
        assert got == ["approval", "retry"], outcomes
        assert _decisions(one, ticket_id) == (1, 1, 1)
        assert status(one, number) == (lifecycle.IN_PROGRESS if meant == "approve" else lifecycle.REJECTED)
        # Taken again: the request is decided; the copy is a comment and decides nothing.
        again = [i for i, o in outcomes.items() if o.outcome == "retry"][0]
        later = (one if again == first else two).processor.process(again)
        assert later.outcome != "approval" and later.outcome != "quarantined", later
        assert _decisions(one, ticket_id) == (1, 1, 1)
        assert [r.event for r in outbox(one, number)].count("approval-recorded") == 1
    finally:
        one.engine.dispose()
        two.engine.dispose()


def test_a_replayed_answer_after_the_request_was_decided_decides_nothing(tmp_path, database_url):
    app = make_app(tmp_path, database_url=database_url)
    try:
        number = service_request(app, "en")
        request = ask_approval(app, number, "en")
        answer, meant = ANSWERS[("en", "gmail")]
        raw = gmail("en", answer, request)
        first = app.processor.process(store_raw(app.engine, app.blobs, raw, source="smtp").id)
        assert first.outcome == "approval"
        replay = b"Received: from relay2.client.example by mx2.example; Fri, 27 Nov 2026 11:15:45 +0100\n" + raw
        later = app.processor.process(store_raw(app.engine, app.blobs, replay, source="smtp").id)
        assert later.outcome != "approval", later
        with session_for(app.engine) as s:
            ticket_id = s.exec(text("select id from ticket where number = :n").bindparams(n=number)).scalar()
        assert _decisions(app, ticket_id) == (1, 1, 1)
    finally:
        app.engine.dispose()

"""`gateway status`: what came in and went out last, what is stuck, and exit 1 when a
person is needed (a monitoring system runs it), on both databases."""

from __future__ import annotations

import json
from datetime import timedelta

from conftest import run_gateway
from ingest_helpers import customer_mail, make_app
from sqlmodel import select

from gateway.commands.status import gather
from gateway.ingest.inbound import store_raw
from store.db import session_for
from store.models import InboundMessage, Outbox, utcnow

MAILBOX = '''
[[mailboxes]]
name = "desk"
host = "127.0.0.1"
user = "desk"
password_env = "DESK_PASSWORD"
'''


def test_flowing_mail_is_ok_and_what_is_stuck_is_named(tmp_path, database_url):
    app = make_app(tmp_path, MAILBOX, database_url=database_url)
    now = utcnow()
    quiet = gather(app, now=now)
    assert quiet.problems == [] and quiet.last_received == {"smtp": None, "imap:desk": None}

    # A mail in by SMTP, not processed yet: fine for a while, a problem after --max-wait.
    stored = store_raw(app.engine, app.blobs, customer_mail(), source="smtp", rcpt_to=("helpdesk@localhost",))
    with session_for(app.engine) as session:
        received = session.get(InboundMessage, stored.id).received_at
    soon = gather(app, now=now + timedelta(minutes=5))
    assert soon.waiting == 1 and soon.problems == []
    assert soon.last_received["smtp"] is not None and soon.last_received["imap:desk"] is None
    late = gather(app, now=now + timedelta(minutes=11))
    assert len(late.problems) == 1 and "1 mail(s) waiting to be processed" in late.problems[0]
    assert gather(app, max_wait=30, now=now + timedelta(minutes=11)).problems == []

    # Processed: nothing waits; its confirmation is pending, and overdue once the relay
    # has not taken it for --max-wait minutes.
    assert app.processor.process(stored.id).outcome == "created"
    done = gather(app, now=now + timedelta(minutes=1))
    assert (done.waiting, done.outbox_pending, done.outbox_overdue, done.problems) == (0, 1, 0, [])
    stuck = gather(app, now=now + timedelta(minutes=20))
    assert stuck.outbox_overdue == 1 and ["notification(s) overdue" in p for p in stuck.problems] == [True]

    # A notification that failed for good, in the last day: a problem until it is old.
    with session_for(app.engine) as session:
        row = session.exec(select(Outbox)).one()
        row.state = "failed"
        session.add(row)
        session.commit()
    failed = gather(app, now=now + timedelta(minutes=1))
    assert failed.outbox_failed == failed.outbox_failed_24h == 1
    assert ["failed for good in the last 24 hours" in p for p in failed.problems] == [True]
    assert gather(app, now=now + timedelta(days=2)).outbox_failed_24h == 0

    # A way in that has gone quiet, when asked to watch for it: the mailbox never brought any.
    watched = gather(app, quiet_hours=1, now=received + timedelta(minutes=30))
    assert [p for p in watched.problems if "no mail for" in p] == [
        "imap:desk: no mail for over 1 h (last: never): gateway imap check desk"]
    app.engine.dispose()


def test_retries_and_a_growing_quarantine(tmp_path, database_url):
    app = make_app(tmp_path, database_url=database_url)
    ids = [store_raw(app.engine, app.blobs, customer_mail(subject=f"mail {k}"), source="smtp").id for k in range(3)]
    with session_for(app.engine) as session:
        for inbound_id, (state, attempts) in zip(ids, [("received", 1), ("quarantined", 3), ("quarantined", 0)]):
            row = session.get(InboundMessage, inbound_id)
            row.state, row.attempts, row.processed_at = state, attempts, utcnow() if state != "received" else None
            session.add(row)
        session.commit()
    status = gather(app)
    assert (status.retrying, status.quarantined, status.quarantined_24h) == (1, 2, 2)
    assert ["failed to be processed" in p for p in status.problems] == [True]
    assert len(gather(app, max_quarantined=1).problems) == 2
    assert len(gather(app, max_quarantined=2).problems) == 1
    app.engine.dispose()


def test_the_command_exits_1_with_the_problems_for_a_monitoring_system(tmp_path):
    app = make_app(tmp_path)
    ok = run_gateway("status", cwd=tmp_path)
    assert ok.stdout.decode().rstrip().endswith("OK")
    store_raw(app.engine, app.blobs, customer_mail(), source="smtp")
    with session_for(app.engine) as session:
        row = session.exec(select(InboundMessage)).one()
        row.received_at = utcnow() - timedelta(hours=1)
        session.add(row)
        session.commit()
    app.engine.dispose()
    text = run_gateway("status", cwd=tmp_path, check=False)
    assert text.returncode == 1 and "PROBLEM: 1 mail(s) waiting to be processed" in text.stdout.decode()
    data = run_gateway("status", "--json", "--max-wait", "120", cwd=tmp_path, check=False)
    assert data.returncode == 0 and json.loads(data.stdout)["waiting"] == 1

"""One holder at a time (issue 19): the closer and each IMAP mailbox have a lease, taken
over within seconds when its holder dies; on SQLite and on the real PostgreSQL, and with
two real ``gateway serve`` on one real Dovecot mailbox."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.lease import RENEW_EVERY, Lease
from store.models import Lease as LeaseRow
from harness.instances import Instance
from harness.ingest import make_app
from harness.dovecot import dovecot, dovecot_ok, make_dovecot  # noqa: F401 (fixtures)
from harness.imap import ENV, config_text, mail, wait_until


def _holder(engine, name: str) -> str | None:
    with engine.connect() as conn:
        row = conn.execute(select(LeaseRow.holder).where(LeaseRow.name == name)).first()
    return None if row is None else row[0]


def test_a_lease_has_one_holder_until_it_runs_out_or_is_given_up(tmp_path, database_url):
    app = make_app(tmp_path, database_url=database_url)
    try:
        a = Lease(app.engine, "closer", "host-a:1", seconds=1.5)
        b = Lease(app.engine, "closer", "host-b:2", seconds=1.5)
        assert a.acquire() and not b.acquire()
        assert a.acquire()  # renewed by its holder
        assert not b.acquire()
        time.sleep(1.7)  # a stopped renewing: it died
        assert b.acquire() and not a.acquire()
        assert _holder(app.engine, "closer") == "host-b:2"
        b.release()
        assert a.acquire()
        # Another name is another lease.
        assert Lease(app.engine, "imap:desk", "host-b:2").acquire()
    finally:
        app.engine.dispose()


def test_a_kept_lease_is_renewed_and_its_holder_told_when_it_is_lost(tmp_path, database_url):
    app = make_app(tmp_path, database_url=database_url)
    try:
        a = Lease(app.engine, "imap:desk", "host-a:1", seconds=RENEW_EVERY + 1.0)
        assert a.acquire()
        keeper = a.keep(threading.Event())
        time.sleep(2 * RENEW_EVERY + 1.5)  # longer than the lease: renewed meanwhile
        assert not keeper.lost.is_set()
        assert not Lease(app.engine, "imap:desk", "host-b:2").acquire()
        # Taken from under it (an operator's cleanup, a clock far off): its holder is told.
        with app.engine.begin() as conn:
            conn.execute(LeaseRow.__table__.update().values(holder="host-b:2"))
        assert keeper.lost.wait(RENEW_EVERY + 2)
        keeper.end()
    finally:
        app.engine.dispose()


def test_the_closer_runs_once_at_a_time(tmp_path, database_url):
    from gateway.service import close_due

    app = make_app(tmp_path, database_url=database_url)
    try:
        other = Lease(app.engine, "closer", "another-host:9")
        assert other.acquire()
        assert close_due(app) == []  # skipped: another instance's closer runs
        assert _holder(app.engine, "closer") == "another-host:9"
        other.release()
        close_due(app)  # runs, and gives the lease up at the end of its pass
        assert _holder(app.engine, "closer") is None
    finally:
        app.engine.dispose()


@pytest.mark.postgres
def test_two_serves_on_one_mailbox_the_holder_killed_the_other_takes_over(tmp_path, dovecot, postgres_url):
    """Two ``gateway serve`` (own folders and ports, one PostgreSQL) read one real Dovecot
    mailbox; the one holding it is SIGKILLed mid-way; the other takes it over within 10 s,
    and every message ends in the processed folder once, in one ticket."""
    tag = uuid.uuid4().hex[:8]
    extra = config_text(dovecot, poll_interval=1)
    one = Instance(tmp_path / "one", postgres_url, extra, env=ENV).start()
    two = Instance(tmp_path / "two", postgres_url, extra, env=ENV).start()
    app = make_app(tmp_path / "reader", database_url=postgres_url)
    try:
        wait_until(lambda: _holder(app.engine, "imap:desk") is not None, timeout=180)
        first = _holder(app.engine, "imap:desk")
        pid = int(first.split(":")[1])
        holder, other = (one, two) if pid in one.pids() else (two, one)
        assert pid in holder.pids()
        # Ten at a time, so the kill comes while it works.
        batches = [[mail(i, tag) for i in range(k, k + 10)] for k in range(0, 40, 10)]
        dovecot.append("INBOX", batches[0])
        wait_until(lambda: len(dovecot.message_ids("processed")) >= 3, timeout=120)
        dovecot.append("INBOX", batches[1])
        holder.kill()
        killed_at = time.monotonic()
        took = wait_until(lambda: (_holder(app.engine, "imap:desk") or first) != first, timeout=20)
        after = time.monotonic() - killed_at
        assert after <= 10, f"taken over after {after:.1f} s"
        new = int(_holder(app.engine, "imap:desk").split(":")[1])
        assert new in other.pids()
        dovecot.append("INBOX", batches[2])
        holder.start()  # the failed host comes back: it waits, the other keeps the mailbox
        dovecot.append("INBOX", batches[3])
        expected = sorted(f"<{tag}-{i}@example.org>" for i in range(40))
        wait_until(lambda: dovecot.message_ids("processed") == expected, timeout=180)
        time.sleep(2)  # nothing moved twice a moment later either
        assert dovecot.message_ids("processed") == expected
        assert dovecot.message_ids("INBOX") == []
        assert int(_holder(app.engine, "imap:desk").split(":")[1]) in other.pids()
        with app.engine.connect() as conn:
            from sqlalchemy import text

            per_mail = conn.execute(text("select i.message_id, count(distinct t.id) from inboundmessage i "
                                         "join ticketmessage m on m.inbound_id = i.id join ticket t "
                                         "on t.id = m.ticket_id group by i.message_id")).all()
        assert sorted(mid for mid, _n in per_mail) == [e.strip("<>") for e in expected] or \
            sorted(mid for mid, _n in per_mail) == expected
        assert {n for _mid, n in per_mail} == {1}
        assert took >= 0
    finally:
        for inst in (one, two):
            inst.stop()
        app.engine.dispose()


def test_a_dead_hosts_claimed_notifications_are_taken_back_once_its_heartbeat_stops(tmp_path, database_url):
    """Outbox claims last 15 minutes; a deliverer of another host that died is known by
    its heartbeat, and its rows are sent by another deliverer without waiting that long."""
    from datetime import timedelta

    from gateway.outbound.outbox import release_dead_claims
    from store.models import Outbox, ServiceProcess, utcnow
    from harness.ingest import customer_mail, receive

    app = make_app(tmp_path, database_url=database_url)
    try:
        receive(app, customer_mail(sender="marie@example.be"))
        receive(app, customer_mail(sender="jan@example.be"))
        now = utcnow()
        with app.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(select(Outbox.id).order_by(Outbox.id))]
            assert len(ids) == 2
            for outbox_id, who in zip(ids, ("far-host:4242", "near-host:77")):
                conn.execute(Outbox.__table__.update().where(Outbox.id == outbox_id)
                             .values(claimed_by=who, claimed_until=now + timedelta(minutes=15)))
            for host, pid, seen in (("far-host", 4242, now - timedelta(minutes=2)), ("near-host", 77, now)):
                conn.execute(ServiceProcess.__table__.insert().values(
                    host=host, pid=pid, instance=f"{host}:1", role="deliverer", version="x", started_at=now,
                    last_seen=seen))
        assert release_dead_claims(app.engine, timedelta(seconds=30), now=now) == 1
        with app.engine.connect() as conn:
            claims = dict(conn.execute(select(Outbox.id, Outbox.claimed_by)).all())
        assert claims == {ids[0]: None, ids[1]: "near-host:77"}
        # Without heartbeats to go by, another host's claim is left to its lease.
        assert release_dead_claims(app.engine) == 0
    finally:
        app.engine.dispose()


def test_a_dead_deliverers_mail_is_sent_again_unless_the_relay_was_given_its_end(tmp_path, database_url):
    """SMTP cannot say whether a mail whose dot went out was taken: the deliverer writes
    down that it is giving the relay the end, and a mail so marked when its deliverer
    died counts as sent (one copy at the relay), the others are sent again."""
    import socket
    import subprocess
    import sys
    from datetime import timedelta

    from gateway.outbound.outbox import release_dead_claims
    from store.models import DeliveryAttempt, Outbox, utcnow
    from harness.ingest import customer_mail, receive

    app = make_app(tmp_path, database_url=database_url)
    try:
        receive(app, customer_mail(sender="marie@example.be"))
        receive(app, customer_mail(sender="jan@example.be"))
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()  # a pid that no longer runs
        dead = f"{socket.gethostname()}:{gone}"
        now = utcnow()
        with app.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(select(Outbox.id).order_by(Outbox.id))]
            conn.execute(Outbox.__table__.update().values(claimed_by=dead, claimed_until=now + timedelta(minutes=15)))
            conn.execute(Outbox.__table__.update().where(Outbox.id == ids[0]).values(handed_at=now))
        assert release_dead_claims(app.engine) == 1
        with app.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(select(Outbox.id, Outbox.state, Outbox.claimed_by, Outbox.handed_at))}
            attempts = conn.execute(select(DeliveryAttempt.outbox_id, DeliveryAttempt.outcome)).all()
        assert (rows[ids[0]].state, rows[ids[0]].claimed_by, rows[ids[0]].handed_at) == ("sent", None, None)
        assert (rows[ids[1]].state, rows[ids[1]].claimed_by) == ("pending", None)
        assert attempts == [(ids[0], "sent")]
    finally:
        app.engine.dispose()

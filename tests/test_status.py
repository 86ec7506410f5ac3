"""`gateway status`: what came in and went out last, what is stuck, and exit 1 when a
person is needed (a monitoring system runs it), on both databases.  With no option it
fails on each silent failure of issue 16: a relay refusing, the service not running,
mail quarantined in the last day, a mailbox whose last poll failed."""

from __future__ import annotations

import json
from datetime import timedelta

from conftest import run_gateway
from harness.ingest import customer_mail, make_app
from harness.dovecot import dovecot_ok, make_dovecot  # noqa: F401 (fixtures: a real Dovecot)
from sqlmodel import select

from gateway.commands.status import gather
from gateway.heartbeat import Heartbeat, instance_of, mark_stopped
from gateway.ingest.inbound import store_raw
from store.db import session_for
from store.models import InboundMessage, Outbox, utcnow


def serve_beats(app, at, role: str = "door", instance: str | None = None, pid: int | None = None) -> Heartbeat:
    """A heartbeat of a gateway serve's process at ``at``, as the running service writes it
    (``pid``: another process than this one)."""
    beat = Heartbeat(app.engine, role, instance or instance_of(), app.config.monitoring.heartbeat_interval)
    beat.pid = pid or beat.pid
    beat.beat(now=at)
    return beat


def problems_at(app, at, **kw) -> list[str]:
    """gather's problems with the service running (its heartbeat at ``at``)."""
    serve_beats(app, at)
    return gather(app, now=at, **kw).problems

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
    serve_beats(app, now)
    quiet = gather(app, now=now)
    assert quiet.problems == [] and quiet.last_received == {"smtp": None, "imap:desk": None}

    # A mail in by SMTP, not processed yet: fine for a while, a problem after --max-wait.
    stored = store_raw(app.engine, app.blobs, customer_mail(), source="smtp", rcpt_to=("helpdesk@localhost",))
    with session_for(app.engine) as session:
        received = session.get(InboundMessage, stored.id).received_at
    serve_beats(app, now + timedelta(minutes=5))
    soon = gather(app, now=now + timedelta(minutes=5))
    assert soon.waiting == 1 and soon.problems == []
    assert soon.last_received["smtp"] is not None and soon.last_received["imap:desk"] is None
    late = problems_at(app, now + timedelta(minutes=11))
    assert len(late) == 1 and "1 mail(s) waiting to be processed" in late[0]
    assert problems_at(app, now + timedelta(minutes=11), max_wait=30) == []

    # Processed: nothing waits; its confirmation is pending, and overdue once the relay
    # has not taken it for --max-wait minutes.
    assert app.processor.process(stored.id).outcome == "created"
    serve_beats(app, now + timedelta(minutes=1))
    done = gather(app, now=now + timedelta(minutes=1))
    assert (done.waiting, done.outbox_pending, done.outbox_overdue, done.problems) == (0, 1, 0, [])
    serve_beats(app, now + timedelta(minutes=20))
    stuck = gather(app, now=now + timedelta(minutes=20))
    assert stuck.outbox_overdue == 1 and ["notification(s) overdue" in p for p in stuck.problems] == [True]

    # A notification that failed for good, in the last day: a problem until it is old.
    with session_for(app.engine) as session:
        row = session.exec(select(Outbox)).one()
        row.state = "failed"
        session.add(row)
        session.commit()
    serve_beats(app, now + timedelta(minutes=1))
    failed = gather(app, now=now + timedelta(minutes=1))
    assert failed.outbox_failed == failed.outbox_failed_24h == 1
    assert ["failed for good in the last 24 hours" in p for p in failed.problems] == [True]
    assert gather(app, now=now + timedelta(days=2)).outbox_failed_24h == 0

    # A way in that has gone quiet, when asked to watch for it: the mailbox never brought any.
    watched = problems_at(app, received + timedelta(minutes=30), quiet_hours=1)
    assert [p for p in watched if "no mail for" in p] == [
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
    now = utcnow()
    serve_beats(app, now)
    status = gather(app, now=now, max_quarantined=None)
    assert (status.retrying, status.quarantined, status.quarantined_24h) == (1, 2, 2)
    assert ["failed to be processed" in p for p in status.problems] == [True]
    assert len(gather(app, now=now, max_quarantined=1).problems) == 2
    assert len(gather(app, now=now, max_quarantined=2).problems) == 1
    app.engine.dispose()


def test_the_command_exits_1_with_the_problems_for_a_monitoring_system(tmp_path):
    app = make_app(tmp_path)
    beat = serve_beats(app, utcnow()).start()  # as a running gateway serve: every interval
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
    beat.stop()
    app.engine.dispose()


# One test per silent failure of issue 16, each caught with no option ---------------------
def test_a_relay_refusing_or_not_answering_its_last_attempts_is_a_problem(tmp_path, database_url):
    """A real relay on loopback refuses (554, then 451) three notifications in a row, then
    stops answering at all (its port closed): status fails by default, naming the last
    answer; once a mail goes through, it passes again."""
    from harness.relay import drain, open_ticket, relay_config, running_relay

    with running_relay() as relay:
        app = make_app(tmp_path, relay_config(tmp_path, relay.port).read_text(), database_url=database_url)
        now = utcnow()
        for k in range(3):
            open_ticket(app, title=f"Printer {k}", email=f"user{k}@example.org", now=now)
        relay.script = ["554 5.7.1 Relay access denied", "451 4.3.0 Try later", "554 5.7.1 Relay access denied"]
        assert [r.outcome for _, r in drain(app, now)] == ["permanent", "temporary", "permanent"]
        refused = problems_at(app, now)
        assert [p for p in refused if p.startswith("the relay")] == [
            f"the relay refused or did not answer the last 3 delivery attempts (the last at "
            f"{now.isoformat(timespec='seconds')}: DATA: 554 5.7.1 Relay access denied): check [outbound.smtp] and the "
            f"relay (gateway outbox list --state pending)"]
        # Two failures in a row are not yet [monitoring] relay_failures (3).
        open_ticket(app, title="Monitor", email="user9@example.org", now=now)
        assert [r.outcome for _, r in drain(app, now)] == ["sent"]
        relay.script = ["451 4.3.0 Try later", "451 4.3.0 Try later"]
        for k in range(2):
            open_ticket(app, title=f"Keyboard {k}", email=f"kb{k}@example.org", now=now)
        drain(app, now)
        assert not [p for p in problems_at(app, now) if p.startswith("the relay")]
    # The relay is gone (connection refused): the third failure in a row.
    open_ticket(app, title="Mouse", email="mouse@example.org", now=now)
    later = now + timedelta(hours=2)
    assert {r.outcome for _, r in drain(app, later)} == {"temporary"}
    gone = [p for p in problems_at(app, later) if p.startswith("the relay")]
    assert len(gone) == 1 and "the last 3 delivery attempts" in gone[0]
    app.engine.dispose()


def test_a_service_not_running_is_a_problem(tmp_path, database_url):
    """No heartbeat ever, a heartbeat gone stale (killed with the host), a clean stop, a
    worker its parent saw die: each fails status by default; a running instance and a
    restarted worker pass."""
    app = make_app(tmp_path, database_url=database_url)
    now = utcnow()
    assert gather(app, now=now).problems == [
        "gateway serve has never run against this database (no heartbeat): nothing receives, processes or "
        "delivers mail"]
    door = serve_beats(app, now, "door", "host-a:100", pid=100)
    worker = serve_beats(app, now, "worker-0", "host-a:100", pid=101)
    assert gather(app, now=now).problems == []
    # Three heartbeats missed ([monitoring] heartbeat_interval = 10 s): not running.
    silent = gather(app, now=now + timedelta(seconds=31)).problems
    assert silent == [f"gateway serve is not running: the last heartbeat came at {now.isoformat(timespec='seconds')}"
                      f" from door of host-a:100"]
    # A worker killed (its parent marks it) while the door runs: named, with how it died.
    mark_stopped(app.engine, worker_host(worker), worker.pid, "killed by SIGKILL (signal 9)")
    died = gather(app, now=now).problems
    assert len(died) == 1 and died[0].startswith("worker-0 of gateway serve host-a:100: pid ")
    assert "killed by SIGKILL (signal 9)" in died[0]
    # Its replacement beats: the dead row is replaced, nothing to say.
    replacement = Heartbeat(app.engine, "worker-0", "host-a:100", 10)
    replacement.pid = worker.pid + 1
    replacement.beat(now=now)
    assert gather(app, now=now).problems == []
    # Stopped cleanly: with no other instance, the service is not running either.
    door.stop()
    mark_stopped(app.engine, worker_host(worker), replacement.pid, None)
    stopped = gather(app, now=now).problems
    assert len(stopped) == 1 and stopped[0].startswith("gateway serve is not running") and "(stopped)" in stopped[0]
    # ... but an instance stopped on purpose is no problem while another one runs.
    serve_beats(app, now, "door", "host-b:200", pid=200)
    assert gather(app, now=now).problems == []
    # As the monitoring system runs it, a minute after host-b's last heartbeat.
    serve_beats(app, utcnow() - timedelta(minutes=1), "door", "host-b:200", pid=200)
    out = run_gateway("status", "--json", cwd=tmp_path, check=False)
    assert out.returncode == 1
    assert "gateway serve is not running" in json.loads(out.stdout)["problems"][0]
    app.engine.dispose()


def worker_host(beat: Heartbeat) -> str:
    from gateway.heartbeat import HOST

    return HOST


def test_mail_quarantined_in_the_last_day_is_a_problem(tmp_path, database_url):
    """One mail the gateway could not read (quarantined): status fails with no option
    (--max-quarantined N allows N), and no longer once it is a day old."""
    app = make_app(tmp_path, database_url=database_url)
    now = utcnow()
    raw = b"From: \r\nSubject: =?x-unknown?q?broken?=\r\nContent-Type: multipart/mixed\r\n\r\nno boundary\r\n"
    stored = store_raw(app.engine, app.blobs, raw, source="smtp")
    assert app.processor.process(stored.id).outcome == "quarantined"
    assert problems_at(app, now) == ["1 mail(s) quarantined in the last 24 hours (over 0): "
                                     "gateway inbound list --state quarantined"]
    assert problems_at(app, now, max_quarantined=1) == []
    assert problems_at(app, now + timedelta(hours=25)) == []
    serve_beats(app, utcnow()).start()
    out = run_gateway("status", cwd=tmp_path, check=False)
    assert out.returncode == 1 and "PROBLEM: 1 mail(s) quarantined in the last 24 hours" in out.stdout.decode()
    app.engine.dispose()


def test_a_mailbox_whose_last_poll_failed_is_a_problem(tmp_path, make_dovecot):
    """The poller of a real Dovecot mailbox logs in with a wrong password: its failure is
    recorded (mailboxpoll) and status fails, naming the mailbox and the server's answer,
    with no option; once a pass works again, it passes.  The record outlives the process."""
    import threading

    from harness.imap import config_text
    from harness.service import wait_until

    from gateway.ingest import imap
    from gateway.health import mailbox_polls
    from store.db import reader

    dovecot = make_dovecot()
    app = make_app(tmp_path, config_text(dovecot))
    (box,) = app.config.mailboxes

    def poll_with(password: str, until) -> None:
        stop = threading.Event()
        poller = imap.Poller(imap.Importer(box, app.engine, app.blobs), env={"TEST_IMAP_PASSWORD": password})
        thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_until(lambda: until(_poll()), timeout=60)
        finally:
            stop.set()
            thread.join(timeout=30)

    def _poll():
        with reader(app.engine) as session:
            return mailbox_polls(session, ["desk"])["desk"]

    poll_with("not-the-password", lambda poll: poll.failing)
    problems = problems_at(app, utcnow())
    assert len(problems) == 1 and problems[0].startswith("mailbox desk: its last poll failed at ")
    assert "LoginError" in problems[0] and problems[0].endswith("last one that worked: never: gateway imap check desk")
    from harness.dovecot import PASSWORD

    poll_with(PASSWORD, lambda poll: not poll.failing and poll.last_success_at is not None)
    assert problems_at(app, utcnow()) == []
    app.engine.dispose()

"""Delivery through a real SMTP relay (aiosmtpd on loopback) that accepts, answers 451,
drops the connection in the middle of DATA, or answers 550; retry times checked with an
injected clock; a crash after the relay's 250 sends a mail at most twice; TLS and AUTH."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import col, select

from conftest import ROOT, free_port, run_gateway
from gateway.app import App
from gateway.config import load_config
from gateway.outbound.outbox import deliver_pending
from gateway.outbound.transports import SmtpTransport
from store.notifications import queue
from store.db import session_for
from store.models import DeliveryAttempt, Person, Ticket
from store.tickets import create_ticket, get_or_create_person
from harness.relay import RelayHandler, T0, drain, open_ticket, outbox_rows, relay, relay_config  # noqa: F401 (relay: fixture)

# The relay --------------------------------------------------------------------------
@pytest.fixture
def app(tmp_path, database_url, relay):
    a = App(load_config(relay_config(tmp_path, relay.port, database_url), env={}))
    yield a
    a.engine.dispose()


# Stories ----------------------------------------------------------------------------
def attempts_of(app: App, outbox_id: int) -> list[DeliveryAttempt]:
    with session_for(app.engine) as session:
        return list(session.exec(select(DeliveryAttempt).where(DeliveryAttempt.outbox_id == outbox_id)
                                 .order_by(col(DeliveryAttempt.at), col(DeliveryAttempt.id))))


def utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


# The four relays --------------------------------------------------------------------
def test_relay_that_accepts(app, relay):
    open_ticket(app)
    results = drain(app, T0)
    assert [r.outcome for _, r in results] == ["sent"]
    [row] = outbox_rows(app)
    assert row.state == "sent" and row.attempts == 1 and row.last_answer.startswith("250 ")
    [(mail_from, rcpts, raw)] = relay.received
    assert mail_from == "helpdesk@desk.example.com" and rcpts == ["jane@example.org"]
    assert message_from_bytes(raw, policy=default_policy)["Message-ID"] == f"<{row.message_id}>"
    [attempt] = attempts_of(app, row.id)
    assert attempt.outcome == "sent" and "Ok: queued" in attempt.answer
    assert drain(app, T0 + dt.timedelta(days=1)) == []  # nothing sent twice


def test_relay_that_answers_451_twice_then_accepts(app, relay):
    relay.script = ["451 4.3.0 Mailbox busy, try later", "451 4.3.0 Still busy"]
    open_ticket(app)
    [(_, r)] = drain(app, T0)
    assert r.outcome == "temporary" and r.answer == "DATA: 451 4.3.0 Mailbox busy, try later"
    [row] = outbox_rows(app)
    assert row.state == "pending" and utc(row.next_attempt_at) == T0 + dt.timedelta(seconds=60)

    # Not due one second early: the clock decides, not a sleep.
    assert drain(app, T0 + dt.timedelta(seconds=59)) == []
    [(_, r)] = drain(app, T0 + dt.timedelta(seconds=60))
    assert r.outcome == "temporary"
    [row] = outbox_rows(app)
    assert utc(row.next_attempt_at) == T0 + dt.timedelta(seconds=60 + 600)
    assert drain(app, T0 + dt.timedelta(seconds=659)) == []

    [(_, r)] = drain(app, T0 + dt.timedelta(seconds=660))
    assert r.outcome == "sent"
    [row] = outbox_rows(app)
    assert row.state == "sent" and row.attempts == 3 and utc(row.sent_at) == T0 + dt.timedelta(seconds=660)
    log = attempts_of(app, row.id)
    assert [(a.outcome, utc(a.at) - T0) for a in log] == [
        ("temporary", dt.timedelta(0)), ("temporary", dt.timedelta(seconds=60)), ("sent", dt.timedelta(seconds=660))]
    assert "Still busy" in log[1].answer
    assert len(relay.received) == 1


def test_relay_that_drops_the_connection_mid_data(app, relay):
    # Three mails in one batch: the first one's connection breaks in the middle of DATA;
    # the two others go through a new connection in the same batch, the first one later.
    for i in range(3):
        open_ticket(app, title=f"Ticket {i}", email=f"user{i}@example.org")
    relay.script = ["drop"]
    results = drain(app, T0)
    assert [r.outcome for _, r in results] == ["temporary", "sent", "sent"]
    assert "SMTPServerDisconnected" in results[0][1].answer or "Connection" in results[0][1].answer
    rows = outbox_rows(app)
    assert [r.state for r in rows] == ["pending", "sent", "sent"]
    assert utc(rows[0].next_attempt_at) == T0 + dt.timedelta(seconds=60)
    assert [rcpts for _, rcpts, _ in relay.received] == [["user1@example.org"], ["user2@example.org"]]

    drain(app, T0 + dt.timedelta(seconds=60))
    rows = outbox_rows(app)
    assert [r.state for r in rows] == ["sent"] * 3
    assert sorted(rcpts[0] for _, rcpts, _ in relay.received) == [f"user{i}@example.org" for i in range(3)]


def test_relay_that_answers_too_late_is_a_timeout_and_the_mail_goes_again(tmp_path, relay):
    """No answer within data_timeout after the dot: temporary.  The relay did take it (its
    250 came too late), so the retry is a duplicate with the same Message-ID: the reason
    why data_timeout defaults to RFC 5321's 10 minutes."""
    a = App(load_config(relay_config(tmp_path, relay.port, data_timeout=1), env={}))
    open_ticket(a)
    relay.script = ["slow 2"]
    [(_, r)] = drain(a, T0)
    assert r.outcome == "temporary" and "timed out" in r.answer
    [row] = outbox_rows(a)
    assert row.state == "pending" and utc(row.next_attempt_at) == T0 + dt.timedelta(seconds=60)
    time.sleep(1.5)  # the relay finishes its slow answer
    drain(a, T0 + dt.timedelta(seconds=60))
    assert outbox_rows(a)[0].state == "sent"
    ids = {m["Message-ID"] for m in relay.messages()}
    assert len(relay.received) == 2 and ids == {f"<{row.message_id}>"}
    a.engine.dispose()


def test_relay_that_answers_550(app, relay):
    relay.script = ["550 5.1.1 <jane@example.org>: Recipient address rejected: User unknown"]
    open_ticket(app)
    [(_, r)] = drain(app, T0)
    assert r.outcome == "permanent"
    [row] = outbox_rows(app)
    assert row.state == "failed" and "550 5.1.1" in row.last_answer and row.attempts == 1
    # Permanent means no retry, whatever the clock says.
    assert drain(app, T0 + dt.timedelta(days=10)) == []
    assert relay.received == []


def test_a_dead_relay_is_a_temporary_failure_and_ends_the_batch(tmp_path, relay):
    # Nothing listens on this port: refused connection.
    a = App(load_config(relay_config(tmp_path, free_port()), env={}))
    open_ticket(a, title="one", email="a@example.org")
    open_ticket(a, title="two", email="b@example.org")
    results = drain(a, T0)
    assert len(results) == 1 and results[0][1].outcome == "temporary" and results[0][1].connection
    assert "ConnectionRefusedError" in results[0][1].answer
    assert [r.state for r in outbox_rows(a)] == ["pending", "pending"]
    a.engine.dispose()


def test_schedule_repeats_its_last_delay_then_gives_up_at_the_deadline(app, relay, tmp_path):
    relay.script = ["451 4.7.1 Greylisted"] * 10
    open_ticket(app)
    # schedule 60, 600, 3600 (the last repeats), give up 7200 s after queueing.
    times = [T0]
    while True:
        [(_, r)] = drain(app, times[-1])
        assert r.outcome == "temporary"
        [row] = outbox_rows(app)
        if row.state == "failed":
            break
        times.append(utc(row.next_attempt_at))
    offsets = [int((t - T0).total_seconds()) for t in times]
    # 0, +60, +600, +3600 would be 7860 > 7200: one last try at the deadline itself.
    assert offsets == [0, 60, 660, 4260, 7200]
    assert row.last_answer.startswith("gave up after 5 attempts: DATA: 451 4.7.1 Greylisted")
    assert relay.received == []

    # The operator sends it again: pending, due now, and the relay now takes it.
    cfg = str(tmp_path / "config.toml")
    out = run_gateway("outbox", "list", "--json", "--config", cfg, cwd=tmp_path).stdout
    [listed] = json.loads(out)
    assert listed["state"] == "failed" and "Greylisted" in listed["last_answer"]
    text = run_gateway("outbox", "list", "--config", cfg, cwd=tmp_path).stdout.decode()
    assert "failed" in text and "gave up after 5 attempts: DATA: 451 4.7.1 Greylisted" in text
    out = run_gateway("outbox", "retry", "--failed", "--config", cfg, cwd=tmp_path).stdout.decode()
    assert f"1 mail(s) pending again: {row.id}" in out
    relay.script = []
    run_gateway("outbox", "flush", "--config", cfg, cwd=tmp_path)
    [row] = outbox_rows(app)
    assert row.state == "sent" and len(relay.received) == 1
    shown = json.loads(run_gateway("outbox", "show", str(row.id), "--json", "--config", cfg, cwd=tmp_path).stdout)
    assert [a["outcome"] for a in shown["attempts_log"]] == ["temporary"] * 5 + ["requeued", "sent"]


def test_retry_by_id_restarts_the_schedule(app, relay, tmp_path):
    relay.script = ["550 5.7.1 Relaying denied"]
    open_ticket(app)
    drain(app, T0)
    [row] = outbox_rows(app)
    assert row.state == "failed"
    cfg = str(tmp_path / "config.toml")
    proc = run_gateway("outbox", "retry", str(row.id), "999", "--config", cfg, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "no outbox mail 999" in proc.stderr.decode()
    [row] = outbox_rows(app)
    assert row.state == "pending"
    relay.script = ["451 4.3.0 later"]
    now = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    drain(app, now)
    [row] = outbox_rows(app)
    # The first delay of the schedule again, counted from the operator's retry.
    assert row.state == "pending" and utc(row.next_attempt_at) == now + dt.timedelta(seconds=60)


def test_some_recipients_refused_for_now_get_the_mail_later(app, relay):
    refused_once = {"bob@example.org"}

    async def handle_RCPT(server, session, envelope, address, options):
        if address in refused_once:
            refused_once.discard(address)
            return "452 4.2.2 Mailbox full"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    relay.handle_RCPT = handle_RCPT
    with session_for(app.engine) as session:
        jane, _ = get_or_create_person(session, "jane@example.org", "Jane")
        bob, _ = get_or_create_person(session, "bob@example.org", "Bob")
        ticket = create_ticket(session, process="incident", title="Two people", description="x",
                               reporter=jane, affected=bob, now=T0)
        queue(session, app.notices, ticket, "new", now=T0)
        session.commit()
    drain(app, T0)
    # One copy each: Jane's is sent, Bob's waits for its next attempt.
    jane_copy, bob_copy = outbox_rows(app)
    assert (jane_copy.recipient, jane_copy.state) == ("jane@example.org", "sent")
    assert (bob_copy.recipient, bob_copy.state) == ("bob@example.org", "pending")
    assert "452 4.2.2 Mailbox full" in bob_copy.last_answer
    drain(app, T0 + dt.timedelta(seconds=60))
    assert [r for _, r, _ in relay.received] == [["jane@example.org"], ["bob@example.org"]]
    assert [r.state for r in outbox_rows(app)] == ["sent", "sent"]


def test_undeliverable_person_is_never_sent_to(app, relay):
    open_ticket(app, email="gone@example.org")
    open_ticket(app, email="here@example.org")
    # The address went bad after the mail was queued (a hard bounce of an earlier mail).
    with session_for(app.engine) as session:
        person = session.exec(select(Person).where(Person.email == "gone@example.org")).one()
        person.undeliverable = True
        session.add(person)
        session.commit()
    drain(app, T0)
    rows = outbox_rows(app)
    assert [r.state for r in rows] == ["failed", "sent"]
    assert "undeliverable" in rows[0].last_answer
    assert [r for _, r, _ in relay.received] == [["here@example.org"]]
    # And the notifier does not queue for them at all.
    with session_for(app.engine) as session:
        ticket = session.exec(select(Ticket).where(Ticket.id == rows[0].ticket_id)).one()
        assert queue(session, app.notices, ticket, "new", now=T0) == []


# A crash between the relay's 250 and the commit -----------------------------------
def hold_writes(database_url: str):
    """Another writer, from outside: on SQLite it holds the one write lock, on PostgreSQL
    a lock on the delivery records that the deliverer's record waits for.  Returns the
    connection (``rollback()`` and ``close()`` let go)."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None,
                               check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        return conn
    import psycopg

    conn = psycopg.connect(database_url)
    conn.execute("LOCK TABLE deliveryattempt IN EXCLUSIVE MODE")
    return conn


def flushing(cfg: Path, folder: Path) -> subprocess.Popen:
    """A real ``gateway outbox flush`` process on ``cfg``, started (the tests kill it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GATEWAY_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(cfg), "outbox", "flush"],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_crash_after_250_sends_once(tmp_path, relay, database_url):
    """The worker (a real ``gateway outbox flush`` process) gets the relay's 250, but
    another writer holds what its commit needs, so the commit waits; it is killed there.
    The row is still pending, marked as handed to the relay before the dot (issue 19):
    the next run counts it as sent, and the relay has one copy, not two."""
    cfg = relay_config(tmp_path, relay.port, database_url)
    app = App(load_config(cfg, env={}))
    open_ticket(app)
    holder: dict = {}
    accepted = threading.Event()

    def hold_the_database():
        if "conn" not in holder:
            holder["conn"] = hold_writes(database_url)
            accepted.set()

    relay.on_accept = hold_the_database
    worker = flushing(cfg, tmp_path)
    try:
        assert accepted.wait(30), "the relay never got the mail"
        time.sleep(1.0)  # the worker has the 250 and waits for the lock to commit
        assert worker.poll() is None, "the worker should be waiting to commit"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
        holder["conn"].rollback()
        holder["conn"].close()

    [row] = outbox_rows(app)
    # The crash lost the record, not the mail; the row says the relay was given its end.
    assert row.state == "pending" and row.attempts == 0 and row.handed_at is not None
    relay.on_accept = None
    drain(app, dt.datetime.now(dt.timezone.utc))
    [row] = outbox_rows(app)
    assert row.state == "sent" and row.handed_at is None
    assert len(relay.received) == 1
    assert relay.messages()[0]["Message-ID"] == f"<{row.message_id}>"
    assert drain(app, dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)) == []  # never a second
    app.engine.dispose()


def test_the_end_goes_out_before_the_note_of_it_is_confirmed(tmp_path, relay, postgres_url):
    """On PostgreSQL the note "the relay has this mail" is written to the database as the
    dot goes out, not waited for before it: a deliverer killed in between (here: its note
    held up by a lock another transaction has on the row, the relay given the dot all
    the same) leaves a note the database carries out after the death, so the mail is
    counted as sent, neither lost nor sent again.  (Waiting for the note's commit before
    the dot left a whole commit as the moment when a kill lost the mail: issue 19's three
    instances lost one notification that way.)"""
    import psycopg

    cfg = relay_config(tmp_path, relay.port, postgres_url)
    app = App(load_config(cfg, env={}))
    open_ticket(app)
    holder: dict = {}
    accepted = threading.Event()

    def lock_the_row():  # the row is claimed by now; its note will wait for this lock
        if "conn" not in holder:
            holder["conn"] = psycopg.connect(postgres_url)
            holder["conn"].execute("SELECT id FROM outbox FOR UPDATE").fetchall()

    relay.on_rcpt = lock_the_row
    relay.on_accept = accepted.set
    worker = flushing(cfg, tmp_path)
    try:
        assert accepted.wait(30), "the relay never got the dot: the deliverer waited for its note"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        [row] = outbox_rows(app)
        assert row.handed_at is None  # the note is still waiting for the lock
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
        if "conn" in holder:
            holder["conn"].rollback()
            holder["conn"].close()
    deadline = time.monotonic() + 10
    while outbox_rows(app)[0].handed_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    [row] = outbox_rows(app)
    assert row.state == "pending" and row.handed_at is not None  # carried out after its writer died
    relay.on_rcpt = relay.on_accept = None
    drain(app, dt.datetime.now(dt.timezone.utc))
    [row] = outbox_rows(app)
    assert row.state == "sent" and row.handed_at is None
    assert len(relay.received) == 1
    assert drain(app, dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)) == []
    app.engine.dispose()


def test_commit_failing_after_250_records_later_and_never_resends(tmp_path, relay, database_url):
    """The process lives on but its commit fails for real: another writer holds what it
    needs past a short wait (SQLite: "database is locked" after its busy timeout;
    PostgreSQL: its lock_timeout).  The run raises; the next run records the 250
    without sending the mail again."""
    from sqlalchemy import event

    cfg = relay_config(tmp_path, relay.port, database_url)
    app = App(load_config(cfg, env={}))
    open_ticket(app)
    app.engine.dispose()

    @event.listens_for(app.engine, "connect")
    def short_wait_for_locks(dbapi_conn, _record):
        if database_url.startswith("sqlite"):
            dbapi_conn.execute("PRAGMA busy_timeout=200")
        else:
            dbapi_conn.autocommit = True
            dbapi_conn.execute("SET lock_timeout = 200")
            dbapi_conn.autocommit = False

    holder: dict = {}

    def hold_the_database():
        holder["conn"] = hold_writes(database_url)

    relay.on_accept = hold_the_database
    transport = app.transport()  # the worker keeps one transport for its life
    with pytest.raises(Exception, match="locked|lock timeout"):
        deliver_pending(app.engine, app.config, transport, now=T0)
    holder["conn"].rollback()
    holder["conn"].close()
    relay.on_accept = None
    [row] = outbox_rows(app)
    assert row.state == "pending" and len(relay.received) == 1

    results = deliver_pending(app.engine, app.config, transport, now=T0 + dt.timedelta(seconds=5))
    assert [r.outcome for _, r in results] == ["sent"]
    [row] = outbox_rows(app)
    assert row.state == "sent" and utc(row.sent_at) == T0 and row.attempts == 1
    assert len(relay.received) == 1  # recorded late, not sent again
    app.engine.dispose()


# TLS and AUTH -----------------------------------------------------------------------
def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "relay.pem", folder / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_relay(tmp_path, implicit: bool):
    import ssl

    cert, key = make_certificate(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    handler = RelayHandler()
    port = free_port()
    kwargs = dict(authenticator=handler.authenticate, auth_require_tls=True)
    if implicit:
        # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; here the whole
        # connection is TLS from the first byte.
        kwargs["auth_require_tls"] = False
        controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=ctx, **kwargs)
    else:
        controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=ctx,
                                require_starttls=True, **kwargs)
    controller.start()
    return controller, handler, port, cert


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_auth_with_the_password_from_a_file(tmp_path, security):
    controller, handler, port, cert = tls_relay(tmp_path, implicit=security == "tls")
    try:
        (tmp_path / "relay-password").write_text("s3cret\n")
        cfg = relay_config(tmp_path, port, smtp_extra=f"""security = "{security}"
username = "desk"
password_file = "relay-password"
tls_ca_file = "{cert.name}"
""")
        app = App(load_config(cfg, env={}))
        open_ticket(app)
        open_ticket(app, email="other@example.org")
        results = drain(app, T0)
        assert [r.outcome for _, r in results] == ["sent", "sent"]
        assert handler.logins == ["desk"]  # one connection, one login, for the batch
        assert len(handler.received) == 2
        app.engine.dispose()
    finally:
        controller.stop()


def test_wrong_password_from_the_environment_is_temporary(tmp_path):
    controller, handler, port, cert = tls_relay(tmp_path, implicit=False)
    try:
        cfg = relay_config(tmp_path, port, smtp_extra=f"""security = "starttls"
username = "desk"
password_env = "RELAY_PASSWORD_FOR_TEST"
tls_ca_file = "{cert.name}"
""")
        app = App(load_config(cfg, env={}))
        open_ticket(app)
        os.environ["RELAY_PASSWORD_FOR_TEST"] = "wrong"
        try:
            [(_, r)] = drain(app, T0)
        finally:
            del os.environ["RELAY_PASSWORD_FOR_TEST"]
        # A bad password is our configuration's fault, not the mail's: kept and retried.
        assert r.outcome == "temporary" and r.connection and "535" in r.answer
        assert outbox_rows(app)[0].state == "pending"
        app.engine.dispose()
    finally:
        controller.stop()


def test_untrusted_certificate_is_refused(tmp_path):
    controller, handler, port, cert = tls_relay(tmp_path, implicit=True)
    try:
        cfg = relay_config(tmp_path, port, smtp_extra='security = "tls"\n')
        app = App(load_config(cfg, env={}))
        open_ticket(app)
        [(_, r)] = drain(app, T0)
        assert r.outcome == "temporary" and "CERTIFICATE_VERIFY_FAILED" in r.answer
        assert handler.received == []
        app.engine.dispose()
    finally:
        controller.stop()


def test_starttls_required_but_not_offered(tmp_path, relay):
    a = App(load_config(relay_config(tmp_path, relay.port, smtp_extra='security = "starttls"\n'), env={}))
    open_ticket(a)
    [(_, r)] = drain(a, T0)
    assert r.outcome == "temporary" and "STARTTLS" in r.answer.upper()
    assert relay.received == []  # never in clear text
    a.engine.dispose()


def test_transport_reconnects_after_a_dropped_connection(relay):
    from gateway.config import OutboundSmtpSection

    t = SmtpTransport(OutboundSmtpSection(host="127.0.0.1", port=relay.port, timeout=5, data_timeout=5))
    relay.script = ["250", "drop"]
    raw = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    with t:
        first_conn = None
        assert t.send("a@example.org", ["b@example.org"], raw, "1").outcome == "sent"
        first_conn = t.conn
        assert t.send("a@example.org", ["b@example.org"], raw, "2").outcome == "temporary"
        assert t.conn is None
        assert t.send("a@example.org", ["b@example.org"], raw, "3").outcome == "sent"
        assert t.conn is not None and t.conn is not first_conn
    assert len(relay.received) == 2

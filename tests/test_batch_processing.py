"""Several mails in one transaction (Processor.process_batch): one savepoint a mail, so a
failing mail rolls back alone and is counted, the others land with their ticket and
confirmation; a batch stops when the door wants the write lock; two processors working
in batches still never process one mail twice."""

from __future__ import annotations

import threading
import time

import pytest

from sqlalchemy import text
from sqlmodel import select

from gateway.app import App
from gateway.ingest.inbound import store_raw
from gateway.ingest.process import Processor
from store.db import session_for
from store.models import InboundMessage, Outbox, Person, Ticket, TicketMessage
from store.tickets import add_person


def _store(gw, n: int, tag: str) -> list[int]:
    ids = []
    for k in range(n):
        raw = (f"From: Client {k} <{tag}{k}@example.com>\r\nTo: helpdesk@localhost\r\n"
               f"Subject: {tag} {k}\r\nMessage-ID: <{tag}-{k}@example.com>\r\n\r\nBody {k}\r\n").encode()
        ids.append(store_raw(gw.engine, gw.blobs, raw, source="test").id)
    return ids


def test_a_failing_mail_rolls_back_alone_and_is_counted(gw, monkeypatch):
    ids = _store(gw, 5, "batch")
    real_apply = Processor.apply

    # A failure in the middle of applying (after the ticket row is written) cannot be
    # produced with a real mail: the third mail's apply raises after doing its work.
    def failing_apply(self, session, inbound, mail, decision, sender=None):
        outcome = real_apply(self, session, inbound, mail, decision, sender)
        if mail.message_id == "batch-2@example.com":
            raise RuntimeError("disk on fire")
        return outcome

    monkeypatch.setattr(Processor, "apply", failing_apply)
    outcomes = gw.processor.process_batch(ids)
    assert [o.outcome for o in outcomes] == ["created", "created", "retry", "created", "created"]
    with session_for(gw.engine) as session:
        titles = sorted(t.title for t in session.exec(select(Ticket)))
        assert titles == ["batch 0", "batch 1", "batch 3", "batch 4"]
        assert len(session.exec(select(Outbox)).all()) == 4
        # Nothing of the failed mail's work survived its savepoint.
        assert not session.exec(select(TicketMessage).where(TicketMessage.subject == "batch 2")).all()
        failed = session.get(InboundMessage, ids[2])
        assert (failed.state, failed.attempts) == ("received", 1)
        assert "disk on fire" in failed.detail
    # Up to max_attempts, then quarantined, so the queue moves on.
    for _ in range(gw.config.limits.max_attempts - 1):
        [last] = gw.processor.process_batch([ids[2]])
    assert last.outcome == "quarantined"
    monkeypatch.setattr(Processor, "apply", real_apply)
    with session_for(gw.engine) as session:
        assert session.get(InboundMessage, ids[2]).state == "quarantined"
        assert len(session.exec(select(Ticket)).all()) == 4


def test_a_batch_stops_when_the_door_wants_the_lock(gw):
    ids = _store(gw, 4, "door")
    asked = []

    def door_waits() -> bool:
        asked.append(1)
        return len(asked) >= 2  # the door asks for the lock after the second mail

    done = gw.processor.process_batch(ids, yield_now=door_waits)
    assert [o.outcome for o in done] == ["created", "created"]
    with session_for(gw.engine) as session:
        states = [session.get(InboundMessage, i).state for i in ids]
    assert states == ["processed", "processed", "received", "received"]
    rest = gw.processor.process_batch(ids[2:])
    assert [o.outcome for o in rest] == ["created", "created"]
    with session_for(gw.engine) as session:
        assert len(session.exec(select(Outbox)).all()) == 4


def test_two_processors_in_batches_never_process_a_mail_twice(gw):
    ids = _store(gw, 24, "race")
    other = App(gw.config)
    outcomes: list[tuple[int, str]] = []
    barrier = threading.Barrier(2)

    def run(app):
        barrier.wait()
        rest = list(ids)
        while rest:
            done = app.processor.process_batch(rest[:5])
            outcomes.extend((i, o.outcome) for i, o in zip(rest, done))
            rest = rest[len(done):]

    threads = [threading.Thread(target=run, args=(app,)) for app in (gw, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    other.engine.dispose()
    with session_for(gw.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 24
        assert len(session.exec(select(Outbox)).all()) == 24
        assert all(session.get(InboundMessage, i).state == "processed" for i in ids)
    assert {o for _i, o in outcomes} <= {"created", "busy"}


def test_a_batch_that_meets_another_writers_new_sender_is_done_again_alone(gw, caplog):
    """Two workers, one new customer writing several mails at once: the other worker's
    batch made their person row and has not committed.  This batch waits for it
    (PostgreSQL: the unique e-mail; SQLite: the write lock); on PostgreSQL its insert
    then fails, its batch (no savepoints there) is rolled back and every mail done again
    alone, finding the person.  No mail is lost, none counted as failed, one person."""
    raws = [(f"From: =?utf-8?q?L=C3=A9a?= <lea@example.com>\r\nTo: helpdesk@localhost\r\nSubject: same {k}\r\n"
             f"Message-ID: <same-{k}@example.com>\r\n\r\nBody {k}\r\n").encode() for k in range(3)]
    ids = [store_raw(gw.engine, gw.blobs, raw, source="test").id for raw in raws]
    postgres = gw.engine.dialect.name == "postgresql"
    holder = session_for(gw.engine)
    add_person(holder, "lea@example.com", "Léa")  # the other worker's batch, not committed
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("out", gw.processor.process_batch(ids)))
    worker.start()
    if postgres:  # until the batch waits for the holder's row
        with gw.engine.connect() as conn:
            for _ in range(600):
                if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                     "AND datname = current_database()")).scalar():
                    break
                conn.rollback()
                time.sleep(0.05)
            else:
                raise AssertionError("the batch never waited for the other writer's person")
    else:
        time.sleep(0.3)
    holder.commit()
    holder.close()
    worker.join(60)
    assert [o.outcome for o in result["out"]] == ["created"] * 3
    with session_for(gw.engine) as session:
        assert len(session.exec(select(Person).where(Person.email == "lea@example.com")).all()) == 1
        assert [(session.get(InboundMessage, i).state, session.get(InboundMessage, i).attempts) for i in ids] == \
            [("processed", 0)] * 3
        assert len(session.exec(select(Ticket)).all()) == 3
    assert ("processing them one by one" in caplog.text) == postgres


def test_two_batches_that_deadlock_on_postgresql_both_land(postgres_url, tmp_path, caplog):
    """Two PostgreSQL workers' batches answer the same two tickets in opposite orders: each
    holds one ticket's row and waits for the other's.  PostgreSQL breaks the deadlock by
    failing one transaction; that batch is done again mail by mail.  Every reply lands
    once, none is counted as failed.  (The hook only holds each batch after its first
    mail, so that the two take their locks in the order that deadlocks.)"""
    from conftest import write_config
    from gateway.config import load_config

    gw = App(load_config(write_config(tmp_path, f'[database]\nurl = "{postgres_url}"\n'), env={}))
    other = App(gw.config)
    originals = []
    for k in (1, 2):
        raw = (f"From: Lea <lea@example.com>\r\nTo: helpdesk@localhost\r\nSubject: printer {k}\r\n"
               f"Message-ID: <orig-{k}@example.com>\r\n\r\nPrinter {k} is broken.\r\n").encode()
        originals.append(gw.processor.process(store_raw(gw.engine, gw.blobs, raw, source="test").id).ticket)

    def reply(n: int, to: int) -> int:
        raw = (f"From: Lea <lea@example.com>\r\nTo: helpdesk@localhost\r\nSubject: Re: printer {to}\r\n"
               f"Message-ID: <reply-{n}@example.com>\r\nIn-Reply-To: <orig-{to}@example.com>\r\n\r\n"
               f"More about printer {to}, note {n}.\r\n").encode()
        return store_raw(gw.engine, gw.blobs, raw, source="test").id

    first = [reply(1, 1), reply(2, 2)]  # ticket 1, then ticket 2
    second = [reply(3, 2), reply(4, 1)]  # ticket 2, then ticket 1
    barrier = threading.Barrier(2)
    held = {"reply-1@example.com", "reply-3@example.com"}
    real_apply = Processor.apply

    def apply(self, session, inbound, mail, decision, sender=None):
        outcome = real_apply(self, session, inbound, mail, decision, sender)
        session.flush()
        if mail.message_id in held:  # the first time only, not when done again alone
            held.discard(mail.message_id)
            barrier.wait(timeout=20)  # both hold their first ticket's row now
        return outcome

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Processor, "apply", apply)
        results: dict = {}
        threads = [threading.Thread(target=lambda a=a, ids=ids: results.setdefault(id(ids), a.processor.process_batch(ids)))
                   for a, ids in ((gw, first), (other, second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    outcomes = [o.outcome for ids in (first, second) for o in results[id(ids)]]
    assert outcomes == ["appended"] * 4, outcomes
    assert caplog.text.count("processing them one by one") == 1 and "deadlock" in caplog.text.lower()
    with session_for(gw.engine) as session:
        rows = [session.get(InboundMessage, i) for i in first + second]
        assert [(r.state, r.attempts, r.ticket_number) for r in rows] == [
            ("processed", 0, originals[0]), ("processed", 0, originals[1]),
            ("processed", 0, originals[1]), ("processed", 0, originals[0])]
        assert len(session.exec(select(TicketMessage).where(TicketMessage.direction == "in")).all()) == 6
    other.engine.dispose()
    gw.engine.dispose()

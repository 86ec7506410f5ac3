"""Two processors on the same store never process one mail twice (PostgreSQL row lock,
SQLite's write lock)."""

from __future__ import annotations

import threading

from sqlmodel import select

from gateway.app import App
from gateway.ingest.inbound import store_raw
from store.db import session_for
from store.models import Outbox, Ticket


def test_two_processors_race_for_the_same_mails(gw):
    ids = []
    for n in range(12):
        raw = (f"From: Client {n} <client{n}@example.com>\r\nTo: helpdesk@localhost\r\n"
               f"Subject: Race {n}\r\nMessage-ID: <race-{n}@example.com>\r\n\r\nBody {n}\r\n").encode()
        ids.append(store_raw(gw.engine, gw.blobs, raw, source="test").id)
    other = App(gw.config)  # a second process's parts: its own engine and pool
    outcomes: list[tuple[int, str]] = []
    barrier = threading.Barrier(2)

    def run(app):
        barrier.wait()
        for i in ids:
            outcomes.append((i, app.processor.process(i).outcome))

    threads = [threading.Thread(target=run, args=(app,)) for app in (gw, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    other.engine.dispose()
    with session_for(gw.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 12
        assert len(session.exec(select(Outbox)).all()) == 12
    # The loser of each race reports the winner's stored outcome, or that the mail is
    # being processed by the other ("busy"); every mail was created by one of them.
    assert {o for _, o in outcomes} <= {"created", "busy"} and len(outcomes) == 24
    assert {i for i, o in outcomes if o == "created"} == set(ids)


def test_a_reply_waits_for_the_mail_it_answers(gw):
    """Two workers: the reply (stored just after its original) is taken first by the other
    worker.  It waits, stays received, and once the original has its ticket it is added to
    it; it never opens a ticket of its own."""
    original = (b"From: Marie <marie@example.com>\r\nTo: helpdesk@localhost\r\nSubject: Imprimante\r\n"
                b"Message-ID: <orig-1@example.com>\r\n\r\nEn panne.\r\n")
    reply = (b"From: Marie <marie@example.com>\r\nTo: helpdesk@localhost\r\nSubject: Re: Imprimante\r\n"
             b"Message-ID: <reply-1@example.com>\r\nIn-Reply-To: <orig-1@example.com>\r\n"
             b"References: <orig-1@example.com>\r\n\r\nToujours en panne.\r\n")
    first = store_raw(gw.engine, gw.blobs, original, source="test").id
    second = store_raw(gw.engine, gw.blobs, reply, source="test").id
    other = App(gw.config)
    try:
        waited = other.processor.process(second)
        assert waited.outcome == "busy" and f"#{first}" in waited.detail
        created = gw.processor.process(first)
        assert created.outcome == "created"
        appended = other.processor.process(second)
        assert (appended.outcome, appended.ticket) == ("appended", created.ticket)
    finally:
        other.engine.dispose()
    with session_for(gw.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 1


def test_a_reply_to_a_later_or_unknown_mail_does_not_wait(gw):
    """Only an EARLIER stored mail is waited for: a reply that arrived before its original
    (or names a mail we never got) is processed at once, as one worker would."""
    reply = (b"From: Marie <marie@example.com>\r\nTo: helpdesk@localhost\r\nSubject: Re: Imprimante\r\n"
             b"Message-ID: <reply-2@example.com>\r\nIn-Reply-To: <orig-2@example.com>\r\n\r\nToujours.\r\n")
    original = (b"From: Marie <marie@example.com>\r\nTo: helpdesk@localhost\r\nSubject: Imprimante\r\n"
                b"Message-ID: <orig-2@example.com>\r\n\r\nEn panne.\r\n")
    first = store_raw(gw.engine, gw.blobs, reply, source="test").id
    store_raw(gw.engine, gw.blobs, original, source="test")
    assert gw.processor.process(first).outcome == "created"

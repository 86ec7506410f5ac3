"""IMAP against a real Dovecot when other clients get in the way (reliability bar, part
(b), "IMAP-specific"): item 55, another client of the same account expunges a message
while the gateway is taking the batch; item 56, the same message (same bytes, same
Message-ID) in two folders the gateway reads.  Items 54 and "twice in one folder" are in
tests/test_imap.py, whose fixtures and helpers these tests use.

The other client is a second IMAPClient logged in to the same account; it acts at a
fixed point of the gateway's work (just before a fetch, just before a move), so the
window is hit every time, not by luck."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
from conftest import write_config
from dovecot import USER
from test_imap import dovecot, dovecot_ok, make_dovecot  # fixtures, shared with test_imap
from test_imap import ENV, config_text, ids, inbound, make_app, mail, tickets, wait_until

from gateway.app import App
from gateway.config import load_config
from gateway.ingest import imap

SHARED_FIXTURES = (dovecot, dovecot_ok, make_dovecot)  # pytest finds them by name in this module

# Dovecot told not to offer MOVE: the gateway copies, flags \Deleted and UID EXPUNGEs.
NO_MOVE = "protocol imap {\n  imap_capability = IMAP4rev1 LITERAL+ UIDPLUS\n}\n"


def expunge(server, uid: int, folder: str = "INBOX") -> None:
    """Another client of the same account deletes and expunges ``uid`` for good."""
    with server.client() as other:
        other.select_folder(folder)
        other.delete_messages([uid])
        other.expunge()


def one_pass(importer: imap.Importer) -> list[imap.ItemResult]:
    """One poll of the importer's folder, on a connection of its own, as a poller's
    session does it (prepare, then drain); an exception raised here is one that would
    have cut the poller's connection."""
    client = imap.open_mailbox(importer.box, ENV)
    try:
        importer.prepare(client)
        return importer.drain(client)
    finally:
        imap.close_quietly(client)


# Item 55: a message expunged by another client while the batch is taken ------------------
class ExpungedMeanwhile(imap.Importer):
    """An Importer before whose take() of ``at`` another client expunges ``victim``:
    after the gateway's SEARCH listed it and before the gateway FETCHes it."""

    def __init__(self, *args, server, at: int, victim: int, **kw):
        super().__init__(*args, **kw)
        self.server, self.at, self.victim = server, at, victim

    def take(self, client, uid):
        if uid == self.at:
            expunge(self.server, self.victim)
        return super().take(client, uid)


@pytest.mark.parametrize("max_size", [True, False], ids=["size-checked", "no-size-check"])
@pytest.mark.parametrize("caps", ["move", "copy+expunge"])
@pytest.mark.parametrize("moment", ["just-before-its-fetch", "while-an-earlier-one-is-taken", "after-store-before-move"])
def test_message_expunged_by_another_client_meanwhile(tmp_path, make_dovecot, caplog, monkeypatch,
                                                      moment, caps, max_size):
    """Five mails; another client expunges the third at one of three moments.  The pass
    raises nothing, the other four are stored, ticketed and moved to processed, and a
    line says the third vanished (INFO: it is not an error).  Expunged before it was
    fetched, it is not in the gateway at all; expunged after its bytes were committed,
    it is in the gateway with its ticket (it was ours already) and simply not moved."""
    caplog.set_level(logging.INFO, logger="gateway.imap")
    server = make_dovecot(NO_MOVE if caps == "copy+expunge" else "")
    with server.client() as c:
        assert c.has_capability("MOVE") == (caps == "move")
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, server)
    n, victim = 5, 3  # UIDs 1..5 in a fresh mailbox
    server.append("INBOX", [mail(i, tag) for i in range(n)])
    victim_mid = f"<{tag}-{victim - 1}@example.org>"
    others = [m for m in [f"<{tag}-{i}@example.org>" for i in range(n)] if m != victim_mid]

    box = app.config.mailboxes[0]
    kw = dict(process=app.processor.process, max_size=app.config.smtp.max_message_size if max_size else None)
    if moment == "after-store-before-move":
        importer = imap.Importer(box, app.engine, app.blobs, **kw)
        real_move = imap.move

        def move(client, uid, folder):
            if uid == victim:
                assert [r.message_id for r in inbound(app)].count(victim_mid.strip("<>")) == 1  # committed
                expunge(server, victim)
            return real_move(client, uid, folder)

        monkeypatch.setattr(imap, "move", move)
    else:
        at = victim if moment == "just-before-its-fetch" else 1
        importer = ExpungedMeanwhile(box, app.engine, app.blobs, server=server, at=at, victim=victim, **kw)

    results = one_pass(importer)  # raises nothing

    by_uid = {r.uid: r for r in results}
    assert sorted(by_uid) == list(range(1, n + 1))
    for uid, r in by_uid.items():
        if uid != victim:
            assert r.moved_to == "processed" and r.ticket and not r.duplicate, r
    gone = by_uid[victim]
    assert gone.moved_to is None, gone
    assert server.message_ids("INBOX") == []
    assert server.message_ids("failed") == []
    assert server.message_ids("processed") == others
    stored = sorted(f"<{r.message_id}>" for r in inbound(app))
    if moment == "after-store-before-move":
        # Its bytes were committed before the other client took it: it is a ticket.
        assert stored == sorted([*others, victim_mid])
        assert gone.ticket and len(tickets(app)) == n
    else:
        # Nothing of it was fetched, so nothing of it is stored.
        assert gone.outcome == "vanished" and gone.ticket is None
        assert stored == others
        assert len(tickets(app)) == n - 1
    assert all(r.state == "processed" for r in inbound(app))
    said = [r for r in caplog.records if "vanished" in r.getMessage() and f"UID {victim}" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # The next pass finds nothing: the four are in processed, the third is gone.
    assert one_pass(imap.Importer(box, app.engine, app.blobs, **kw)) == []
    app.engine.dispose()


@pytest.mark.parametrize("why", ["too-large", "store-failed"])
def test_expunged_before_its_move_to_failed(tmp_path, dovecot, caplog, monkeypatch, why):
    """The other moves of a pass: a mail on its way to the failed folder (too large, not
    fetched; or its store failed) that another client expunges first is reported as
    vanished, and the pass goes on with the rest."""
    caplog.set_level(logging.INFO, logger="gateway.imap")
    tag = uuid.uuid4().hex[:8]
    victim = 2
    victim_mid = f"<{tag}-1@example.org>"
    if why == "too-large":
        app = make_app(tmp_path, dovecot, top="[smtp]\nmax_message_size = 4000\n")
        big = mail(1, tag, extra_headers="X-Padding: " + "b" * 5000 + "\r\n")
        dovecot.append("INBOX", [mail(0, tag), big, mail(2, tag)])
    else:
        app = make_app(tmp_path, dovecot)
        dovecot.append("INBOX", [mail(i, tag) for i in range(3)])
        real_store = imap.store_raw

        def store_raw(engine, blobs, raw, **kw):  # the disk fails for this one mail only
            if victim_mid.encode() in raw:
                raise imap.StoreFailed("could not store the message: OSError: disk full")
            return real_store(engine, blobs, raw, **kw)

        monkeypatch.setattr(imap, "store_raw", store_raw)
    real_move = imap.move

    def move(client, uid, folder):
        if uid == victim:
            assert folder == "failed"
            expunge(dovecot, victim)
        return real_move(client, uid, folder)

    monkeypatch.setattr(imap, "move", move)
    box = app.config.mailboxes[0]
    results = one_pass(imap.Importer(box, app.engine, app.blobs, process=app.processor.process,
                                     max_size=app.config.smtp.max_message_size))

    assert [(r.uid, r.outcome, r.moved_to) for r in results] == [
        (1, "created", "processed"), (2, "vanished", None), (3, "created", "processed")]
    assert dovecot.message_ids("processed") == [f"<{tag}-0@example.org>", f"<{tag}-2@example.org>"]
    assert dovecot.message_ids("INBOX") == dovecot.message_ids("failed") == []
    assert f"<{tag}-1@example.org>" not in {f"<{r.message_id}>" for r in inbound(app)}
    assert len(tickets(app)) == 2
    said = [r for r in caplog.records if "vanished" in r.getMessage() and f"UID {victim}" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    app.engine.dispose()


# Item 56: the same message in two folders the gateway reads -------------------------------
def second_box(server, name: str = "printers", folder: str = "Printers") -> str:
    """A second [[mailboxes]] entry: another folder of the same account (a Gmail label,
    or a folder a server-side rule copies mail into), with folders of its own."""
    return f"""
[[mailboxes]]
name = "{name}"
host = "127.0.0.1"
port = {server.port}
security = "none"
user = "{USER}"
password_env = "TEST_IMAP_PASSWORD"
folder = "{folder}"
processed_folder = "{folder}-processed"
failed_folder = "{folder}-failed"
"""


def copy_to(server, folder: str) -> None:
    """A rule (or a label) puts every INBOX message into ``folder`` too: the same bytes."""
    with server.client() as c:
        if not c.folder_exists(folder):
            c.create_folder(folder)
        c.select_folder("INBOX")
        c.copy(c.search(["ALL"]), folder)


def test_same_message_in_two_folders_is_one_ticket(tmp_path, dovecot, database_url, caplog):
    caplog.set_level(logging.INFO, logger="gateway.imap")
    tag = uuid.uuid4().hex[:8]
    path = write_config(tmp_path, config_text(dovecot, database_url=database_url) + second_box(dovecot))
    app = App(load_config(path, env={}))
    desk, printers = app.config.mailboxes
    dovecot.append("INBOX", [mail(0, tag)])
    copy_to(dovecot, "Printers")
    mid = f"<{tag}-0@example.org>"
    assert dovecot.message_ids("INBOX") == dovecot.message_ids("Printers") == [mid]

    def importer(box):
        return imap.Importer(box, app.engine, app.blobs, process=app.processor.process,
                             max_size=app.config.smtp.max_message_size)

    first, = one_pass(importer(desk))
    second, = one_pass(importer(printers))
    assert not first.duplicate and first.ticket and first.moved_to == "processed"
    assert second.duplicate, second  # recorded as what it is: a copy of a stored mail
    assert second.moved_to == "Printers-processed"  # and still moved out, not read again
    assert second.ticket in (None, first.ticket)  # no other ticket
    assert [r.message_id for r in inbound(app)] == [mid.strip("<>")]
    assert [t.number for t in tickets(app)] == [first.ticket]
    assert any("already stored" in r.getMessage() and "printers" in r.getMessage() for r in caplog.records)

    # A second poll of both: nothing is fetched again, nothing changes.
    assert one_pass(importer(desk)) == [] and one_pass(importer(printers)) == []
    assert dovecot.message_ids("INBOX") == dovecot.message_ids("Printers") == []
    assert dovecot.message_ids("processed") == dovecot.message_ids("Printers-processed") == [mid]
    assert dovecot.message_ids("failed") == dovecot.message_ids("Printers-failed") == []
    assert len(inbound(app)) == 1 and [t.number for t in tickets(app)] == [first.ticket]
    app.engine.dispose()


def test_same_messages_in_two_folders_read_at_once_by_two_pollers(tmp_path, dovecot):
    """The service's own pollers (pollers_for, one thread a mailbox) read both folders at
    the same time: each of eight mails is stored once and makes one ticket, whichever
    poller gets it first; both folders end empty and both processed folders full."""
    tag = uuid.uuid4().hex[:8]
    n = 8
    path = write_config(tmp_path, config_text(dovecot, poll_interval=1) + second_box(dovecot))
    app = App(load_config(path, env={}))
    dovecot.append("INBOX", [mail(i, tag) for i in range(n)])
    copy_to(dovecot, "Printers")
    stop = threading.Event()
    pollers = imap.pollers_for(app.config, app.engine, app.blobs, process=app.processor.process, env=ENV)
    threads = imap.start_pollers(pollers, stop)
    try:
        wait_until(lambda: len(dovecot.message_ids("processed")) == n
                   and len(dovecot.message_ids("Printers-processed")) == n)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert dovecot.message_ids("processed") == dovecot.message_ids("Printers-processed") == ids(tag, n)
    assert dovecot.message_ids("INBOX") == dovecot.message_ids("Printers") == []
    rows = inbound(app)
    assert sorted(f"<{r.message_id}>" for r in rows) == ids(tag, n)
    assert all(r.state == "processed" for r in rows)
    assert len(tickets(app)) == n
    app.engine.dispose()


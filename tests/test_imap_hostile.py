"""IMAP against a real Dovecot when other clients get in the way (reliability bar, part
(b), "IMAP-specific"): item 55, another client of the same account expunges a message
while the gateway is taking the batch; item 56, the same message (same bytes, same
Message-ID) in two folders the gateway reads.  Items 54 and "twice in one folder" are in
tests/test_imap.py, whose fixtures and helpers these tests use.

The other client is a second IMAPClient logged in to the same account; it acts at a
fixed point of the gateway's work (just before a fetch, just before a move), so the
window is hit every time, not by luck."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import uuid

import pytest
from sqlmodel import select
from conftest import run_gateway, write_config
from harness.dovecot import USER
from harness.dovecot import dovecot, dovecot_ok, make_dovecot  # noqa: F401 (fixtures)
from harness.imap import ENV, config_text, ids, inbound, make_app, mail, tickets, wait_until

from gateway.outbound.outbox import render_pending
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
        real_move = imap.importer.move

        def move(client, uid, folder):
            if uid == victim:
                assert [r.message_id for r in inbound(app)].count(victim_mid.strip("<>")) == 1  # committed
                expunge(server, victim)
            return real_move(client, uid, folder)

        monkeypatch.setattr(imap.importer, "move", move)
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
    vanished, and the pass goes on with the rest.  (A too-large one's header-only row,
    committed before the move (item 57), stays, saying it was expunged.)"""
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
        real_store = imap.importer.store_raw

        def store_raw(engine, blobs, raw, **kw):  # the disk fails for this one mail only
            if victim_mid.encode() in raw:
                raise imap.importer.StoreFailed("could not store the message: OSError: disk full")
            return real_store(engine, blobs, raw, **kw)

        monkeypatch.setattr(imap.importer, "store_raw", store_raw)
    real_move = imap.importer.move

    def move(client, uid, folder):
        if uid == victim:
            assert folder == "failed"
            expunge(dovecot, victim)
        return real_move(client, uid, folder)

    monkeypatch.setattr(imap.importer, "move", move)
    box = app.config.mailboxes[0]
    results = one_pass(imap.Importer(box, app.engine, app.blobs, process=app.processor.process,
                                     max_size=app.config.smtp.max_message_size))

    assert [(r.uid, r.outcome, r.moved_to) for r in results] == [
        (1, "created", "processed"), (2, "vanished" if why == "store-failed" else "too-large", None),
        (3, "created", "processed")]
    assert dovecot.message_ids("processed") == [f"<{tag}-0@example.org>", f"<{tag}-2@example.org>"]
    assert dovecot.message_ids("INBOX") == dovecot.message_ids("failed") == []
    if why == "store-failed":
        assert f"<{tag}-1@example.org>" not in {f"<{r.message_id}>" for r in inbound(app)}
    else:
        stub, = [r for r in inbound(app) if f"<{r.message_id}>" == victim_mid]
        assert stub.outcome == "too-large" and "expunged by another client" in stub.detail
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



# Item 57: a message above the size limit --------------------------------------------------
# Not fetched: only its header, kept as a quarantined inbound row (outcome too-large) that
# is committed before the message is moved to the failed folder; its sender is told, once
# a day at most, that it was not read.
LIMIT = "[smtp]\nmax_message_size = 4000\n"
BODY_MARKER = "SCANNED-CONTRACT-PAGE"


def big_mail(tag: str, i: int = 0) -> bytes:
    """A mail above LIMIT by its body only: its header is small, its body is text that
    must never reach the gateway while the limit stands."""
    head = mail(i, tag, subject="Scans of the signed contract").split(b"\r\n\r\n", 1)[0]
    return head + b"\r\n\r\n" + (f"{BODY_MARKER} " * 400).encode() + b"\r\n"


def server_size(server, folder: str = "INBOX") -> int:
    """RFC822.SIZE of the only message of ``folder``, as the server says it."""
    with server.client() as c:
        c.select_folder(folder, readonly=True)
        uid, = c.search(["ALL"])
        return int(c.fetch([uid], ["RFC822.SIZE"])[uid][b"RFC822.SIZE"])


def move_back_by_hand(server, folder: str = "failed") -> None:
    """A person drags the failed folder's messages back to INBOX (their UIDs change)."""
    with server.client() as c:
        c.select_folder(folder)
        c.move(c.search(["ALL"]), "INBOX")


def stubs(app: App, mid: str) -> list:
    return [r for r in inbound(app) if r.message_id == mid and r.outcome == "too-large"]


def importer_of(app: App) -> imap.Importer:
    return imap.Importer(app.config.mailboxes[0], app.engine, app.blobs, process=app.processor.process,
                         max_size=app.config.smtp.max_message_size)


def test_too_large_mail_is_recorded_from_its_header_before_its_move(tmp_path, dovecot, database_url, caplog,
                                                                    monkeypatch):
    """A mail above [smtp] max_message_size: its body is never fetched (no FETCH of it asks
    for more than RFC822.SIZE and the header; the stored blob is the header, without the
    body's text); one inbound row, quarantined, outcome too-large, with the real size, its
    Message-ID, the sha256 of the stored header and a detail naming the limit and the
    folder, committed before the message is moved to the failed folder; an ERROR names the
    row.  Moved back by hand and polled again, it is the same row, not a second one."""
    caplog.set_level(logging.INFO, logger="gateway.imap")
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, database_url=database_url, top=LIMIT)
    big = big_mail(tag)
    dovecot.append("INBOX", [big])
    size = server_size(dovecot)
    assert size == len(big) > 4000
    dovecot.append("INBOX", [mail(1, tag)])  # an ordinary one, after it
    mid = f"{tag}-0@example.org"

    fetched: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
    real_fetch = imap.importer.IMAPClient.fetch

    def fetch(self, messages, data, *a, **kw):
        fetched.append((tuple(messages), tuple(d.decode() if isinstance(d, bytes) else d for d in data)))
        return real_fetch(self, messages, data, *a, **kw)

    rows_at_move: list[list] = []
    real_move = imap.importer.move

    def move(client, uid, folder):
        if uid == 1:
            rows_at_move.append([(r.state, r.outcome) for r in inbound(app)])  # what is committed now
        return real_move(client, uid, folder)

    with monkeypatch.context() as m:
        m.setattr(imap.importer.IMAPClient, "fetch", fetch)
        m.setattr(imap.importer, "move", move)
        results = one_pass(importer_of(app))

    # The body was never asked for: UID 1 was fetched for its size and its header only.
    asked = [item for uids, items in fetched if 1 in uids for item in items]
    assert asked and all(i == "RFC822.SIZE" or i.startswith("BODY.PEEK[HEADER]") for i in asked), asked
    assert any(i.startswith("BODY.PEEK[HEADER]") for i in asked)
    # Its row was committed before its move.
    assert rows_at_move == [[("quarantined", "too-large")]]

    too_large, ordinary = results
    assert (too_large.uid, too_large.outcome, too_large.moved_to, too_large.message_id) == (1, "too-large",
                                                                                            "failed", mid)
    assert ordinary.outcome == "created" and ordinary.moved_to == "processed"
    stub, = stubs(app, mid)
    assert f"#{stub.id}" in too_large.detail
    assert (stub.state, stub.outcome, stub.size, stub.source, stub.ticket_number) == (
        "quarantined", "too-large", size, "imap:desk", None)
    for words in (f"too large: {size} bytes > 4000", "[smtp] max_message_size", "not fetched",
                  "left in folder 'failed'", "only its header is kept", "from User 0 <user0@example.org>",
                  "Scans of the signed contract"):
        assert words in stub.detail, (words, stub.detail)
    # The blob is the header, as the server sent it; the body's text is not in it.
    header = app.blobs.get(stub.sha256)
    assert hashlib.sha256(header).hexdigest() == stub.sha256
    assert header == big.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    assert BODY_MARKER.encode() not in header and f"<{mid}>".encode() in header
    assert len(tickets(app)) == 1  # the ordinary mail's; none from a header
    assert dovecot.message_ids("failed") == [f"<{mid}>"]
    assert dovecot.message_ids("processed") == [f"<{tag}-1@example.org>"]
    assert dovecot.message_ids("INBOX") == []
    with dovecot.client() as c:  # moved unread
        c.select_folder("failed", readonly=True)
        assert all(b"\\Seen" not in f for f in c.get_flags(c.search(["ALL"])).values())
    alerts = [r for r in caplog.records if r.levelno == logging.ERROR and "UID 1" in r.getMessage()]
    assert len(alerts) == 1 and f"inbound #{stub.id}" in alerts[0].getMessage(), alerts

    # A person moves it back; the next poll sees the same message: the same row.
    move_back_by_hand(dovecot)
    assert dovecot.message_ids("INBOX") == [f"<{mid}>"]
    again, = one_pass(importer_of(app))
    assert (again.outcome, again.moved_to, again.duplicate) == ("too-large", "failed", True)
    assert f"#{stub.id}" in again.detail
    assert [r.id for r in stubs(app, mid)] == [stub.id]
    assert len(inbound(app)) == 2 and len(tickets(app)) == 1
    assert dovecot.message_ids("failed") == [f"<{mid}>"] and dovecot.message_ids("INBOX") == []
    app.engine.dispose()


def test_the_sender_of_a_too_large_mail_is_told_once_and_machines_never(tmp_path, dovecot, database_url):
    """A person whose mail was too large gets one notice, with no ticket: in their
    language, answering their mail (In-Reply-To, Auto-Submitted: auto-replied), replies
    going to the plain helpdesk address, naming the size and the limit.  The same mail
    seen again, or another too-large one the same day, gets none; neither does an
    auto-reply or a no-reply sender.  Each row's detail says what was done."""
    from email import message_from_bytes, policy

    from store.db import session_for
    from store.models import Outbox
    from store.tickets import add_person

    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, database_url=database_url, top=LIMIT)
    with session_for(app.engine) as session:  # user0 is known, and reads Dutch
        add_person(session, "user0@example.org", "User 0", language="nl")
        session.commit()
    importer = imap.Importer(app.config.mailboxes[0], app.engine, app.blobs, process=app.processor.process,
                             max_size=app.config.smtp.max_message_size,
                             too_large_notice=app.processor.notify_too_large)

    def notices() -> list:
        render_pending(app.engine, app.notifier)
        with session_for(app.engine) as session:
            return list(session.exec(select(Outbox).order_by(Outbox.id)))

    dovecot.append("INBOX", [big_mail(tag, 0)])
    first, = one_pass(importer)
    assert first.outcome == "too-large"
    notice, = notices()
    assert (notice.event, notice.ticket_id, notice.recipient, notice.language, notice.state) == (
        "too-large", None, "user0@example.org", "nl", "pending")
    assert f"notice <{notice.message_id}> queued for user0@example.org" in first.detail
    stub, = stubs(app, f"{tag}-0@example.org")
    assert f"notice <{notice.message_id}> queued" in stub.detail
    sent = message_from_bytes(notice.raw, policy=policy.default)
    assert sent["In-Reply-To"] == f"<{tag}-0@example.org>" and sent["Auto-Submitted"] == "auto-replied"
    assert sent["Reply-To"].addresses[0].addr_spec == app.config.helpdesk_address  # no ticket token
    assert sent["Subject"] == "Uw e-mail is te groot om te lezen: Scans of the signed contract"  # no [number]
    text = sent.get_body(("plain",)).get_content()
    # Its size and the limit as a mail program shows them (Babel's units, in Dutch here).
    assert f"met {round(len(big_mail(tag, 0)) / 1024)} kB is die groter dan de 4 kB" in text, text
    assert "geen ticket" in text and "Beste User 0," in text

    # Seen again (moved back by hand), then another too-large mail of theirs: no more.
    move_back_by_hand(dovecot)
    dovecot.append("INBOX", [big_mail(tag, 0).replace(f"{tag}-0@".encode(), f"{tag}-5@".encode())])
    again, other = one_pass(importer)
    assert len(notices()) == 1
    for item in (again, other):
        assert "no notice: user0@example.org was told of a too-large mail in the last 24 hours" in item.detail

    # Machines and no-reply senders get nothing; a new person in the language they wrote.
    auto = big_mail(tag, 2).replace(b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:")
    noreply = big_mail(tag, 3).replace(b"user3@example.org", b"no-reply@example.org")
    german = big_mail(tag, 4).replace(b"Subject:", b"Content-Language: de\r\nSubject:")
    dovecot.append("INBOX", [auto, noreply, german])
    auto_item, noreply_item, german_item = one_pass(importer)
    assert "no notice: auto-reply" in auto_item.detail, auto_item.detail
    assert "no notice: no-reply sender no-reply@example.org" in noreply_item.detail
    assert [(n.recipient, n.language) for n in notices()] == [("user0@example.org", "nl"),
                                                                ("user4@example.org", "de")]
    assert tickets(app) == []
    # They go out like any mail of the outbox (here the file transport of the test config).
    from gateway.outbound.outbox import deliver_pending

    sent = deliver_pending(app.engine, app.config, app.transport())
    assert [r.outcome for _id, r in sent] == ["sent", "sent"]
    assert [n.state for n in notices()] == ["sent", "sent"]
    app.engine.dispose()


def test_too_large_mail_whose_record_cannot_be_stored_still_goes_to_failed(tmp_path, dovecot, caplog):
    """The store is down when a too-large mail comes (here the blob store's folder is a
    file): as for any mail that could not be stored, it is moved to the failed folder,
    never deleted, and an ERROR says so; no row was made."""
    caplog.set_level(logging.INFO, logger="gateway.imap")
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, top=LIMIT)
    app.blobs  # created; now make its folder unusable
    shutil.rmtree(app.config.blob_dir)
    app.config.blob_dir.write_text("not a folder")
    dovecot.append("INBOX", [big_mail(tag)])

    item, = one_pass(importer_of(app))

    assert (item.outcome, item.moved_to) == ("store-failed", "failed")
    assert "too large" in item.detail and "could not be stored" in item.detail
    assert dovecot.message_ids("failed") == [f"<{tag}-0@example.org>"]
    assert dovecot.message_ids("INBOX") == dovecot.message_ids("processed") == []
    assert inbound(app) == []
    said = [r for r in caplog.records if r.levelno == logging.ERROR and "could not be stored" in r.getMessage()]
    assert len(said) == 1 and "above the limit" in said[0].getMessage()
    app.engine.dispose()


def test_too_large_record_is_never_reprocessed_as_a_mail(tmp_path, dovecot):
    """`gateway inbound reprocess ID` refuses a too-large row (it would make a ticket from
    a header), saying what to do; `--quarantined` skips it and says so, and replays the
    other quarantined mail; `inbound list` and `inbound show` show it with its outcome and
    detail, and `show --raw` gives the header that was kept."""
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, top=LIMIT)
    cfg = str(tmp_path / "config.toml")
    big = big_mail(tag)
    mid = f"{tag}-0@example.org"
    dovecot.append("INBOX", [big])
    one_pass(importer_of(app))
    stub, = stubs(app, mid)

    def gateway(*args, check=False):
        return run_gateway("--config", cfg, *args, cwd=tmp_path, check=check)

    refused = gateway("inbound", "reprocess", str(stub.id))
    err = refused.stderr.decode()
    assert refused.returncode != 0, refused.stdout
    for words in ("too large", "only its header", "[smtp] max_message_size", "gateway imap retry-failed desk"):
        assert words in err, (words, err)
    # Only the too-large one quarantined: nothing to replay, and it says why.
    alone = gateway("inbound", "reprocess", "--quarantined")
    assert alone.returncode == 0 and alone.stdout == b""
    assert f"skipped 1 too-large mail(s) (#{stub.id})" in alone.stderr.decode()

    # Another quarantined mail (no sender to answer) beside it.
    no_sender = mail(1, tag).replace(b"From: User 1 <user1@example.org>\r\n", b"")
    dovecot.append("INBOX", [no_sender])
    other, = one_pass(importer_of(app))
    assert other.outcome == "quarantined"
    other_row, = [r for r in inbound(app) if r.message_id == f"{tag}-1@example.org"]
    mixed = gateway("inbound", "reprocess", str(other_row.id), str(stub.id))
    assert mixed.returncode != 0 and "too large" in mixed.stderr.decode()
    assert [(r.id, r.state, r.outcome, r.detail) for r in inbound(app)] == [
        (stub.id, "quarantined", "too-large", stub.detail),
        (other_row.id, "quarantined", "quarantined", other_row.detail)]  # nothing was reset

    replay = gateway("inbound", "reprocess", "--quarantined", "--json")
    assert f"skipped 1 too-large mail(s) (#{stub.id})" in replay.stderr.decode()
    replayed = [json.loads(line) for line in replay.stdout.decode().splitlines()]
    assert [r["id"] for r in replayed] == [other_row.id]  # the other one only
    assert replay.returncode == 1  # still no sender: quarantined again
    after, = stubs(app, mid)
    assert (after.state, after.outcome, after.detail, after.attempts) == ("quarantined", "too-large", stub.detail, 0)
    assert tickets(app) == []

    listed = json.loads(gateway("inbound", "list", "--outcome", "too-large", "--json", check=True).stdout)
    assert [(r["id"], r["state"], r["outcome"], r["size"], r["message_id"]) for r in listed] == [
        (stub.id, "quarantined", "too-large", len(big), mid)]
    assert "left in folder 'failed'" in listed[0]["detail"]
    line, = [x for x in gateway("inbound", "list", check=True).stdout.decode().splitlines()
             if x.split()[0] == str(stub.id)]
    assert "quarantined" in line and "too-large" in line and f"{len(big)} bytes > 4000" in line
    shown = json.loads(gateway("inbound", "show", str(stub.id), "--json", check=True).stdout)
    assert shown["outcome"] == "too-large" and shown["detail"] == stub.detail and shown["size"] == len(big)
    raw = gateway("inbound", "show", str(stub.id), "--raw", check=True).stdout
    assert raw == big.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    app.engine.dispose()


def test_too_large_mail_is_taken_in_full_once_the_limit_allows_it(tmp_path, dovecot):
    """`gateway imap retry-failed` leaves a too-large mail in the failed folder while the
    limit stands; once [smtp] max_message_size is raised it moves it back, and the next
    poll fetches it whole: a new row and a ticket with its body.  The header-only row
    stays, the record of the earlier refusal."""
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, top=LIMIT)
    big = big_mail(tag)
    mid = f"{tag}-0@example.org"
    dovecot.append("INBOX", [big])
    one_pass(importer_of(app))
    stub, = stubs(app, mid)
    app.engine.dispose()

    def retry_failed():
        out = run_gateway("--config", str(tmp_path / "config.toml"), "imap", "retry-failed", "desk", "--json",
                          cwd=tmp_path, env=ENV)
        return [(r["message_id"], r["outcome"], r["moved_to"]) for r in json.loads(out.stdout)]

    assert retry_failed() == [("", "too-large", None)]  # the limit still stands: it stays
    assert dovecot.message_ids("failed") == [f"<{mid}>"] and dovecot.message_ids("INBOX") == []

    app = make_app(tmp_path, dovecot, top="[smtp]\nmax_message_size = 100000\n")
    assert retry_failed() == [(mid, "moved-back", "INBOX")]
    item, = one_pass(importer_of(app))
    assert item.outcome == "created" and item.ticket and item.moved_to == "processed" and not item.duplicate
    full, = [r for r in inbound(app) if r.message_id == mid and r.outcome != "too-large"]
    assert full.id != stub.id and full.state == "processed" and full.ticket_number == item.ticket
    assert app.blobs.get(full.sha256) == big and full.size == len(big)
    after, = stubs(app, mid)
    assert (after.id, after.state, after.detail) == (stub.id, "quarantined", stub.detail)
    ticket, = tickets(app)
    assert BODY_MARKER in ticket.description
    assert dovecot.message_ids("processed") == [f"<{mid}>"]
    assert dovecot.message_ids("failed") == dovecot.message_ids("INBOX") == []
    app.engine.dispose()

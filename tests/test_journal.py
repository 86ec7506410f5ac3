"""The door's journal (gateway/ingest/spool.py): a sender's 250 waits for its blob and one
journal fsync, never for the database; the rows follow; a journal left by a crash is
recorded at the next start, each mail once."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from sqlalchemy import text

from gateway.ingest.journal import Journal, read_journal, recover_journals
from gateway.ingest.spool import Spool


def _raw(i: int) -> bytes:
    return (f"From: Hélène <helene{i}@client.example>\r\nTo: helpdesk@localhost\r\nSubject: Imprimante {i}\r\n"
            f"Message-ID: <journal-{i}@client.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"L'imprimante n°{i} ne répond plus.\r\n").encode()


def rows(gw) -> dict[str, tuple]:
    with gw.engine.connect() as conn:
        return {mid: (sha, src) for mid, sha, src in
                conn.execute(text("select message_id, sha256, source from inboundmessage")).all()}


def wait_for(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_answers_while_the_database_is_locked_and_records_after(sqlite_gw, tmp_path):
    """SQLite's write lock held by another connection (as the worker's transaction holds
    it): every submission is answered at once, from the journal, and recorded once the
    lock is let go.  (SQLite only: PostgreSQL has no database-wide write lock.)"""
    gw = sqlite_gw
    recorded = []
    spool = Spool(gw.engine, gw.blobs, journal_dir=tmp_path / "spool", on_recorded=recorded.append)
    holder = sqlite3.connect(gw.engine.url.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        futures = [spool.submit(_raw(i), source="smtp", rcpt_to=("helpdesk@localhost",)) for i in range(10)]
        answers = [f.result(timeout=10) for f in futures]  # would time out if they waited for the lock
        assert all(a.id is None and len(a.sha256) == 64 for a in answers)
        assert len(read_journal(spool.journal.path)) == 10
        time.sleep(0.3)
        assert recorded == []  # still locked out
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_for(lambda: len(recorded) == 10)
    spool.close()
    stored = rows(gw)
    assert set(stored) == {f"journal-{i}@client.example" for i in range(10)}
    assert all(gw.blobs.get(sha) == _raw(int(mid.split("-")[1].split("@")[0])) for mid, (sha, _) in stored.items())
    assert (tmp_path / "spool" / "journal-0").stat().st_size == 0  # emptied once all were recorded


def test_a_duplicate_is_recorded_as_the_first_row(gw, tmp_path):
    recorded = []
    spool = Spool(gw.engine, gw.blobs, journal_dir=tmp_path / "spool", on_recorded=recorded.append)
    for f in [spool.submit(_raw(1), source="smtp") for _ in range(3)]:
        f.result(timeout=10)
    wait_for(lambda: len(recorded) == 3)
    spool.close()
    assert len({r.id for r in recorded}) == 1 and sum(not r.duplicate for r in recorded) == 1
    assert len(rows(gw)) == 1


def test_a_journal_left_by_a_crash_is_recorded_once_at_the_next_start(gw, tmp_path):
    """What a door killed after its 250s leaves: blobs and journal lines, no rows (and one
    line cut short by the crash, never answered).  The next start records them; a mail
    already recorded before the crash is not recorded twice."""
    blobs = gw.blobs  # on files or in PostgreSQL, as the configuration says
    folder = tmp_path / "spool"
    folder.mkdir()
    lines = []
    for i in range(5):
        sha = blobs.put(_raw(i))
        lines.append(json.dumps({"sha256": sha, "size": len(_raw(i)), "message_id": f"journal-{i}@client.example",
                                 "source": "smtp", "mail_from": f"helene{i}@client.example",
                                 "rcpt_to": ["helpdesk@localhost"], "received_at": "2026-11-28T01:02:03+00:00"}))
    (folder / "journal-0").write_text("\n".join(lines) + '\n{"sha256": "ab')  # the torn last line
    # One of them made it into the database before the crash.
    from gateway.ingest.inbound import record_inbound

    first = json.loads(lines[0])
    record_inbound(gw.engine, first["sha256"], first["size"], first["message_id"], source="smtp")
    spool = Spool(gw.engine, gw.blobs, journal_dir=folder)
    assert spool.recovered == 4
    spool.close()
    stored = rows(gw)
    assert set(stored) == {f"journal-{i}@client.example" for i in range(5)}
    assert (folder / "journal-0").stat().st_size == 0
    with gw.engine.connect() as conn:
        when = conn.execute(text("select received_at from inboundmessage where message_id = 'journal-3@client.example'")
                            ).scalar()
    assert str(when).startswith("2026-11-28 01:02:03")  # the time of the 250, not of the recovery
    assert recover_journals(folder, gw.engine, gw.blobs) == 0  # nothing left to do


def test_a_running_doors_journal_is_left_alone(gw, tmp_path):
    """Two starts on one folder: the second takes another journal file and does not read
    (or empty) the one the first is writing."""
    folder = tmp_path / "spool"
    first = Journal.open(folder)
    first.append([{"sha256": "0" * 64, "size": 1, "message_id": "x", "source": "smtp", "mail_from": "",
                   "rcpt_to": [], "received_at": None}])
    assert recover_journals(folder, gw.engine, gw.blobs) == 0
    assert len(read_journal(first.path)) == 1
    second = Journal.open(folder)
    assert second.path != first.path
    first.close()
    second.close()


def test_the_answer_waits_for_the_journal_fsync(gw, tmp_path, monkeypatch):
    """No 250 before the journal line is on disk: a journal that cannot be written fails
    the submission (the door answers 451) and nothing is recorded."""
    spool = Spool(gw.engine, gw.blobs, journal_dir=tmp_path / "spool")

    def broken(_entries):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool.journal, "append", broken)
    with pytest.raises(Exception) as exc:
        spool.submit(_raw(7), source="smtp").result(timeout=10)
    assert "No space left" in str(exc.value)
    spool.close()
    assert rows(gw) == {}


def test_a_blob_that_cannot_be_written_fails_its_mail_alone(gw, tmp_path, monkeypatch):
    """Small mails have their blob written by the journal's own thread (INLINE_BLOB): a
    blob that cannot be written fails its own submission (the door answers 451, nothing
    recorded), and the mails around it are answered and recorded."""
    spool = Spool(gw.engine, gw.blobs, journal_dir=tmp_path / "spool")
    real = spool.door_blobs.put  # where the door writes (the blob store, or the journal's folder)

    def full_for_one(data, durable=True):
        if b"Imprimante 3\r\n" in data:
            raise OSError(28, "No space left on device")
        return real(data, durable)

    monkeypatch.setattr(spool.door_blobs, "put", full_for_one)
    futures = [spool.submit(_raw(i), source="smtp") for i in range(6)]
    answers = {}
    for i, future in enumerate(futures):
        try:
            answers[i] = future.result(timeout=30).sha256
        except Exception as exc:  # noqa: BLE001
            answers[i] = exc
    spool.close()
    assert "No space left" in str(answers[3])
    assert all(isinstance(answers[i], str) for i in (0, 1, 2, 4, 5)), answers
    assert sorted(rows(gw)) == sorted(f"journal-{i}@client.example" for i in (0, 1, 2, 4, 5))


def test_concurrent_submissions_share_journal_fsyncs(gw, tmp_path):
    spool = Spool(gw.engine, gw.blobs, journal_dir=tmp_path / "spool")
    start = threading.Barrier(24)
    fsyncs = []
    real = spool.journal.append

    def counting(entries):
        fsyncs.append(len(entries))
        real(entries)

    spool.journal.append = counting

    def one(i):
        start.wait()
        return spool.submit(_raw(i), source="smtp").result(timeout=60)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(one, range(24)))
    spool.close()
    assert sum(fsyncs) == 24 and len(fsyncs) < 24, fsyncs
    assert len(rows(gw)) == 24


def test_a_mail_above_the_inline_size_goes_through_the_blob_pool(gw, tmp_path):
    """Small mails are written by the journal's thread, larger ones (up to the door's
    1 MB in memory) by the blob pool: both are stored byte for byte and recorded."""
    from gateway.ingest.spool import INLINE_BLOB

    spool = Spool(gw.engine, gw.blobs, journal_dir=tmp_path / "spool")
    small = _raw(1)
    large = _raw(2) + b"x" * 76 + b"\r\n"
    large += (b"y" * 76 + b"\r\n") * (INLINE_BLOB // 78 + 100)
    assert len(small) <= INLINE_BLOB < len(large) < 1_000_000
    answers = [spool.submit(raw, source="smtp").result(timeout=30) for raw in (small, large)]
    spool.close()
    assert [gw.blobs.get(a.sha256) for a in answers] == [small, large]
    assert sorted(rows(gw)) == ["journal-1@client.example", "journal-2@client.example"]


@pytest.fixture
def pg_gw(tmp_path, postgres_url):
    """A gateway on PostgreSQL, its blobs in the database (the default there)."""
    from conftest import write_config
    from gateway.app import App
    from gateway.config import load_config

    app = App(load_config(write_config(tmp_path, f'[database]\nurl = "{postgres_url}"\n'), env={}))
    yield app
    app.engine.dispose()


def test_blobs_in_the_database_the_door_answers_while_it_is_away(pg_gw, tmp_path):
    """With the blobs in the database (PostgreSQL's default), the door writes what it
    journals in the journal's own folder: with the database unreachable (a port where
    nothing listens) every mail is still answered, a large one too; the next start, with
    the database back, copies each into the database, records it once, and empties the
    folder."""
    from conftest import free_port
    from store.db import make_engine
    from store.dbblobs import DatabaseBlobStore

    gw = pg_gw
    assert isinstance(gw.blobs, DatabaseBlobStore)

    away = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    folder = tmp_path / "spool"
    spool = Spool(away, DatabaseBlobStore(away, tmp_path / "scratch"), journal_dir=folder)
    large = _raw(9) + b"x" * (3 << 20) + b"\r\n"
    futures = [spool.submit(raw, source="smtp", rcpt_to=("helpdesk@localhost",))
               for raw in [_raw(i) for i in range(4)] + [large]]
    answers = [f.result(timeout=20) for f in futures]  # answered with the database away
    assert len(read_journal(spool.journal.path)) == 5
    kept = {a.sha256 for a in answers}
    assert all(spool.door_blobs.exists(sha) for sha in kept)
    spool.close()  # gives up recording after a while: the journal keeps them
    away.dispose()
    assert rows(gw) == {}

    again = Spool(gw.engine, gw.blobs, journal_dir=folder)
    assert again.recovered == 5
    again.close()
    stored = rows(gw)
    assert set(stored) == {f"journal-{i}@client.example" for i in (0, 1, 2, 3, 9)}
    assert gw.blobs.get(stored["journal-9@client.example"][0]) == large
    assert all(gw.blobs.get(sha) for sha, _src in stored.values())
    assert not any(again.door_blobs.exists(sha) for sha in kept)  # taken over, then removed

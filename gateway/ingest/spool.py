"""Group commit for the SMTP door: concurrent DATA commands share one transaction.

Each accepted mail costs an fsync of its blob and an fsync of the database commit.  With
several clients sending at once, those commits queue behind one another on the write
lock.  The spool instead writes each blob as it comes (fsynced, in a small thread pool,
so a large mail does not hold back small ones), collects whatever mails have their blob
on disk while the previous batch was being committed, inserts all their rows in ONE
transaction, commits once, and only then wakes every waiting DATA command: the promise "250 only after the mail is on disk"
is kept for each mail, the cost of the commit is shared.

A batch never waits for more mail to arrive: a lone client gets its commit at once, a
busy door gets bigger batches.  If a row of the batch collides with a stored duplicate
(the unique (message_id, sha256) key), the batch is rolled back and its mails are stored
one by one through ``store_raw``, which answers duplicates with the first row.

With a journal (``gateway serve`` has one, in ``<data_dir>/spool/``), the answer does not
wait for the database at all: once its blob is fsynced, a mail is appended to the
journal (one fsync for every mail that came meanwhile) and answered.  Mails up to
INLINE_BLOB have their blob written by the journal's thread itself, just before their
line (the blob pool's hand-offs cost the door more CPU than the writes; larger mails
still go through the pool, so they hold back no small one); a second thread then
records the rows in the database, in batches, and empties the journal when everything in
it is recorded.  With the blobs in the database (PostgreSQL, issue 19) the door writes a
journaled mail's bytes in the journal's own folder (``door_blobs``: files of this host,
fsynced, as Postfix keeps its queue) and the recorder copies them into the database just
before their row, then removes them: the door keeps answering 250 while the database
restarts or is away, and the journal holds everything it answered.  On SQLite the door and the worker share one write lock: without the
journal a sender's 250 waited for the worker's transaction (up to ~300 ms on a busy
machine, measured); now it waits for two fsyncs.  A journal left by a crash is read at
the next start and its mails recorded (a mail recorded twice is its own duplicate: the
unique key answers with the first row).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from gateway.errors import StoreFailed
from gateway.ingest.inbound import Stored, header_message_id, record_inbound, store_raw
from gateway.ingest.journal import Journal, hand_over_many, recover_journals
from store.blobs import BlobStore, BlobWriter
from store.db import Prepared, make_engine
from store.models import InboundMessage, utcnow
from store.vocabulary import RECEIVED


log = logging.getLogger("gateway.spool")


@dataclass
class _Item:
    raw: bytes | None  # None for a mail written to the blob store as it arrived
    source: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    future: Future = field(default_factory=Future)
    sha: str = ""
    size: int = 0
    message_id: str = ""
    received_at: datetime = field(default_factory=utcnow)
    peer: str = ""  # the client's address and HELO name (SPF, gateway.ingest.verify)
    helo: str = ""


class Spool:
    """A writer thread taking store requests in batches of at most ``max_batch``."""

    def __init__(self, engine: Engine, blobs: BlobStore, max_batch: int = 64, blob_threads: int = 8,
                 lock_wait: float = 30.0, journal_dir: Path | None = None,
                 on_recorded: Callable[[Stored], None] | None = None):
        self.engine = engine
        # Called (in the recording thread) for each mail once its row is committed, when
        # there is a journal: the answer came before, the worker may start now.
        self.on_recorded = on_recorded
        self.lock_wait = lock_wait
        # On SQLite, a connection of our own that never runs the WAL checkpoint (the
        # worker's do).  Without a journal, a sender waits for its commit: it does not
        # sleep inside SQLite when the worker holds the write lock but polls every
        # millisecond (_write_batch).  With one, nobody waits for it: SQLite's own
        # waiting, which sleeps without holding the door's GIL (the polling took the
        # door's event loop's time while the worker held the lock: accept p99 ~120 ms).
        self._sqlite = engine.url.get_backend_name() == "sqlite"
        self._engine = (make_engine(engine.url.render_as_string(hide_password=False),
                                    busy_timeout_ms=int(lock_wait * 1000) if journal_dir is not None else 0,
                                    checkpoints=False)
                        if self._sqlite else engine)
        self.blobs = blobs
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._blob_pool = ThreadPoolExecutor(max_workers=blob_threads, thread_name_prefix="spool-blob")
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._closed = False
        self.largest_batch = 0  # seen by the tests and the benchmark: did commits get grouped?
        self._warm_up()
        self.journal: Journal | None = None
        self.recovered = 0
        # Where the door writes what it journals: the blob store itself when it is files;
        # with the blobs in the database, a folder of the journal's (see the docstring).
        self.door_blobs = blobs
        if journal_dir is not None and not isinstance(blobs, BlobStore):
            self.door_blobs = BlobStore(Path(journal_dir) / "blobs")
        if journal_dir is not None:
            self.recovered = recover_journals(journal_dir, self.engine, blobs,
                                              local=self.door_blobs if self.door_blobs is not blobs else None)
            self.journal = Journal.open(journal_dir)
            self._records: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
            self._recorder = threading.Thread(target=self._record_loop, name="spool-recorder", daemon=True)
            self._recorder.start()
        self._thread.start()

    def _warm_up(self) -> None:
        """Compile the row insert once before the first mail (a rolled-back insert): the
        first sender's 250 should not wait for it."""
        try:
            with self._engine.connect() as conn:
                with conn.begin() as tx:
                    _INSERT_INBOUND.execute(conn, _inbound_row(_Item(b"", "warm-up", "", ()), "", "warm-up"))
                    tx.rollback()
        except Exception:  # noqa: BLE001 - the database busy or down: the first mail will say so
            log.debug("spool warm-up skipped", exc_info=True)

    def submit(self, raw: bytes, *, source: str, mail_from: str = "", rcpt_to=(), peer: str = "",
               helo: str = "") -> Future:
        """A future that resolves to ``Stored`` once the mail is committed (or to StoreFailed).

        The blob is written (and fsynced) first, in the blob pool; only then does the mail
        join the queue of the next commit, so a 5 MB mail being written never holds back
        the commit of small ones that arrived after it."""
        if self._closed:
            raise StoreFailed("the spool is closed")
        item = _Item(raw, source, mail_from, tuple(rcpt_to), size=len(raw), peer=peer, helo=helo)
        if self.journal is None:
            return self._after(self.blobs.put, raw, item=item)
        if len(raw) <= INLINE_BLOB:
            # Written by the writer thread itself, just before the journal line: no hand-off
            # through the blob pool's threads (each one a GIL hand-over and a wake-up).
            self._queue.put(item)
            return item.future
        return self._after(self._put, item, item=item)

    def _put(self, item: _Item) -> str:
        """Write a journaled mail's blob (fsynced); its sha256."""
        item.message_id = header_message_id(item.raw)
        sha = self.door_blobs.put(item.raw)
        item.raw = None  # on disk now: the bytes are not held until the row is recorded
        return sha

    def submit_written(self, writer: BlobWriter, message_id: str, *, source: str, mail_from: str = "",
                       rcpt_to=(), peer: str = "", helo: str = "") -> Future:
        """Like ``submit``, for a large mail the door wrote to a temporary blob as it
        arrived (its memory stays bounded): the blob is committed (fsynced, renamed) in
        the blob pool, then the mail joins the next commit."""
        if self._closed:
            writer.abort()
            raise StoreFailed("the spool is closed")
        item = _Item(None, source, mail_from, tuple(rcpt_to), size=writer.size, message_id=message_id, peer=peer,
                     helo=helo)
        return self._after(writer.commit, item=item)

    def _after(self, write_blob, *args, item: _Item) -> Future:
        def blob_written(done: Future) -> None:
            exc = done.exception()
            if exc is not None:
                item.future.set_exception(
                    StoreFailed(f"could not store the message: {type(exc).__name__}: {exc}"))
                return
            item.sha = done.result()
            self._queue.put(item)

        self._blob_pool.submit(write_blob, *args).add_done_callback(blob_written)
        return item.future

    def close(self) -> None:
        """Finish what was submitted, then stop the writer thread."""
        if not self._closed:
            self._closed = True
            self._blob_pool.shutdown(wait=True)  # every blob written has queued its mail
            self._queue.put(None)
            self._thread.join()
            if self.journal is not None:
                self._records.put(None)
                self._recorder.join()
                self.journal.close()
            if self._engine is not self.engine:
                self._engine.dispose()

    # The writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch, stop = _take(self._queue, self.max_batch)
            if batch:
                if self.journal is None:
                    self._write(batch)
                else:
                    self._append(batch)
            if stop:
                return

    def _append(self, batch: list[_Item]) -> None:
        """Journal the batch (one fsync), answer every mail of it, hand it to the recorder."""
        self.largest_batch = max(self.largest_batch, len(batch))
        written = []
        for item in batch:
            if item.raw is not None:  # a small mail: its blob first (INLINE_BLOB)
                try:
                    item.sha = self._put(item)
                except Exception as exc:  # noqa: BLE001 - its command is told (451)
                    item.future.set_exception(
                        StoreFailed(f"could not store the message: {type(exc).__name__}: {exc}"))
                    continue
            written.append(item)
        batch = written
        if not batch:
            return
        try:
            self.journal.append([_entry(item) for item in batch])
        except Exception as exc:  # noqa: BLE001 - every waiting command is told (451)
            failure = StoreFailed(f"could not store the message: {type(exc).__name__}: {exc}")
            for item in batch:
                item.future.set_exception(failure)
            return
        for item in batch:
            item.future.set_result(Stored(None, False, item.message_id, item.sha))
        self._records.put(batch)

    def _record_loop(self) -> None:
        """Record journaled mails in the database, as many at once as are waiting."""
        while True:
            batches, stop = _take(self._records, 4)
            if batches:
                self._record([item for batch in batches for item in batch])
            if stop:
                return

    def _record(self, items: list[_Item]) -> None:
        """Insert the rows, waiting as long as it takes (the database down, the lock held):
        the mails are safe in the journal meanwhile.  On close, after lock_wait seconds
        of failures, they are left there for the next start."""
        delay = 0.05
        while True:
            try:
                self._hand_over(items)
                results = self._rows(items)
            except Exception as exc:  # noqa: BLE001 - the database away: tried again
                results = [exc] * len(items)
            failed = [r for r in results if isinstance(r, BaseException)]
            if not failed:
                break
            if self._closed and delay >= 5.0:
                log.error("%d journaled mails not recorded (%s); they will be at the next start", len(items),
                          failed[0])
                return
            log.error("could not record %d journaled mails (%s); retrying in %.1f s", len(items), failed[0], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        for item, stored in zip(items, results):
            log.info("recorded <%s> as #%s%s", stored.message_id, stored.id, " (duplicate)" if stored.duplicate else "")
            if self.on_recorded is not None:
                try:
                    self.on_recorded(stored)
                except Exception:  # noqa: BLE001 - a wake-up that failed: the worker polls anyway
                    log.exception("on_recorded failed")
        self.journal.recorded(len(items))
        if self.door_blobs is not self.blobs:
            for sha in dict.fromkeys(item.sha for item in items):
                self.door_blobs.path(sha).unlink(missing_ok=True)

    def _hand_over(self, items: list[_Item]) -> None:
        """With the blobs in the database: the journaled mails' bytes copied there from
        the door's folder, before their rows (a row never names a blob the database
        lacks).  Removed from the folder only once their rows are recorded."""
        if self.door_blobs is self.blobs:
            return
        hand_over_many(self.door_blobs, self.blobs, [item.sha for item in items])

    def _write(self, batch: list[_Item]) -> None:
        self.largest_batch = max(self.largest_batch, len(batch))
        results = self._rows(batch)
        for item, result in zip(batch, results):
            if isinstance(result, BaseException):
                item.future.set_exception(result if isinstance(result, StoreFailed) else StoreFailed(str(result)))
            else:
                item.future.set_result(result)

    def _rows(self, batch: list[_Item]) -> list:
        """The batch's rows in one commit; per mail a Stored or the exception it met."""
        try:
            results = self._write_batch(batch)
        except IntegrityError:
            # A duplicate in the batch: store each mail alone, duplicates answered as such.
            results = []
            for item in batch:
                try:
                    if item.raw is None:  # its blob is stored: the row alone
                        results.append(record_inbound(self.engine, item.sha, item.size, item.message_id,
                                                      source=item.source, mail_from=item.mail_from,
                                                      rcpt_to=item.rcpt_to, received_at=item.received_at,
                                                      peer=item.peer, helo=item.helo))
                    else:
                        results.append(store_raw(self.engine, self.blobs, item.raw, source=item.source,
                                                 mail_from=item.mail_from, rcpt_to=item.rcpt_to,
                                                 peer=item.peer, helo=item.helo))
                except Exception as exc:  # noqa: BLE001 - handed to the waiting command
                    results.append(exc)
        except Exception as exc:  # noqa: BLE001 - every waiting command is told
            failure = StoreFailed(f"could not store the message: {type(exc).__name__}: {exc}")
            results = [failure] * len(batch)
        return results

    def _write_batch(self, batch: list[_Item]) -> list[Stored]:
        # The blobs are on disk (fsynced) already: see submit.
        shas = [item.sha for item in batch]
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                return self._insert(batch, shas)
            except OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not (self._sqlite and busy) or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    def _insert(self, batch: list[_Item], shas: list[str]) -> list[Stored]:
        # Core inserts on one connection, in one transaction: the ORM's unit of work
        # (identity map, flush plan) cost the door ~9 % of its busy time for these rows.
        results = []
        with self._engine.begin() as conn:
            for item, sha in zip(batch, shas):
                message_id = item.message_id if item.raw is None else header_message_id(item.raw)
                row_id = _INSERT_INBOUND.execute(conn, _inbound_row(item, message_id, sha))
                results.append(Stored(row_id, False, message_id, sha))
        if len(batch) > 1:
            log.debug("stored %d mails in one commit", len(batch))
        return results


# Mails up to this size have their blob written by the writer thread (Spool.submit).
INLINE_BLOB = 256 * 1024

# Compiled once, run on the cursor (store.db.Prepared); every column is given.
_INSERT_INBOUND = Prepared(insert(InboundMessage.__table__).returning(InboundMessage.__table__.c.id))


def _inbound_row(item: _Item, message_id: str, sha: str) -> dict:
    """A new inbound row's columns, as a new InboundMessage has them (received, no attempts)."""
    return dict(received_at=item.received_at, source=item.source[:500], mail_from=item.mail_from[:500],
                rcpt_to=",".join(item.rcpt_to)[:2000], message_id=message_id, sha256=sha, size=item.size,
                process=None, state=RECEIVED, outcome=None, ticket_number=None, detail=None, attempts=0,
                processed_at=None, peer=item.peer[:500], helo=item.helo[:500], authentication=None)


def _take(source: queue.SimpleQueue, most: int) -> tuple[list, bool]:
    """Wait for the first element of ``source``, then take what else is there, up to
    ``most``; and whether the end (None) was met."""
    first = source.get()
    if first is None:
        return [], True
    taken = [first]
    while len(taken) < most:
        try:
            more = source.get_nowait()
        except queue.Empty:
            break
        if more is None:
            return taken, True
        taken.append(more)
    return taken, False


def _entry(item: _Item) -> dict:
    return {"sha256": item.sha, "size": item.size, "message_id": item.message_id, "source": item.source,
            "mail_from": item.mail_from, "rcpt_to": list(item.rcpt_to),
            "received_at": item.received_at.isoformat(), "peer": item.peer, "helo": item.helo}

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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from gateway.errors import StoreFailed
from gateway.ingest.inbound import Stored, header_message_id, record_inbound, store_raw
from store.blobs import BlobStore, BlobWriter
from store.db import make_engine
from store.models import InboundMessage, utcnow

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


class Spool:
    """A writer thread taking store requests in batches of at most ``max_batch``."""

    def __init__(self, engine: Engine, blobs: BlobStore, max_batch: int = 64, blob_threads: int = 8,
                 lock_wait: float = 30.0, writing=None):
        self.engine = engine
        # An Event (threading or multiprocessing) set while a batch waits for or holds
        # the database: the worker process stands aside between two mails (service.py).
        self.writing = writing
        self.lock_wait = lock_wait
        # On SQLite, a connection of our own that does not sleep inside SQLite when the
        # worker holds the write lock: we poll every millisecond instead (see _commit).
        self._sqlite = engine.url.get_backend_name() == "sqlite"
        self._engine = (make_engine(engine.url.render_as_string(hide_password=False), busy_timeout_ms=0,
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
        self._thread.start()

    def _warm_up(self) -> None:
        """Compile the row insert once before the first mail (a rolled-back insert): the
        first sender's 250 should not wait for it."""
        try:
            with self._engine.connect() as conn:
                with conn.begin() as tx:
                    conn.execute(_INSERT_INBOUND, dict(received_at=utcnow(), source="warm-up", mail_from="",
                                                       rcpt_to="", message_id="", sha256="warm-up", size=0))
                    tx.rollback()
        except Exception:  # noqa: BLE001 - the database busy or down: the first mail will say so
            log.debug("spool warm-up skipped", exc_info=True)

    def submit(self, raw: bytes, *, source: str, mail_from: str = "", rcpt_to=()) -> Future:
        """A future that resolves to ``Stored`` once the mail is committed (or to StoreFailed).

        The blob is written (and fsynced) first, in the blob pool; only then does the mail
        join the queue of the next commit, so a 5 MB mail being written never holds back
        the commit of small ones that arrived after it."""
        if self._closed:
            raise StoreFailed("the spool is closed")
        item = _Item(raw, source, mail_from, tuple(rcpt_to), size=len(raw))
        return self._after(self.blobs.put, raw, item=item)

    def submit_written(self, writer: BlobWriter, message_id: str, *, source: str, mail_from: str = "",
                       rcpt_to=()) -> Future:
        """Like ``submit``, for a large mail the door wrote to a temporary blob as it
        arrived (its memory stays bounded): the blob is committed (fsynced, renamed) in
        the blob pool, then the mail joins the next commit."""
        if self._closed:
            writer.abort()
            raise StoreFailed("the spool is closed")
        item = _Item(None, source, mail_from, tuple(rcpt_to), size=writer.size, message_id=message_id)
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
            if self._engine is not self.engine:
                self._engine.dispose()

    # The writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[_Item]) -> None:
        self.largest_batch = max(self.largest_batch, len(batch))
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
                                                      rcpt_to=item.rcpt_to))
                    else:
                        results.append(store_raw(self.engine, self.blobs, item.raw, source=item.source,
                                                 mail_from=item.mail_from, rcpt_to=item.rcpt_to))
                except Exception as exc:  # noqa: BLE001 - handed to the waiting command
                    results.append(exc)
        except Exception as exc:  # noqa: BLE001 - every waiting command is told
            failure = StoreFailed(f"could not store the message: {type(exc).__name__}: {exc}")
            results = [failure] * len(batch)
        for item, result in zip(batch, results):
            if isinstance(result, BaseException):
                item.future.set_exception(result if isinstance(result, StoreFailed) else StoreFailed(str(result)))
            else:
                item.future.set_result(result)

    def _write_batch(self, batch: list[_Item]) -> list[Stored]:
        # The blobs are on disk (fsynced) already: see submit.
        shas = [item.sha for item in batch]
        deadline = time.monotonic() + self.lock_wait
        if self.writing is not None:
            self.writing.set()
        try:
            while True:
                try:
                    return self._insert(batch, shas)
                except OperationalError as exc:
                    busy = "locked" in str(exc) or "busy" in str(exc)
                    if not (self._sqlite and busy) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)
        finally:
            if self.writing is not None:
                self.writing.clear()

    def _insert(self, batch: list[_Item], shas: list[str]) -> list[Stored]:
        # Core inserts on one connection, in one transaction: the ORM's unit of work
        # (identity map, flush plan) cost the door ~9 % of its busy time for these rows.
        results = []
        with self._engine.begin() as conn:
            for item, sha in zip(batch, shas):
                message_id = item.message_id if item.raw is None else header_message_id(item.raw)
                row_id = conn.execute(_INSERT_INBOUND, dict(
                    received_at=utcnow(),
                    source=item.source[:500],
                    mail_from=item.mail_from[:500],
                    rcpt_to=",".join(item.rcpt_to)[:2000],
                    message_id=message_id,
                    sha256=sha,
                    size=item.size,
                )).scalar_one()
                results.append(Stored(row_id, False, message_id))
        if len(batch) > 1:
            log.debug("stored %d mails in one commit", len(batch))
        return results


# Built once (a statement built per call recomputes its cache key); the columns not given
# take their defaults (state "received", no attempts), as a new InboundMessage has.
_INSERT_INBOUND = insert(InboundMessage.__table__).returning(InboundMessage.__table__.c.id)

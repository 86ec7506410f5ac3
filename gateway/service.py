"""``gateway serve``: the SMTP door in this process, the work in a worker process.

The door only stores and answers; the worker processes what was stored, delivers the
outbox and closes solved tickets when they are due.  The IMAP pollers (one thread per
``[[mailboxes]]`` entry) run in the worker, so the door's event loop never waits on a
mail server; they process each mail right after storing it, under the same lock as the
worker's own loop, to move it to the processed or failed folder by its outcome.

The door and the worker share nothing but the database and the blob store, so either
can be killed at any moment: the door's 250
means the mail is on disk, and the worker picks up whatever is left on start.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from datetime import datetime

from gateway.actions import close_solved
from gateway.app import App, setup_logging
from gateway.config import Config
from gateway.ingest import imap
from gateway.ingest.smtp import Door, make_server_factory
from gateway.ingest.process import BATCH_MAILS
from gateway.ingest.spool import Spool
from gateway.outbound.outbox import deliver_pending

log = logging.getLogger("gateway.service")


def worker_main(config: Config, wake, stop, parent_pid: int, log_level: str = "INFO",
                slot: tuple[int, int] = (0, 1)) -> None:
    """Process stored mail and deliver the outbox until told to stop (or orphaned).

    Stored mail comes first: the outbox is delivered when no mail is waiting, or at the
    latest every DELIVER_EVERY seconds under a steady flow, so that confirmations are
    not held back.  The door answers senders from its journal (spool.py), so the worker
    need not stand aside for the door's commits: on SQLite these only wait for the lock.

    ``slot`` = (k, n): worker k of n takes the mails whose id is k modulo n, and helps
    with the others only when it has none of its own (a claim with SKIP LOCKED keeps two
    workers off the same mail, see Processor.process)."""
    setup_logging(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app = App(config)
    transport = app.transport()
    took = app.processor.warm_up()
    log.info("worker started (pid %s; ready in %.0f ms)", os.getpid(), took * 1000)
    # One mail is processed at a time in this process: a poller thread and this loop
    # must not both pick up the same stored mail.  The pollers live in worker 0 only.
    process_lock = threading.Lock()

    def process_one(inbound_id: int):
        with process_lock:
            return app.processor.process(inbound_id)

    def process_some(inbound_ids: list[int]) -> int:
        """Process a batch in one transaction (Processor.process_batch); how many were done."""
        with process_lock:
            return len(app.processor.process_batch(inbound_ids))

    poll_stop = threading.Event()
    pollers = []
    if slot[0] == 0:
        pollers = imap.start_pollers(imap.pollers_for(config, app.engine, app.blobs, process=process_one), poll_stop)
    try:
        _work(app, config, transport, wake, stop, parent_pid, process_some, slot)
    finally:
        poll_stop.set()
        for thread in pollers:
            thread.join(timeout=10)
    log.info("worker stopped")


def _work(app: App, config: Config, transport, wake, stop, parent_pid: int, process_some,
          slot: tuple[int, int]) -> None:
    next_close = 0.0
    last_delivery = last_mail = time.monotonic()
    # On SQLite one transaction for several mails saves a commit and a wait for the one
    # write lock each.  On PostgreSQL the workers run side by side, and a batch would hold
    # the row locks it takes (the number counter, above all) until its commit, making the
    # others wait: measured 62 vs 72 mails/s with two workers; one mail a transaction.
    batch = BATCH_MAILS if config.database_url.startswith("sqlite") else 1
    while not stop.is_set():
        if os.getppid() != parent_pid:  # the door died without telling us
            log.warning("parent process gone; worker stops")
            return
        wake.clear()
        busy = False
        quiet = True
        try:
            k, n = slot
            pending = app.processor.pending_ids(limit=50 * n)
            mine = [i for i in pending if i % n == k] or pending
            # Several mails a transaction (one commit), each under its own savepoint.
            while mine and not stop.is_set():
                done = process_some(mine[:batch])
                mine = mine[max(done, 1):]
            busy = bool(pending)
            now = time.monotonic()
            if pending:
                last_mail = now
            # Deliver once no mail has come for a moment: a gap of one batch is common
            # under load, and delivering then took the worker's time from the next mails
            # (~6 % of its samples, py-spy).  While mail keeps coming, every DELIVER_EVERY.
            quiet = not pending and now - last_mail >= DELIVER_WHEN_QUIET
            if k == 0 and (quiet or now - last_delivery >= DELIVER_EVERY):
                sent = deliver_pending(app.engine, config, transport, limit=20 if pending else 100)
                last_delivery = time.monotonic()
                busy = busy or bool(sent)
            if time.monotonic() >= next_close:
                close_due(app)
                next_close = time.monotonic() + config.lifecycle.close_interval
        except Exception:
            log.exception("worker loop failed; retrying")
            time.sleep(1)
        if not busy:
            # Not yet quiet: come back when it would be, to deliver (or sooner, for mail).
            wake.wait(timeout=DELIVER_WHEN_QUIET if slot[0] == 0 and not quiet else 1.0)


DELIVER_EVERY = 2.0  # seconds: the longest the outbox waits while stored mail keeps coming
DELIVER_WHEN_QUIET = 0.1  # seconds without stored mail before the outbox is delivered


def worker_count(config: Config) -> int:
    """One worker on SQLite: its transactions take the one write lock, so a second worker
    would only wait for it.  PostgreSQL locks rows: one worker per core, at most 4."""
    if config.database_url.startswith("sqlite"):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def close_due(app: App, now: datetime | None = None) -> list[str]:
    """Close Solved tickets older than close_after_days."""
    return close_solved(app, now=now)


async def _serve(app: App, accept_only: bool, log_level: str) -> None:
    config = app.config
    ctx = mp.get_context("spawn")
    wake, stop = ctx.Event(), ctx.Event()
    workers = []
    if not accept_only:
        n = worker_count(config)
        for k in range(n):
            worker = ctx.Process(target=worker_main, name=f"gateway-worker-{k}",
                                 args=(config, wake, stop, os.getpid(), log_level, (k, n)), daemon=False)
            worker.start()
            workers.append(worker)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    # Without a worker (accept only) the pollers store and move, and processing waits.
    poll_stop = threading.Event()
    pollers = imap.start_pollers(imap.pollers_for(config, app.engine, app.blobs), poll_stop) if accept_only else []
    server = door = None
    if config.smtp.enabled:
        # The journal answers senders without waiting for the database (spool.py); the
        # worker need not stand aside for the door's commits any more.
        spool = Spool(app.engine, app.blobs, journal_dir=config.data_dir / "spool",
                      on_recorded=lambda _stored: wake.set())
        if spool.recovered:
            log.info("recorded %d mails a previous run had answered but not recorded", spool.recovered)
        door = Door(config, app.engine, app.blobs, on_stored=lambda _stored: wake.set(), spool=spool)
        server = await loop.create_server(make_server_factory(config, door), config.smtp.host, config.smtp.port)
        port = server.sockets[0].getsockname()[1]
        log.info("listening for SMTP on %s:%s for %s", config.smtp.host, port, ", ".join(config.gateway.addresses))
    log.info("database %s; outbound transport %s", _safe_url(config.database_url), config.outbound.transport)
    try:
        await done.wait()
    finally:
        log.info("stopping")
        if server is not None:
            server.close()
            await server.wait_closed()
        if door is not None:  # let the last batch commit before the worker stops
            await loop.run_in_executor(None, door.spool.close)
        poll_stop.set()
        for thread in pollers:
            await loop.run_in_executor(None, thread.join, 10)
        stop.set()
        wake.set()
        for worker in workers:
            await loop.run_in_executor(None, worker.join, 30)
            if worker.is_alive():
                worker.terminate()
        log.info("stopped")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def serve(config: Config, accept_only: bool = False, log_level: str = "INFO") -> int:
    setup_logging(log_level)
    # aiosmtpd logs every command at INFO: ~10 lines a mail on the door's loop.  Our own
    # "received" line says what matters; its lines come back with --log-level DEBUG.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    app = App(config)
    app.engine  # create the database before the first connection
    asyncio.run(_serve(app, accept_only, log_level))
    return 0

"""``gateway serve``: the SMTP door in this process, the work in worker processes, the
outbox in a deliverer process.

The door only stores and answers (its journal makes the 250 wait for the disk, never for
the database: see gateway/ingest/spool.py); the workers process what was stored and close
solved tickets when they are due; the deliverer sends what the workers queued.  The IMAP
pollers (one thread per ``[[mailboxes]]`` entry) run in worker 0, so the door's event
loop never waits on a mail server; they process each mail right after storing it, under
the same lock as the worker's own loop, to move it to the processed or failed folder by
its outcome.

The processes share nothing but the database, the blob store and the journal, so any of
them can be killed at any moment: the door's 250 means the mail is on disk, a worker
picks up whatever is left on start, and the outbox keeps what was not sent.
"""

from __future__ import annotations

import asyncio
import gc
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


def worker_main(config: Config, wake, stop, parent_pid: int, deliver, log_level: str = "INFO",
                slot: tuple[int, int] = (0, 1)) -> None:
    """Process stored mail until told to stop (or orphaned); ``deliver`` wakes the
    deliverer process when confirmations were queued.  The door answers senders from its journal (spool.py), so the worker
    need not stand aside for the door's commits: on SQLite these only wait for the lock.

    ``slot`` = (k, n): worker k of n takes the mails whose id is k modulo n, and helps
    with the others only when it has none of its own (a claim with SKIP LOCKED keeps two
    workers off the same mail, see Processor.process)."""
    setup_logging(log_level)
    _name_process(f"gw-worker-{slot[0]}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app = App(config)
    _lower_priority(config)
    took = app.processor.warm_up()
    _settle_gc()
    log.info("worker started (pid %s; ready in %.0f ms)", os.getpid(), took * 1000)
    # One mail is processed at a time in this process: a poller thread and this loop
    # must not both pick up the same stored mail.  The pollers live in worker 0 only.
    process_lock = threading.Lock()

    def process_one(inbound_id: int):
        with process_lock:
            return app.processor.process(inbound_id)

    def process_some(inbound_ids: list[int], known: dict[int, tuple[str, int]] | None = None) -> int:
        """Process a batch in one transaction (Processor.process_batch); how many were done."""
        with process_lock:
            return len(app.processor.process_batch(inbound_ids, known=known))

    poll_stop = threading.Event()
    pollers = []
    if slot[0] == 0:
        pollers = imap.start_pollers(imap.pollers_for(config, app.engine, app.blobs, process=process_one,
                                                      too_large_notice=app.processor.notify_too_large), poll_stop)
    try:
        _work(app, config, wake, stop, parent_pid, process_some, slot, deliver)
    finally:
        poll_stop.set()
        for thread in pollers:
            thread.join(timeout=10)
    log.info("worker stopped")


def _work(app: App, config: Config, wake, stop, parent_pid: int, process_some,
          slot: tuple[int, int], deliver) -> None:
    next_close = 0.0
    # One transaction for several mails saves a commit each (and on SQLite a wait for
    # the one write lock).  On PostgreSQL the workers run side by side: their batches
    # take ticket numbers from sequences, which hold no lock until the commit (a
    # counter row did, and made the other worker wait for the whole batch: 62 against
    # 72 mails/s), and run without a savepoint a mail (Processor.process_batch).
    batch = BATCH_MAILS
    while not stop.is_set():
        if os.getppid() != parent_pid:  # the door died without telling us
            log.warning("parent process gone; worker stops")
            return
        wake.clear()
        busy = False
        try:
            k, n = slot
            pending = app.processor.pending(limit=50 * n)
            known = {i: (sha, size) for i, sha, size in pending}
            mine = [i for i in known if i % n == k] or list(known)
            # Several mails a transaction (one commit): Processor.process_batch.
            while mine and not stop.is_set():
                done = process_some(mine[:batch], known)
                mine = mine[max(done, 1):]
                deliver.set()  # their confirmations are in the outbox
            busy = bool(pending)
            if time.monotonic() >= next_close:
                close_due(app)
                next_close = time.monotonic() + config.lifecycle.close_interval
        except Exception:
            log.exception("worker loop failed; retrying")
            time.sleep(1)
        if not busy:
            wake.wait(timeout=1.0)


def deliverer_main(config: Config, deliver, stop, parent_pid: int, log_level: str = "INFO") -> None:
    """Deliver the outbox until told to stop (or orphaned): woken by the workers when they
    queue confirmations, and every DELIVER_EVERY seconds for the retries that fall due;
    while stored mail waits to be processed, at most every DELIVER_EVERY seconds.

    Its own process: delivering took ~11 % of the worker's time (py-spy, small set), time
    every later mail waited for; a relay that is slow to answer now holds back nothing
    but other deliveries."""
    setup_logging(log_level)
    _name_process("gw-deliverer")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app = App(config)
    transport = app.transport()
    _lower_priority(config)
    _settle_gc()
    log.info("deliverer started (pid %s)", os.getpid())
    last = time.monotonic()
    while not stop.is_set():
        if os.getppid() != parent_pid:
            log.warning("parent process gone; deliverer stops")
            return
        deliver.clear()
        try:
            # Stored mail comes first: while some waits, the outbox waits too (at most
            # DELIVER_EVERY): on two cores, delivering during a burst took the workers'
            # CPU (6.6 ms a mail on PostgreSQL, its reads and records a transaction each)
            # and halved the small set's rate there.
            # It looks again after DELIVER_WHEN_QUIET, not at each wake-up: the workers
            # wake it after every transaction, and a look per mail cost ~1 ms of CPU a
            # mail on PostgreSQL.
            if time.monotonic() - last < DELIVER_EVERY and app.processor.pending_ids(limit=1):
                stop.wait(timeout=DELIVER_WHEN_QUIET)
                continue
            sent = deliver_pending(app.engine, app.config, transport, limit=100)
            last = time.monotonic()
        except Exception:
            log.exception("delivery failed; retrying")
            time.sleep(1)
            continue
        if not sent:
            deliver.wait(timeout=DELIVER_EVERY)
    # What the workers queued before they stopped goes out now, not at the next start.
    try:
        deliver_pending(app.engine, app.config, transport, limit=100)
    except Exception:
        log.exception("last delivery failed; the outbox keeps it for the next start")
    log.info("deliverer stopped")


DELIVER_EVERY = 2.0  # seconds: the longest the outbox waits (for stored mail, or a retry to fall due)
DELIVER_WHEN_QUIET = 0.1  # seconds between two looks for "no stored mail waiting" during a burst


def _lower_priority(config: Config) -> None:
    """Run this process ``[service] worker_nice`` steps below the listener's priority.

    The listener's event loop answers every sender; on two cores it shared the CPU with
    two PostgreSQL workers parsing 5 MB mails, and its accept p99 for small mails on the
    mixed set was 107 ms against 77 with the workers at nice 5 (5 alternating runs each,
    the same rate of processing: 87.5 and 88.6 mails/s); on SQLite the small set went
    204-271 -> 216-298 mails/s and the mixed set was unchanged."""
    if config.service.worker_nice:
        try:
            os.nice(config.service.worker_nice)
        except OSError as exc:  # not allowed here: run at the same priority
            log.warning("could not lower the priority by %s: %s", config.service.worker_nice, exc)


def _settle_gc() -> None:
    """After start-up: what the process loaded (modules, compiled statements and templates,
    locale data) is moved out of the garbage collector's reach, so its full collections
    no longer walk it again and again (they took ~4-6 % of the door's CPU, perf, small set)."""
    gc.collect()
    gc.freeze()


def _name_process(name: str) -> None:
    """The process's name as ``top``/``ps -o comm`` show it (Linux; 15 characters): an
    operator (and the benchmark) can tell the worker from the deliverer."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except Exception:  # noqa: BLE001 - only a name
        pass


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
    deliverer = None
    if not accept_only:
        deliver, deliver_stop = ctx.Event(), ctx.Event()
        n = worker_count(config)
        for k in range(n):
            worker = ctx.Process(target=worker_main, name=f"gateway-worker-{k}",
                                 args=(config, wake, stop, os.getpid(), deliver, log_level, (k, n)), daemon=False)
            worker.start()
            workers.append(worker)
        deliverer = ctx.Process(target=deliverer_main, name="gateway-deliverer",
                                args=(config, deliver, deliver_stop, os.getpid(), log_level), daemon=False)
        deliverer.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    # Without a worker (accept only) the pollers store and move, and processing waits.
    poll_stop = threading.Event()
    pollers = imap.start_pollers(imap.pollers_for(config, app.engine, app.blobs,
                                                  too_large_notice=app.processor.notify_too_large),
                                 poll_stop) if accept_only else []
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
        _settle_gc()
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
        if deliverer is not None:  # after the workers: it sends what they queued last
            deliver_stop.set()
            deliver.set()
            await loop.run_in_executor(None, deliverer.join, 60)
            if deliverer.is_alive():
                deliverer.terminate()
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
    # The signing secret, once, here: the workers and the deliverer get this config
    # (_serve), so every process signs and verifies with the same one.
    app.config
    asyncio.run(_serve(app, accept_only, log_level))
    return 0

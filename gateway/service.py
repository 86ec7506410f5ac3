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
picks up whatever is left on start, and the outbox keeps what was not sent.  The door
starts again a child that died (``_supervise``), and each process beats a heartbeat in
the database (gateway.heartbeat) for ``gateway status`` and /readyz.  The HTTP server
(gateway.http: /healthz, /readyz, /metrics) is a process of its own too, so a scrape
never takes the door's event loop.
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

from dataclasses import dataclass, field
from typing import Any, Callable

from gateway import logs, metrics
from gateway.actions import close_solved
from gateway.app import App
from gateway.config import Config, ConfigError
from gateway.heartbeat import HOST, Heartbeat, forget_old, instance_of, mark_stopped
from gateway.errors import CommandError
from gateway.ingest import faults, imap, lmtp
from gateway.ingest.lmtp import LmtpDoor
from gateway.lease import Lease, holder_name
from gateway.ingest.smtp import Door, make_server_factory
from gateway.ingest.process import BATCH_MAILS
from gateway.ingest.spool import Spool
from gateway.outbound.notify import warm_up as warm_up_templates
from gateway.outbound.outbox import deliver_pending
from gateway.outbound.render import missing_shipped
from gateway.outbound import webhooks as outbound_webhooks

log = logging.getLogger("gateway.service")


def worker_main(config: Config, wake, stop, parent_pid: int, deliver, log_level: str = "INFO",
                slot: tuple[int, int] = (0, 1), instance: str | None = None) -> None:
    """Process stored mail until told to stop (or orphaned); ``deliver`` wakes the
    deliverer process when confirmations were queued.  The door answers senders from its journal (spool.py), so the worker
    need not stand aside for the door's commits: on SQLite these only wait for the lock.

    ``slot`` = (k, n): worker k of n takes the mails whose id is k modulo n, and helps
    with the others only when it has none of its own (a claim with SKIP LOCKED keeps two
    workers off the same mail, see Processor.process)."""
    role = f"worker-{slot[0]}"
    _child_setup(config, log_level, role)
    _name_process(f"gw-worker-{slot[0]}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app = App(config)
    _lower_priority(config)
    took = app.processor.warm_up()
    _settle_gc()
    # Alive from here on, for gateway status and /readyz (gateway.heartbeat).
    heartbeat = Heartbeat(app.engine, role, instance or instance_of(parent_pid),
                          config.monitoring.heartbeat_interval).start()
    log.info("worker started (pid %s; ready in %.0f ms)", os.getpid(), took * 1000)
    # The mails this worker holds, on disk, so that a death while holding one is counted
    # against it (gateway.ingest.faults): what the last worker of this slot left first.
    holding = faults.Holding(config.data_dir / "holding", f"{HOST}-{role}")
    try:
        faults.after_death(app.engine, holding, config.limits, faults.short_of_space(config))
    except Exception:  # noqa: BLE001 - the database away: the mails are taken as usual
        log.exception("could not count what the last worker held when it died")
    if os.environ.get(faults.KILL_HOOK):
        log.error("TEST HOOK ENABLED: a mail whose Message-ID is $%s kills this worker", faults.KILL_HOOK)
    # One mail is processed at a time in this process: a poller thread and this loop
    # must not both pick up the same stored mail.  The pollers live in worker 0 only.
    process_lock = threading.Lock()

    def process_one(inbound_id: int):
        with process_lock:
            holding.hold([inbound_id])
            try:
                return app.processor.process(inbound_id)
            finally:
                holding.release()

    def process_some(inbound_ids: list[int], known: dict[int, tuple[str, int]] | None = None) -> int:
        """Process a batch in one transaction (Processor.process_batch); how many were done.
        Raises faults.Unavailable when a mail waits for its surroundings and even that
        could not be written: the worker then waits as a whole."""
        with process_lock:
            holding.hold(inbound_ids)
            try:
                outcomes = app.processor.process_batch(inbound_ids, known=known)
            finally:
                holding.release()
        if (stuck := faults.unrecorded(o.detail for o in outcomes)) is not None:
            raise faults.Unavailable(stuck)
        return len(outcomes)

    poll_stop = threading.Event()
    pollers = []
    if slot[0] == 0:
        pollers = imap.start_pollers(imap.pollers_for(config, app.engine, app.blobs, process=process_one,
                                                      too_large_notice=app.processor.notify_too_large), poll_stop)
    try:
        # A batch the last worker died in: each of its mails alone first.
        try:
            while holding.suspects and not stop.is_set():
                process_some(holding.suspects[:1])
                holding.suspects.pop(0)
        except Exception:  # noqa: BLE001 - they are waiting mails still, taken as usual
            log.exception("processing the suspects of a worker's death failed")
        _work(app, config, wake, stop, parent_pid, process_some, slot, deliver)
    finally:
        poll_stop.set()
        for thread in pollers:
            thread.join(timeout=10)
        heartbeat.stop()
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
    backoff = faults.Backoff(config.limits)
    first_seen: dict[int, float] = {}  # another worker's waiting mails: when this one first saw them
    while not stop.is_set():
        if os.getppid() != parent_pid:  # the door died without telling us
            log.warning("parent process gone; worker stops")
            return
        wake.clear()
        busy = False
        try:
            # Below the reserve of free space nothing is written; the mails wait.
            if (short := faults.short_of_space(config)) is not None:
                raise faults.Unavailable(short)
            pending = app.processor.pending(limit=50 * slot[1])
            known = {i: (sha, size) for i, sha, size in pending}
            mine = takes(list(known), slot, first_seen, time.monotonic())
            busy = bool(mine)
            # Several mails a transaction (one commit): Processor.process_batch.
            while mine and not stop.is_set():
                done = process_some(mine[:batch], known)
                mine = mine[max(done, 1):]
                deliver.set()  # their confirmations are in the outbox
            if time.monotonic() >= next_close:
                close_due(app)
                next_close = time.monotonic() + config.lifecycle.close_interval
            backoff.ok()
        except Exception as exc:
            if (why := faults.surroundings(exc)) is None:
                log.exception("worker loop failed; retrying")
                time.sleep(1)
                continue
            # Not the mails' fault: they wait, uncounted, and so does the worker.
            wait = backoff.failed()
            log.warning("worker waits %.0f s: %s", wait, why)
            _nap(stop, wait)
            continue
        if not busy:
            wake.wait(timeout=1.0)


# Another worker's mail is helped with only once it has waited this long (seconds) since
# this worker first saw it waiting.  Helped with at once, an idle worker parsed and checked
# the same mail as its owner (the sender checks' DNS questions asked twice, a 25 MB mail
# read twice) and the claim then let one of the two go: every mail of a quiet desk.
HELP_AFTER = 2.0


def takes(pending: list[int], slot: tuple[int, int], first_seen: dict[int, float], now: float,
          batch: int = BATCH_MAILS) -> list[int]:
    """The waiting mails worker ``slot`` = (k, n) takes now (``pending`` oldest first):
    its own (id k modulo n); with none, another worker's that have waited HELP_AFTER
    seconds since it first saw them (that worker is busy, stuck or gone), then those
    past the batch their owner is on, newest first (a backlog: the two work towards each
    other from its two ends).  ``first_seen`` is the worker's memory of the others'
    mails, kept from call to call."""
    k, n = slot
    own = [i for i in pending if i % n == k]
    waiting = set(pending)
    for seen in [i for i in first_seen if i not in waiting]:
        del first_seen[seen]
    if own:
        return own
    for i in pending:
        first_seen.setdefault(i, now)
    waited = [i for i in pending if now - first_seen[i] >= HELP_AFTER]
    by_owner: dict[int, list[int]] = {}
    for i in pending:
        by_owner.setdefault(i % n, []).append(i)
    beyond = sorted((i for theirs in by_owner.values() for i in theirs[batch:]), reverse=True)
    return list(dict.fromkeys([*waited, *beyond]))


def deliverer_main(config: Config, deliver, stop, parent_pid: int, log_level: str = "INFO",
                   instance: str | None = None) -> None:
    """Deliver the outbox until told to stop (or orphaned): woken by the workers when they
    queue confirmations, and every DELIVER_EVERY seconds for the retries that fall due;
    while stored mail waits to be processed, at most every DELIVER_EVERY seconds.

    Its own process: delivering took ~11 % of the worker's time (py-spy, small set), time
    every later mail waited for; a relay that is slow to answer now holds back nothing
    but other deliveries."""
    _child_setup(config, log_level, "deliverer")
    _name_process("gw-deliverer")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app = App(config)
    transport = app.transport()
    _lower_priority(config)
    took = warm_up_templates(app.notifier)
    _settle_gc()
    heartbeat = Heartbeat(app.engine, "deliverer", instance or instance_of(parent_pid),
                          config.monitoring.heartbeat_interval).start()
    if config.webhooks:
        outbound_webhooks.release_dead_claims(app.engine)  # a killed deliverer's events go now, with their ids
    log.info("deliverer started (pid %s; ready in %.0f ms)", os.getpid(), took * 1000)
    last = time.monotonic()
    backoff = faults.Backoff(config.limits)
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
                time.sleep(DELIVER_WHEN_QUIET)
                continue
            # Below the reserve of free space nothing is written (the file outbox, the
            # attempts): the notifications wait.
            if (short := faults.short_of_space(config)) is not None:
                raise faults.Unavailable(short)
            sent = deliver_pending(app.engine, app.config, transport, limit=100, notifier=app.notifier)
            if config.webhooks:  # the webhook events queued with the changes (store.webhooks)
                sent = outbound_webhooks.deliver_due(app.engine, config.webhooks) or sent
            last = time.monotonic()
            backoff.ok()
        except Exception as exc:
            if (why := faults.surroundings(exc)) is None:
                log.exception("delivery failed; retrying")
                time.sleep(1)
                continue
            wait = backoff.failed()
            log.warning("deliverer waits %.0f s: %s", wait, why)
            _nap(stop, wait)
            continue
        if not sent:
            deliver.wait(timeout=DELIVER_EVERY)
    # What the workers queued before they stopped goes out now, not at the next start.
    try:
        deliver_pending(app.engine, app.config, transport, limit=100, notifier=app.notifier)
    except Exception:
        log.exception("last delivery failed; the outbox keeps it for the next start")
    heartbeat.stop()
    log.info("deliverer stopped")


def _nap(stop, seconds: float) -> None:
    """Sleep ``seconds``, or less when told to stop."""
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        time.sleep(min(0.25, end - time.monotonic()))


# Connections the kernel queues for the door before it accepts them: a burst of a
# thousand at once is accepted and answered (220, or 421 past the caps) at once, not
# left to the clients' SYN retries a second or more later (asyncio's default: 100).
BACKLOG = 1024
DELIVER_EVERY = 2.0  # seconds: the longest the outbox waits (for stored mail, or a retry to fall due)
DELIVER_WHEN_QUIET = 0.1  # seconds between two looks for "no stored mail waiting" during a burst


def _child_setup(config: Config, log_level: str, role: str) -> None:
    """What every process of gateway serve does first: its logging, its metrics file."""
    logs.setup(log_level, config.logging, role=role, base_dir=config.base_dir)
    metrics.enable(metrics.folder(config.data_dir), role)


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
    """Close Solved tickets older than close_after_days: by one closer at a time, of
    all the workers of all the instances (the ``closer`` lease, gateway.lease); the
    others skip their pass while one runs."""
    with Lease(app.engine, "closer", holder_name("closer")).held() as mine:
        return close_solved(app, now=now) if mine else []


class Wake:
    """A wake-up from one process to another that a killed process cannot jam: a counting
    semaphore (``set`` never blocks; a process killed while waiting holds nothing).
    multiprocessing.Event could not be used: its ``set`` waits until every process
    sleeping in ``wait`` has woken, so a worker killed in its wait (SIGKILL, the OOM
    killer) made the door's next ``set`` (its journal's recorder thread) wait forever,
    and every process after it."""

    def __init__(self, ctx):
        self._sem = ctx.Semaphore(0)

    def set(self) -> None:
        self._sem.release()

    def clear(self) -> None:
        while self._sem.acquire(False):
            pass

    def wait(self, timeout: float) -> bool:
        """Until set (or ``timeout``); several wake-ups meanwhile count as one."""
        woken = self._sem.acquire(timeout=timeout)
        self.clear()
        return woken


class Flag:
    """A flag set once (stop), read without a lock: shared memory, one byte."""

    def __init__(self, ctx):
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)


# A child that dies is started again after this many seconds, doubled (up to
# RESTART_MAX) while it keeps dying within RESTART_STABLE seconds of its start: a worker
# that fails at once (its database gone) does not spin the CPU.
RESTART_FIRST = 1.0
RESTART_MAX = 60.0
RESTART_STABLE = 60.0
# How often the door's loop looks whether a child died (a waitpid each: nothing).
SUPERVISE_EVERY = 0.5


@dataclass
class Child:
    """A process of gateway serve started by the door, and started again when it dies."""

    role: str
    target: Callable[..., None]
    args: tuple[Any, ...]
    process: Any = None
    started: float = 0.0
    delay: float = RESTART_FIRST
    restart_at: float | None = None
    restarts: int = field(default=0)

    def start(self, ctx) -> None:
        self.process = ctx.Process(target=self.target, name=f"gateway-{self.role}", args=self.args, daemon=False)
        self.process.start()
        self.started = time.monotonic()
        self.restart_at = None


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (signal {-code})"
    return f"exited with status {code}"


async def _supervise(children: list[Child], ctx, engine, stopping: asyncio.Event) -> None:
    """Start again a child that died (a worker killed by the OOM killer, a crash): the
    service does not go on without its workers, silently.  Its heartbeat row says at
    once that it died and how, so /readyz and gateway status tell, until the new one
    beats."""
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        now = time.monotonic()
        for child in children:
            process = child.process
            if child.restart_at is None and process is not None and not process.is_alive():
                reason = _exit_reason(process.exitcode)
                lived = now - child.started
                child.delay = (min(child.delay * 2, RESTART_MAX) if lived < RESTART_STABLE and child.restarts
                               else RESTART_FIRST)
                child.restart_at = now + child.delay
                log.error("%s (pid %s) %s after %.0f s; starting it again in %.0f s", child.role, process.pid,
                          reason, lived, child.delay)
                await loop.run_in_executor(None, mark_stopped, engine, HOST, process.pid, reason)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                child.start(ctx)
                log.info("%s started again (pid %s)", child.role, child.process.pid)
        try:
            await asyncio.wait_for(stopping.wait(), timeout=SUPERVISE_EVERY)
        except asyncio.TimeoutError:
            pass


def listen_error(key: str, host: str, port: int, exc: OSError) -> ConfigError:
    """A listener that cannot be opened, as the operator can act on it (one line, the key)."""
    import errno

    if exc.errno == errno.EADDRINUSE:
        why = "is already in use (another gateway serve, or another program, listens there)"
    elif exc.errno == errno.EACCES:
        why = "is not allowed to this user (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"{key.rsplit('.', 1)[0]}.host: {host} is not an address of this machine")
    else:
        why = f"cannot be opened: {exc.strerror or exc}"
    return ConfigError(f"{key}: {host}:{port} {why}")


def _bind_http(config: Config):
    import socket

    family = socket.AF_INET6 if ":" in config.http.host else socket.AF_INET
    try:
        sock = socket.create_server((config.http.host, config.http.port), family=family, reuse_port=False)
    except OSError as exc:
        raise listen_error("http.port", config.http.host, config.http.port, exc) from None
    return sock


# long, complex: start-up in order (door, workers, deliverer, closer, pollers, HTTP) and the stop in reverse, in one frame; other issues hook into it (faults, instances)
async def _serve(app: App, accept_only: bool, log_level: str, lmtp_socket=None) -> None:
    config = app.config
    ctx = mp.get_context("spawn")
    instance = instance_of()
    interval = config.monitoring.heartbeat_interval
    stop = Flag(ctx)
    # One wake-up a worker: the door wakes each when a mail is recorded.
    wakes = [Wake(ctx) for _ in range(0 if accept_only else worker_count(config))]

    def wake_all(_stored) -> None:
        for wake in wakes:
            wake.set()

    loop = asyncio.get_running_loop()
    # From the start: a SIGTERM while starting (the port is open already) stops cleanly
    # once started.
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    # Both listeners are opened before any process starts: a port in use stops the start
    # with one line naming the key (and nothing to clean up).
    server = door = spool = None
    ports: dict[str, int] = {}
    if config.smtp.enabled or lmtp_socket is not None:
        # The journal answers senders without waiting for the database (spool.py); the
        # worker need not stand aside for the door's commits any more.  One journal for
        # both doors.
        spool = Spool(app.engine, app.blobs, journal_dir=config.data_dir / "spool",
                      on_recorded=wake_all)
        if spool.recovered:
            log.info("recorded %d mails a previous run had answered but not recorded", spool.recovered)
    if config.smtp.enabled:
        door = Door(config, app.engine, app.blobs, on_stored=wake_all, spool=spool)
        try:
            server = await loop.create_server(make_server_factory(config, door), config.smtp.host, config.smtp.port,
                                              backlog=BACKLOG)
        except OSError as exc:
            spool.close()
            raise listen_error("smtp.port", config.smtp.host, config.smtp.port, exc) from None
        ports["smtp"] = server.sockets[0].getsockname()[1]
    if lmtp_socket is not None and not config.lmtp.socket:
        ports["lmtp"] = lmtp_socket.getsockname()[1]
    http_socket = None
    if config.http.enabled:
        try:
            http_socket = _bind_http(config)
        except ConfigError:
            if server is not None:
                server.close()
            if spool is not None:
                spool.close()
            raise
    await loop.run_in_executor(None, forget_old, app.engine, instance, interval)
    heartbeat = Heartbeat(app.engine, "door", instance, interval).start()
    children: list[Child] = []
    deliver = deliver_stop = None
    if not accept_only:
        deliver, deliver_stop = Wake(ctx), Flag(ctx)
        n = worker_count(config)
        for k in range(n):
            children.append(Child(f"worker-{k}", worker_main,
                                  (config, wakes[k], stop, os.getpid(), deliver, log_level, (k, n), instance)))
        children.append(Child("deliverer", deliverer_main,
                              (config, deliver, deliver_stop, os.getpid(), log_level, instance)))
    if http_socket is not None:
        from gateway.http.server import http_main

        roles = ("door", *(c.role for c in children), "http")
        children.append(Child("http", http_main, (config, http_socket, instance, roles, ports, os.getpid(),
                                                  log_level)))
    for child in children:
        child.start(ctx)
    supervisor = asyncio.create_task(_supervise(children, ctx, app.engine, done))
    # Without a worker (accept only) the pollers store and move, and processing waits.
    poll_stop = threading.Event()
    pollers = imap.start_pollers(imap.pollers_for(config, app.engine, app.blobs,
                                                  too_large_notice=app.processor.notify_too_large),
                                 poll_stop) if accept_only else []
    if server is not None:
        _settle_gc()
        log.info("listening for SMTP on %s:%s for %s", config.smtp.host, ports["smtp"],
                 ", ".join(config.gateway.addresses))
    if http_socket is not None:
        host, port = http_socket.getsockname()[:2]
        log.info("operations over HTTP on http://%s:%s/ (healthz, readyz, metrics)", host, port)
    log.info("database %s; outbound transport %s", _safe_url(config.database_url), config.outbound.transport)
    lmtp_server = None
    try:
        if lmtp_socket is not None:  # bound before anything started (serve, _bind_lmtp)
            lmtp_server = await lmtp.listen(config, LmtpDoor(config, app.engine, app.blobs, spool=spool,
                                                             on_stored=wake_all), lmtp_socket)
        await done.wait()
    finally:
        log.info("stopping")
        await supervisor
        if server is not None:
            server.close()
            await server.wait_closed()
        if lmtp_server is not None:
            await lmtp.close(lmtp_server, config)
        if spool is not None:  # let the last batch commit before the worker stops
            await loop.run_in_executor(None, spool.close)
        poll_stop.set()
        for thread in pollers:
            await loop.run_in_executor(None, thread.join, 10)
        stop.set()
        wake_all(None)
        workers = [c.process for c in children if c.role.startswith("worker-")]
        for worker in workers:
            await loop.run_in_executor(None, worker.join, 30)
            if worker.is_alive():
                worker.terminate()
        deliverer = next((c.process for c in children if c.role == "deliverer"), None)
        if deliverer is not None:  # after the workers: it sends what they queued last
            deliver_stop.set()
            deliver.set()
            await loop.run_in_executor(None, deliverer.join, 60)
            if deliverer.is_alive():
                deliverer.terminate()
        http = next((c.process for c in children if c.role == "http"), None)
        if http is not None:  # last: /healthz answers while the others finish
            if http.is_alive():
                http.terminate()
            await loop.run_in_executor(None, http.join, 15)
            if http.is_alive():
                http.kill()
            http_socket.close()
        await loop.run_in_executor(None, heartbeat.stop)
        log.info("stopped")


def _bind_lmtp(config: Config):
    """The LMTP door's socket, bound before anything starts; one that cannot be had is
    one line naming it (exit status 2)."""
    try:
        return lmtp.bind(config)
    except OSError as exc:
        where = config.path(config.lmtp.socket) if config.lmtp.socket else f"{config.lmtp.host}:{config.lmtp.port}"
        raise CommandError(f"[lmtp] cannot listen on {where}: {exc.strerror or exc}", status=2) from None


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def serve(config: Config, accept_only: bool = False, log_level: str = "INFO") -> int:
    from gateway.config import check_secrets
    from gateway.outbound.notify import renderer_for

    # A package built without its data (a wheel missing templates/mail) would fail every
    # notification while the service looked healthy: refuse to start instead, naming
    # what is missing (exit status 2, as a configuration error).
    shipped = renderer_for(config).shipped_dir
    missing = missing_shipped(shipped)
    if missing:
        raise CommandError(f"cannot start: the shipped mail templates in {shipped} lack {', '.join(missing)} "
                           f"(an installation without its data files? reinstall the gateway)", status=2)
    # A mailbox or relay password that cannot be read stops the start (exit 2), not the
    # first login an hour later.
    check_secrets(config)
    logs.setup(log_level, config.logging, role="door", base_dir=config.base_dir)
    metrics.enable(metrics.folder(config.data_dir), "door")
    # aiosmtpd logs every command at INFO: ~10 lines a mail on the door's loop.  Our own
    # "received" line says what matters; its lines come back with --log-level DEBUG.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    lmtp_socket = _bind_lmtp(config) if config.lmtp.enabled else None
    app = App(config)
    app.engine  # create the database before the first connection
    # The signing secret, once, here: the workers and the deliverer get this config
    # (_serve), so every process signs and verifies with the same one.
    app.config
    asyncio.run(_serve(app, accept_only, log_level, lmtp_socket))
    return 0

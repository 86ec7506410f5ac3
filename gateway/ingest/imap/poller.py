"""A mailbox's poller: one thread a mailbox, draining it through the importer.

IDLE where the server offers it (re-issued well within RFC 2177's 29 minutes), polling
every ``poll_interval`` seconds otherwise.  A dropped connection or a restarted server is
retried with exponential backoff; an outage is logged once when it starts and once when
it ends, not at every retry."""

from __future__ import annotations

import imaplib
import logging
import threading
import time
from collections.abc import Mapping

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from sqlalchemy.engine import Engine

from gateway.heartbeat import record_poll
from gateway.ingest.imap.client import ImapConfigError, _drop, close_quietly, open_mailbox
from gateway.ingest.imap.importer import Importer, NoticeFn, ProcessFn
from gateway.lease import RETRY_EVERY, Lease, holder_name
from store.blobs import BlobStore


log = logging.getLogger("gateway.imap")


# RFC 2177: a client should re-issue IDLE at least every 29 minutes; some providers
# drop an idle connection sooner (about 23 minutes seen), so renew well before that.
IDLE_RENEW_SECONDS = 20 * 60


# A poller records a pass that worked at most this often (seconds); a failure at once.
RECORD_SUCCESS_EVERY = 60.0


# How often a waiting poller looks at its stop flag.
STOP_CHECK_SECONDS = 1.0


class Poller:
    """Keeps one mailbox empty: drain, wait (IDLE or poll), drain again; reconnect on loss."""

    def __init__(self, importer: Importer, *, env: Mapping[str, str] | None = None,
                 backoff_start: float = 1.0, backoff_max: float = 60.0):
        self.importer = importer
        self.box = importer.box
        self.env = env
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.uidvalidity: int | None = None
        self.outage_since: float | None = None
        self.connected = threading.Event()  # set while a session is up (for tests and status)
        # When a pass that worked was last recorded (gateway.heartbeat.record_poll), and
        # whether the last one recorded failed: a pass that works is written at most
        # every RECORD_SUCCESS_EVERY seconds, a change at once.
        self._recorded_ok_at: float | None = None
        self._recorded_failure = False
        # One poller at a time on a mailbox, whatever the number of instances (gateway.lease).
        self.lease = Lease(importer.engine, f"imap:{self.box.name}", holder_name(f"imap:{self.box.name}"))

    def run(self, stop: threading.Event) -> None:
        delay = self.backoff_start
        log.info("mailbox %s: reading %s@%s:%s/%s", self.box.name, self.box.user, self.box.host, self.box.port,
                 self.box.folder)
        waiting = False
        while not stop.is_set():
            if not self.lease.acquire():
                if not waiting:
                    log.info("mailbox %s: another instance reads it; taking over if it stops", self.box.name)
                waiting = True
                stop.wait(RETRY_EVERY)
                continue
            if waiting:
                log.info("mailbox %s: taken over (its lease was free)", self.box.name)
            waiting = False
            # The session ends when the lease is lost as when the service stops.
            keeper = self.lease.keep(stop)
            client = None
            try:
                client = open_mailbox(self.box, self.env)
                if self.outage_since is not None:
                    log.warning("mailbox %s: connected again after %.0f s", self.box.name,
                                time.monotonic() - self.outage_since)
                    self.outage_since = None
                delay = self.backoff_start
                self.session(client, keeper.lost)
            except Exception as exc:  # noqa: BLE001 - every failure means: reconnect later
                self.connected.clear()
                self._outage(exc)
                if client is not None:
                    # No LOGOUT on a broken connection: it could wait for the read timeout.
                    _drop(client)
                    client = None
            finally:
                self.connected.clear()
                if client is not None:
                    close_quietly(client)
                keeper.end()
            if not stop.is_set() and not keeper.lost.is_set():
                stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
        self.lease.release()
        log.info("mailbox %s: poller stopped", self.box.name)

    def _record(self, error: str | None) -> None:
        """Keep the pass's result in the database (mailboxpoll), for gateway status: a
        mailbox failing at every pass must not look like a quiet one."""
        if error is None and not self._recorded_failure and self._recorded_ok_at is not None \
                and time.monotonic() - self._recorded_ok_at < RECORD_SUCCESS_EVERY:
            return
        try:
            record_poll(self.importer.engine, self.box.name, error)
        except Exception as exc:  # noqa: BLE001 - the database is down: the store fails too, and says so
            log.debug("mailbox %s: could not record the poll: %s", self.box.name, exc)
            return
        self._recorded_failure = error is not None
        self._recorded_ok_at = time.monotonic() if error is None else None

    def _outage(self, exc: Exception) -> None:
        self._record(f"{type(exc).__name__}: {exc}")
        if self.outage_since is not None:
            log.debug("mailbox %s: still unreachable: %s", self.box.name, exc)
            return
        self.outage_since = time.monotonic()
        network = isinstance(exc, (OSError, imaplib.IMAP4.abort, IMAPClientError, LoginError, ImapConfigError))
        log.warning("mailbox %s: %s: %s; retrying with backoff (logged again when it works)",
                    self.box.name, "connection failed or lost" if network else "unexpected error",
                    f"{type(exc).__name__}: {exc}", exc_info=not network)

    def session(self, client: IMAPClient, stop: threading.Event) -> None:
        uidvalidity = self.importer.prepare(client)
        if self.uidvalidity is not None and uidvalidity != self.uidvalidity:
            # Every UID we knew is meaningless now; we keep none, so just say so.
            log.warning("mailbox %s: UIDVALIDITY of %r changed from %s to %s; the folder is read again, "
                        "messages already stored are recognised and not taken twice",
                        self.box.name, self.box.folder, self.uidvalidity, uidvalidity)
        self.uidvalidity = uidvalidity
        use_idle = self.box.idle and client.has_capability("IDLE")
        self.connected.set()
        while not stop.is_set():
            self.importer.drain(client, stop=stop)
            self._record(None)
            if stop.is_set():
                return
            if use_idle:
                self.wait_idle(client, stop)
            else:
                stop.wait(self.box.poll_interval)

    def wait_idle(self, client: IMAPClient, stop: threading.Event) -> None:
        """Wait in IDLE until the server reports something, stop is asked, or it is time
        to renew; then leave IDLE (which raises if the connection died meanwhile)."""
        client.idle()
        started = time.monotonic()
        try:
            while not stop.is_set():
                if time.monotonic() - started >= IDLE_RENEW_SECONDS:
                    log.debug("mailbox %s: renewing IDLE", self.box.name)
                    return
                t0 = time.monotonic()
                responses = client.idle_check(timeout=STOP_CHECK_SECONDS)
                if responses:
                    return
                if time.monotonic() - t0 < STOP_CHECK_SECONDS / 2:
                    # idle_check returns at once with nothing when the peer closed the
                    # socket (it swallows the EOF); idle_done below raises on it.
                    return
        finally:
            client.idle_done()


def pollers_for(config, engine: Engine, blobs: BlobStore, process: ProcessFn | None = None,
                env: Mapping[str, str] | None = None, too_large_notice: NoticeFn | None = None) -> list[Poller]:
    return [Poller(Importer(box, engine, blobs, process=process, max_size=config.smtp.max_message_size,
                            too_large_notice=too_large_notice), env=env)
            for box in config.mailboxes]


def start_pollers(pollers: list[Poller], stop: threading.Event) -> list[threading.Thread]:
    threads = []
    for poller in pollers:
        thread = threading.Thread(target=poller.run, args=(stop,), name=f"imap-{poller.box.name}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads

"""Leases: jobs that must have one holder at a time across instances (issue 19).

Two IMAP pollers on one mailbox each took every message and the processed folder held
23 copies of 20 messages; two closers would close a ticket twice.  Each such job has a
``lease`` row: its holder, and when the lease runs out.  The holder renews it every
RENEW_EVERY seconds while it works; another instance takes it once ``expires_at`` has
passed, so a holder that dies (SIGKILL, a host gone) is replaced within LEASE_SECONDS
and a RETRY_EVERY.  A lease row works alike on SQLite and on PostgreSQL: taking and
renewing are one statement, an insert that updates the row only when it is free, ours,
or run out (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``), and says whether it did.

Times are the hosts' clocks (UTC): hosts that share a database keep them in time (NTP);
a clock a second off shortens or lengthens a takeover by that second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from gateway.heartbeat import HOST
from store.models import Lease as LeaseRow
from store.models import utcnow

log = logging.getLogger("gateway.lease")

# How long a lease lasts unless renewed, how often its holder renews it, and how often
# another instance looks whether it is free.
LEASE_SECONDS = 6.0
RENEW_EVERY = 2.0
RETRY_EVERY = 1.0
_TABLE = LeaseRow.__table__


def holder_name(role: str = "") -> str:
    """This process's name as a holder: host, pid (and the role, for the reader)."""
    return f"{HOST}:{os.getpid()}" + (f":{role}" if role else "")


class Lease:
    """The lease ``name`` as seen by ``holder``."""

    def __init__(self, engine: Engine, name: str, holder: str, seconds: float = LEASE_SECONDS):
        self.engine = engine
        self.name = name
        self.holder = holder
        self.seconds = seconds
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._insert = insert

    def acquire(self) -> bool:
        """Take the lease, or renew it if ours: True when this holder has it now, for
        ``seconds`` more.  A database that cannot be reached is a lease not held."""
        now = utcnow()
        stmt = self._insert(_TABLE).values(name=self.name, holder=self.holder,
                                            expires_at=now + timedelta(seconds=self.seconds))
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
            where=or_(_TABLE.c.holder == self.holder, _TABLE.c.expires_at < now),
        ).returning(_TABLE.c.holder)
        try:
            with self.engine.begin() as conn:
                return conn.execute(stmt).first() is not None
        except Exception as exc:  # noqa: BLE001 - not held; the caller tries again
            log.warning("lease %s: could not be taken or renewed: %s: %s", self.name, type(exc).__name__, exc)
            return False

    def release(self) -> None:
        """Give the lease up (a clean stop), so another instance takes it at once."""
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(_TABLE).where(_TABLE.c.name == self.name, _TABLE.c.holder == self.holder))
        except Exception as exc:  # noqa: BLE001 - it runs out by itself
            log.warning("lease %s: could not be released: %s", self.name, exc)

    def keep(self, stop: threading.Event) -> "Keeper":
        """Renew the lease in a thread of its own until ``stop`` or the returned
        Keeper's ``end()``; the Keeper's ``lost`` is set when a renewal fails (another
        holder has it, or the database could not be reached before it ran out), and
        when ``stop`` is set: the holder stops its work on it."""
        return Keeper(self, stop).start()

    @contextmanager
    def held(self):
        """For a job done now and then (the closer's pass): True inside when the lease
        was taken (kept renewed meanwhile, given up at the end), False when another
        holder has it."""
        if not self.acquire():
            yield False
            return
        keeper = self.keep(threading.Event())
        try:
            yield True
        finally:
            keeper.end()
            self.release()


class Keeper:
    """Renews a lease while its holder works (see Lease.keep)."""

    def __init__(self, lease: Lease, stop: threading.Event):
        self.lease = lease
        self.stop = stop
        self.lost = threading.Event()
        self._end = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.name}", daemon=True)

    def start(self) -> "Keeper":
        self._thread.start()
        return self

    def _run(self) -> None:
        renew_at = time.monotonic() + RENEW_EVERY
        while not self._end.wait(0.2):
            if self.stop.is_set():
                self.lost.set()
                return
            if time.monotonic() < renew_at:
                continue
            if not self.lease.acquire():
                log.warning("lease %s: lost (another holder has it, or the database did not answer); "
                            "its work stops here", self.lease.name)
                self.lost.set()
                return
            renew_at = time.monotonic() + RENEW_EVERY

    def end(self) -> None:
        """Stop renewing (the lease runs out by itself unless released)."""
        self._end.set()
        self._thread.join(timeout=5)

"""Faults that are not the mail's: what the worker waits out instead of counting.

Quarantine is for what is wrong with a mail.  What is wrong with the gateway's
surroundings (no space left, no database, a lock held too long, a name server or a
scanner that does not answer) is waited out: the mail stays ``received``, is taken again
from its ``not_before`` on, with a delay that doubles each time (2 s, 4 s, ... at most
``[limits] max_wait_delay``), and its ``attempts`` (toward ``[limits] max_attempts``) do
not move.  When the database itself cannot be written, not even ``not_before``, the
worker waits as a whole (``Backoff``).

``[store] reserve_mb``: below that much free space under the data folder the doors answer
452, the worker and the deliverer wait, and ``gateway status`` and /readyz fail, so the
database is never the one to hit the wall.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from gateway.config import Config, LimitsSection
from store.models import InboundMessage, utcnow

log = logging.getLogger("gateway.ingest")

# The detail of a mail that waits for its surroundings starts with this.
WAITING = "waiting (not the mail's fault): "
FIRST_DELAY = 2.0  # seconds
NOT_RECORDED = " (the wait could not be recorded)"


class Unavailable(Exception):
    """A service the gateway asks about a mail did not answer (a name server, a virus
    scanner timing out): raise it, or one ``from`` it, and the mail waits."""


# OSError numbers that say something about the machine, never about a mail.
_SURROUNDINGS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE,
                 errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
                 errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN}


def _driver_errors() -> tuple[type[BaseException], ...]:
    """The drivers' own operational errors: SQLite's, and PostgreSQL's once its driver is
    loaded (none of its errors exists before; importing it for SQLite cost ~70 ms of every
    command's start)."""
    found: list[type[BaseException]] = [sqlite3.OperationalError, sqlite3.InterfaceError]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        found += [psycopg.OperationalError, psycopg.InterfaceError]
    return tuple(found)


def surroundings(exc: BaseException | None) -> str | None:
    """Why ``exc`` is a fault of the surroundings (its text), or None when it may be the
    mail's.  Follows the chain of causes: a StoreFailed raised from an OSError(ENOSPC) is
    the disk's.

    The database's operational errors are all the surroundings' (SQLite's "database or
    disk is full" and "database is locked", PostgreSQL's lost connection, shutdown, lock
    and statement time-outs, deadlocks): no mail's content makes one.  Data and integrity
    errors, and everything else, stay the mail's."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = isinstance(exc, (Unavailable, sa_exc.OperationalError, sa_exc.InterfaceError,
                                 sa_exc.DisconnectionError, sa_exc.TimeoutError, *_driver_errors(),
                                 TimeoutError, ConnectionError, socket.gaierror))
        found = found or (isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated)
        found = found or (isinstance(exc, OSError) and exc.errno in _SURROUNDINGS)
        if found:
            text = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
            return f"{type(exc).__name__}: {text}"
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None


def delay(waits: int, limits: LimitsSection) -> float:
    """Seconds before the ``waits``-th attempt after a fault of the surroundings."""
    return min(FIRST_DELAY * 2 ** max(waits - 1, 0), float(limits.max_wait_delay))


def postpone(session: Session, inbound_id: int, why: str, limits: LimitsSection) -> InboundMessage:
    """The mail waits for its surroundings: taken again from ``not_before`` on, its
    attempts untouched; in the caller's transaction."""
    inbound = session.get(InboundMessage, inbound_id)
    inbound.waits += 1
    inbound.not_before = utcnow() + timedelta(seconds=delay(inbound.waits, limits))
    inbound.detail = WAITING + why
    session.add(inbound)
    session.flush()
    log.warning("<%s> waits %.0f s: %s", inbound.message_id, delay(inbound.waits, limits), why,
                extra={"message_id": inbound.message_id, "inbound_id": inbound_id, "outcome": "waiting"})
    return inbound


def postpone_alone(engine, inbound_id: int, why: str, limits: LimitsSection) -> tuple[str, str, str]:
    """``postpone`` in a transaction of its own: (source, message_id, detail).  When even
    that cannot be written (the disk or the database is the fault), nothing is: the mail
    stays as it was and the worker waits as a whole (Backoff)."""
    from store.db import session_for

    try:
        with session_for(engine) as session:
            inbound = postpone(session, inbound_id, why, limits)
            done = (inbound.source, inbound.message_id, inbound.detail)
            session.commit()
            return done
    except Exception as exc:  # noqa: BLE001 - written or not, the mail waits
        if surroundings(exc) is None:
            raise
        log.warning("inbound %s waits: %s (not recorded: %s)", inbound_id, why, surroundings(exc))
        return ("", "", WAITING + why + NOT_RECORDED)


def waiting(detail: str | None) -> bool:
    """An outcome's detail says the mail waits for its surroundings."""
    return bool(detail) and detail.startswith(WAITING)


def unrecorded(details) -> str | None:
    """The first of ``details`` (outcomes') of a mail that waits without its wait being
    written (the database cannot be): the worker must wait as a whole, or it would take
    that mail again at once."""
    return next((d for d in details if waiting(d) and d.endswith(NOT_RECORDED)), None)


class Backoff:
    """The worker's (or deliverer's) own wait while its surroundings fail: 2 s, then
    twice as long each time, at most ``[limits] max_wait_delay``; back to nothing after
    a pass that worked."""

    def __init__(self, limits: LimitsSection):
        self.limits = limits
        self.failures = 0

    def failed(self) -> float:
        self.failures += 1
        return delay(self.failures, self.limits)

    def ok(self) -> None:
        self.failures = 0


# The reserve --------------------------------------------------------------------------
@dataclass(frozen=True)
class Space:
    path: Path
    free_mb: float


def folders(config: Config) -> list[Path]:
    """Where the gateway writes on this machine: the data folder (journal, blobs, the
    SQLite database) and the file outbox."""
    found = [config.data_dir, config.blob_dir, config.outbox_dir]
    if config.database_url.startswith("sqlite:///"):
        found.append(Path(config.database_url[len("sqlite:///"):]).parent)
    return list(dict.fromkeys(found))


def free_space(config: Config) -> list[Space]:
    out = []
    for path in folders(config):
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # not made yet: the file system it will be on
        try:
            st = os.statvfs(probe)
        except OSError:
            continue
        out.append(Space(path, st.f_bavail * st.f_frsize / 2**20))
    return out


def short_of_space(config: Config) -> str | None:
    """What is below ``[store] reserve_mb`` (a sentence), or None."""
    reserve = config.store.reserve_mb
    if reserve <= 0:
        return None
    low = [s for s in free_space(config) if s.free_mb < reserve]
    if not low:
        return None
    worst = min(low, key=lambda s: s.free_mb)
    return f"{worst.free_mb:.1f} MB free under {worst.path}, below the reserve of {reserve} MB ([store] reserve_mb)"


class Reserve:
    """``short_of_space`` for a door, looked at most once every ``every`` seconds (a
    statvfs per folder each time)."""

    def __init__(self, config: Config, every: float = 0.5):
        self.config = config
        self.every = every
        self._at = -every
        self._short: str | None = None

    def short(self) -> str | None:
        now = time.monotonic()
        if now - self._at >= self.every:
            self._short, self._at = short_of_space(self.config), now
        return self._short


def due(now):
    """The clause of the waiting mails whose turn it is (no ``not_before``, or past it)."""
    from sqlmodel import col

    return col(InboundMessage.not_before).is_(None) | (col(InboundMessage.not_before) <= now)


# A mail that kills its worker ------------------------------------------------------------
KILLED = "processing killed the worker"


class Holding:
    """The mails a worker holds now, written before it touches them (parsing included) to
    a file of its own under the data folder, and cleared when the batch returns: a
    worker that dies (a parser crash in a C extension, the OOM killer) leaves them
    there for the next worker of its slot to find (``after_death``).

    A file, not a row: it costs a write a batch and no transaction; the operating system
    keeps it when the process dies, which is the only death it is for (a machine that
    stops is not a mail's doing), so it is not fsynced.  It is kept open and written in
    place, one ``pwrite`` padded with spaces (which JSON ignores) to the longest content
    written yet: opening it again to truncate it cost ~0.3 ms a write on ext4, two a
    batch, ~5 % of the worker's time on small mails (issue 20).

    ``suspects``: the mails of a batch during which the worker died; each is processed
    alone before any other, so the next death names its mail."""

    def __init__(self, folder: Path, name: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / name
        self.suspects: list[int] = []
        self._fd: int | None = None
        self._size = 0

    def read(self) -> tuple[list[int], list[int]]:
        """(held, suspects) as the last worker left them."""
        import json

        try:
            found = json.loads(self.path.read_text().strip() or "{}")
            return [int(i) for i in found.get("holding", [])], [int(i) for i in found.get("suspects", [])]
        except FileNotFoundError:
            return [], []
        except (ValueError, TypeError, AttributeError):
            log.warning("%s unreadable; no mail held", self.path)
            return [], []

    def _write(self, held: list[int]) -> None:
        import json

        data = json.dumps({"holding": held, "suspects": self.suspects}).encode()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size
        self._size = max(self._size, len(data))
        os.pwrite(self._fd, data.ljust(self._size), 0)

    def hold(self, inbound_ids: list[int]) -> None:
        self._write(list(inbound_ids))

    def release(self) -> None:
        self._write([])


def after_death(engine, holding: Holding, limits: LimitsSection, short: str | None = None) -> None:
    """At a worker's start: what the one before it held when it died.  One mail held
    alone: its death is counted, and past ``max_worker_deaths`` it is quarantined
    ("processing killed the worker"), else tried first, alone, again.  Several: each
    becomes a suspect, tried alone, so that a death names its mail; none is counted.

    ``short``: the disk is below the reserve (``short_of_space``): a death now is taken
    for the disk's (SQLite's shared memory file cannot grow on a full file system: the
    process gets SIGBUS), never counted against a mail."""
    from sqlmodel import col, select

    from store.db import session_for

    held, suspects = holding.read()
    if short is not None and held:
        log.warning("the worker died holding %d mail(s) while %s: not counted against them", len(held), short)
        suspects, held = [*held, *suspects], []
    if len(held) == 1:
        (inbound_id,) = held
        with session_for(engine) as session:
            inbound = session.exec(select(InboundMessage).where(col(InboundMessage.id) == inbound_id)).first()
            if inbound is not None and inbound.state == "received":
                inbound.deaths += 1
                log.error("<%s> the worker died processing it (%d of %d)", inbound.message_id, inbound.deaths,
                          limits.max_worker_deaths,
                          extra={"message_id": inbound.message_id, "inbound_id": inbound_id})
                if inbound.deaths >= limits.max_worker_deaths:
                    inbound.state = inbound.outcome = "quarantined"
                    inbound.detail = f"{KILLED} ({inbound.deaths} times)"
                    inbound.processed_at = utcnow()
                    log.info("<%s> quarantined (%s)", inbound.message_id, inbound.detail,
                             extra={"message_id": inbound.message_id, "inbound_id": inbound_id,
                                    "outcome": "quarantined"})
                else:
                    suspects = [inbound_id, *suspects]
                session.add(inbound)
                session.commit()
    elif held:
        log.warning("the worker died holding %d mails; each is processed alone", len(held))
        suspects = [*held, *suspects]
    holding.suspects = list(dict.fromkeys(suspects))
    holding.release()


# A test's way to make a mail kill its worker, as a parser crash in a C extension would:
# only this environment variable, never a key of the configuration, and the worker says
# so loudly at its start (gateway.service).
KILL_HOOK = "HELPDESK_TEST_ONLY_KILL_WORKER_ON_MESSAGE_ID"
_KILL_ON = os.environ.get(KILL_HOOK) or None


def test_hook(message_id: str) -> None:
    """Die at once, as a crash would, if the test hook names this mail (see KILL_HOOK)."""
    if _KILL_ON is not None and message_id == _KILL_ON:
        os._exit(70)

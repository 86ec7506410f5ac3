"""Heartbeats: each process of ``gateway serve`` says in the database that it is alive,
and each mailbox poller how its last pass went.

A service that stopped says nothing, and a monitoring system that only reads what the
service writes sees nothing wrong (issue 16: with the service down ``gateway status``
exited 0).  So every process refreshes a row of ``serviceprocess`` every
``[monitoring] heartbeat_interval`` seconds; a row not refreshed for three intervals is
a process that died without a word (or a host that went down).  A process that stops
cleanly marks its row stopped; ``gateway serve`` marks the row of a child it saw die,
with the reason, before it starts another.  ``gateway status`` and /readyz read the
rows (gateway.health); nothing else depends on them.

The rows are keyed by (host, pid) and grouped by ``instance`` (host:pid of the
``gateway serve``), so several instances on several hosts sit side by side.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway import __version__
from store.models import MailboxPoll, ServiceProcess, aware, utcnow

log = logging.getLogger("gateway.service")

HOST = socket.gethostname()
# Heartbeats missed before a process is taken for dead.
MISSED_BEATS = 3
# Rows of instances stopped longer ago than this are removed at the next start anywhere.
KEEP_STOPPED = timedelta(days=7)
_TABLE = ServiceProcess.__table__


def instance_of(pid: int | None = None) -> str:
    """The name of the ``gateway serve`` whose parent process is ``pid`` (this one)."""
    return f"{HOST}:{pid or os.getpid()}"


class Heartbeat:
    """This process's row, refreshed by a thread of its own until ``stop``."""

    def __init__(self, engine: Engine, role: str, instance: str, interval: float):
        self.engine = engine
        self.role = role
        self.instance = instance
        self.interval = interval
        self.pid = os.getpid()
        self.started_at = utcnow()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self, now: datetime | None = None) -> None:
        """Say "alive" now: update the row, or make it (the first beat, or after a
        database that lost it).  The first beat also drops the rows of earlier processes
        of the same role in this instance: it replaces them."""
        now = now or utcnow()
        values = dict(instance=self.instance, role=self.role, version=__version__, last_seen=now,
                      stopped_at=None, exit_reason=None)
        with self.engine.begin() as conn:
            done = conn.execute(update(_TABLE).where(_TABLE.c.host == HOST, _TABLE.c.pid == self.pid)
                                .values(**values)).rowcount
            if not done:
                conn.execute(delete(_TABLE).where(_TABLE.c.instance == self.instance, _TABLE.c.role == self.role,
                                                  _TABLE.c.pid != self.pid))
                try:
                    with conn.begin_nested():
                        conn.execute(_TABLE.insert().values(host=HOST, pid=self.pid, started_at=self.started_at,
                                                            **values))
                except IntegrityError:  # another beat of ours made it meanwhile
                    conn.execute(update(_TABLE).where(_TABLE.c.host == HOST, _TABLE.c.pid == self.pid)
                                 .values(**values))

    def start(self) -> "Heartbeat":
        """Beat now (so the process counts as alive from here), then every interval."""
        self._safe_beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.role}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._safe_beat()

    def _safe_beat(self) -> None:
        try:
            self.beat()
            if self._failing:
                log.info("%s: heartbeat recorded again", self.role)
            self._failing = False
        except Exception as exc:  # noqa: BLE001 - the database is down: the other checks say so
            if not self._failing:
                log.warning("%s: could not record its heartbeat: %s: %s", self.role, type(exc).__name__, exc)
            self._failing = True

    def stop(self) -> None:
        """A clean stop: the row says so (a stopped process is not a dead one)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        mark_stopped(self.engine, HOST, self.pid, None)


def mark_stopped(engine: Engine, host: str, pid: int, reason: str | None) -> None:
    """The process ``pid`` on ``host`` stopped: cleanly (``reason`` None) or, as its parent
    saw, because it died (``reason`` says how).  Best effort: a database that is down
    leaves the row to go stale, which says the same a little later."""
    try:
        with engine.begin() as conn:
            conn.execute(update(_TABLE).where(_TABLE.c.host == host, _TABLE.c.pid == pid)
                         .values(stopped_at=utcnow(), exit_reason=reason))
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record that process %s stopped: %s", pid, exc)


def forget_old(engine: Engine, instance: str, interval: float, now: datetime | None = None) -> None:
    """At the start of an instance: drop the rows this host's earlier instances left (a
    process does not outlive its gateway serve: each one stops when its parent is gone),
    except those of another instance on this host that still runs; and the rows of
    instances anywhere stopped more than KEEP_STOPPED ago."""
    now = now or utcnow()
    stale = now - timedelta(seconds=interval * MISSED_BEATS)
    with engine.begin() as conn:
        others = conn.execute(select(_TABLE.c.instance, _TABLE.c.last_seen, _TABLE.c.stopped_at)
                              .where(_TABLE.c.host == HOST, _TABLE.c.instance != instance)).all()
        over = {name for name, seen, stopped in others
                if stopped is not None or aware(seen) < stale or not _running(name)}
        if over:
            conn.execute(delete(_TABLE).where(_TABLE.c.host == HOST, _TABLE.c.instance.in_(sorted(over))))
        conn.execute(delete(_TABLE).where(_TABLE.c.stopped_at < now - KEEP_STOPPED))


def _running(instance: str) -> bool:
    """Whether the gateway serve named ``instance`` (host:pid, on this host) still runs."""
    try:
        os.kill(int(instance.rpartition(":")[2]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True  # not ours to judge (another user's process has that pid now)
    return True


_POLLS = MailboxPoll.__table__


def record_poll(engine: Engine, mailbox: str, error: str | None, now: datetime | None = None) -> None:
    """A pass of ``mailbox``'s poller worked (``error`` None) or failed, kept durably."""
    now = now or utcnow()
    values = (dict(last_success_at=now) if error is None
              else dict(last_failure_at=now, last_error=error[:2000]))
    with engine.begin() as conn:
        if not conn.execute(update(_POLLS).where(_POLLS.c.mailbox == mailbox).values(host=HOST, **values)).rowcount:
            try:
                with conn.begin_nested():
                    conn.execute(_POLLS.insert().values(mailbox=mailbox, host=HOST, **values))
            except IntegrityError:
                conn.execute(update(_POLLS).where(_POLLS.c.mailbox == mailbox).values(host=HOST, **values))

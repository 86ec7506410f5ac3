"""Engines and sessions for SQLite and PostgreSQL, from one URL."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from store import models  # noqa: F401  (registers the tables)
from store.models import Counter

PROCESS_PREFIX = {"incident": "INC", "service-request": "SR", "change": "CHG"}


def make_engine(url: str, *, busy_timeout_ms: int = 30000, checkpoints: bool = True) -> Engine:
    """An engine for ``url``.  SQLite gets WAL, foreign keys, a busy timeout and
    synchronous=FULL, so that a commit is on disk when it returns.

    ``busy_timeout_ms``: how long SQLite itself waits for the write lock.  Its waiting
    sleeps in growing steps (up to 100 ms), which is fine for batch work; the SMTP door's
    spool uses 0 and retries in 1 ms steps instead, so a client is not kept waiting
    long after the worker has let go of the lock.

    ``checkpoints=False``: this engine's commits never run SQLite's automatic WAL
    checkpoint (copying the log into the database file, with its fsyncs); the other
    connections (the worker's) still do.  The door's spool uses it so that a sender's
    250 never waits for a checkpoint."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            # Let SQLAlchemy not open transactions implicitly; BEGIN IMMEDIATE below
            # takes the write lock at the start, so two writers never deadlock.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if not checkpoints:
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # pragma: no cover - trivial
            # A reader (``reader(engine)``) takes no write lock: in WAL mode it reads a
            # snapshot while the door or the worker writes.
            if conn.get_execution_options().get("gateway_read_only"):
                conn.exec_driver_sql("BEGIN")
            else:
                _begin_immediate(conn, busy_timeout_ms)

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True)


def _begin_immediate(conn, busy_timeout_ms: int) -> None:
    """BEGIN IMMEDIATE, asking for the write lock every millisecond up to the busy timeout.

    SQLite's own busy handler sleeps in growing steps (1, 2, 5, 10 … 100 ms): a worker
    that finds the door committing would sleep up to 8 ms for a lock held 3 ms, several
    times a second under load (measured with py-spy: 8 % of the worker's time).  While
    asking, the busy timeout is 0, so each try returns at once; it is restored after."""
    if busy_timeout_ms <= 0:  # the caller retries itself (the door's spool)
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    raw = conn.connection.driver_connection
    deadline = time.monotonic() + busy_timeout_ms / 1000
    raw.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
    finally:
        raw.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")


def init_db(engine: Engine) -> None:
    """Create the tables and the number counters when they are missing."""
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        for process in PROCESS_PREFIX:
            if session.get(Counter, process) is None:
                session.add(Counter(process=process, value=0))
        try:
            session.commit()
        except Exception:  # another process created them at the same moment
            session.rollback()


def session_for(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def reader(engine: Engine) -> Session:
    """A session for reads only.  On SQLite it begins a plain (deferred) transaction, so
    it does not take the one write lock that the door needs for its next 250; elsewhere
    it is an ordinary session.  Nothing written through it is committed."""
    return Session(engine.execution_options(gateway_read_only=True), expire_on_commit=False, autoflush=False)

"""Engines and sessions for SQLite and PostgreSQL, from one URL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

from store import models  # noqa: F401  (registers the tables)
from store.schema import ensure_current

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
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("gateway_read_only") else
                                 "BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True)


def init_db(engine: Engine) -> None:
    """Bring the database's schema to this code's revision: create it when empty, stamp
    tables made before migrations, upgrade an older one; cheap when already there.  Safe
    when several processes start at once.  Raises store.schema.SchemaError when the
    database is newer than this code (see store.schema)."""
    ensure_current(engine)


def session_for(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def reader(engine: Engine) -> Session:
    """A session for reads only.  On SQLite it begins a plain (deferred) transaction, so
    it does not take the one write lock that the door needs for its next 250; elsewhere
    it is an ordinary session.  Nothing written through it is committed."""
    return Session(engine.execution_options(gateway_read_only=True), expire_on_commit=False, autoflush=False)

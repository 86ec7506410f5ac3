"""Engines and sessions for SQLite and PostgreSQL, from one URL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, create_engine

from store import models  # noqa: F401  (registers the tables)
from store.schema import ensure_current
from store.vocabulary import PROCESS_PREFIX  # noqa: F401 (named there; imported from here too)



def make_engine(url: str, *, busy_timeout_ms: int = 30000, checkpoints: bool = True,
                connect_timeout: int = 10) -> Engine:
    """An engine for ``url``.  SQLite gets WAL, foreign keys, a busy timeout and
    synchronous=FULL, so that a commit is on disk when it returns.

    ``busy_timeout_ms``: how long SQLite itself waits for the write lock.  Its waiting
    sleeps in growing steps (up to 100 ms), which is fine for batch work; the SMTP door's
    spool uses 0 and retries in 1 ms steps instead, so a client is not kept waiting
    long after the worker has let go of the lock.

    ``checkpoints=False``: this engine's commits never run SQLite's automatic WAL
    checkpoint (copying the log into the database file, with its fsyncs); the other
    connections (the worker's) still do.  The door's spool uses it so that a sender's
    250 never waits for a checkpoint.

    ``connect_timeout``: seconds a PostgreSQL connection may take (unless the URL says):
    libpq waits for the system's TCP timeout, minutes, for a server that drops packets."""
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
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = connect_timeout
    engine = create_engine(url, connect_args=connect_args)
    _ping_when_idle(engine)
    return engine


# A pooled connection idle longer than this is tested before it is handed out.
PING_AFTER_IDLE = 5.0


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled PostgreSQL connection before use only when it sat idle for a while.

    ``pool_pre_ping`` tests it on every checkout: a round trip to the server each time a
    session starts, several a mail in a worker (~9 % of its busy samples on the small
    set).  A connection in steady use is known good; one that waited (the server may
    have restarted meanwhile) is tested, and a dead one replaced transparently
    (SQLAlchemy's pessimistic disconnect handling with a checkout event)."""
    import time

    from sqlalchemy import exc

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn, record):  # pragma: no cover - trivial
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy):
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:  # new, or in steady use
            return
        try:
            _ping(dbapi_conn)
        except Exception as error:  # the server went away: the pool retries with a new one
            raise exc.DisconnectionError(str(error)) from error


def _ping(dbapi_conn) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("SELECT 1")
    cursor.close()
    dbapi_conn.rollback()


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


def connection_of(session: Session):
    """``session.connection()``, remembered for the session's current transaction (the
    innermost savepoint included): the same connection, without SessionTransaction's
    bookkeeping on each of a mail's dozen statements (~4 % of the worker's time).  A new
    savepoint, a commit or a rollback makes the next call ask the session again, so
    whatever the session does on a transaction's first use (its SAVEPOINT) still happens."""
    current = (session.get_transaction(), session.get_nested_transaction())
    known = session.info.get(_CONNECTION)
    if known is not None and known[0] == current and current[0] is not None and current[0].is_active \
            and (current[1] is None or current[1].is_active) and not known[1].closed:
        return known[1]
    conn = session.connection()
    session.info[_CONNECTION] = ((session.get_transaction(), session.get_nested_transaction()), conn)
    return conn


_CONNECTION = "store.db.connection"


class Prepared:
    """A Core statement compiled once per dialect and set of parameters, run straight on
    the DBAPI cursor of a SQLAlchemy connection, in that connection's transaction.

    For the dozen statements each mail costs in the worker.  ``Connection.execute``
    spends more on every call (cache key, execution context, parameter processing,
    result set-up) than SQLite spends running the statement: ~35 % of the worker's busy
    time on the small-mail benchmark (py-spy).  This keeps what matters of it: the
    dialect's SQL, its bind processors (datetimes on SQLite), its errors (a DBAPI error
    comes back as the SQLAlchemy exception, IntegrityError included).  Statements it
    cannot run as they are (Python-side defaults to fill, post-compiled parameters such
    as expanding IN, results that need processing) go through ``Connection.execute``.

    ``execute`` returns the first column of the first row (for RETURNING or a one-value
    SELECT), ``rows`` every row as tuples; each takes a Connection or a Session (its
    connection, ``connection_of``)."""

    def __init__(self, statement):
        self.statement = statement
        self._forms: dict = {}

    def _form(self, conn, params: dict):
        dialect = conn.dialect
        key = (dialect.name, dialect.driver, tuple(params))
        form = self._forms.get(key)
        if form is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=list(params))
            simple = not (compiled.insert_prefetch or compiled.update_prefetch
                          or getattr(compiled, "literal_execute_params", None)
                          or getattr(compiled, "post_compile_params", None)
                          or any(col[3]._cached_result_processor(dialect, None) is not None
                                 for col in compiled._result_columns))
            processors = dict(compiled._bind_processors)
            escaped = dict(compiled.escaped_bind_names or {})
            order = list(compiled.positiontup) if compiled.positional else None
            # The statement's own values (``direction == "in"`` is a bound parameter too).
            fixed = {}
            for name, bind in compiled.binds.items():
                if name not in params and not bind.required and not bind.callable:
                    value = bind.effective_value
                    fixed[name] = processors[name](value) if name in processors else value
            form = self._forms[key] = (simple, compiled.string, order, processors, escaped, fixed)
        return form

    def _run(self, conn, params: dict):
        if isinstance(conn, OrmSession):
            conn = connection_of(conn)
        simple, sql, order, processors, escaped, fixed = self._form(conn, params)
        if not simple:
            return None, conn.execute(self.statement, params)
        values = dict(fixed)
        values.update((k, processors[k](v) if k in processors else v) for k, v in params.items())
        if order is not None:
            try:
                args = tuple(values[name] for name in order)
            except KeyError:  # a parameter left out: SQLAlchemy says which
                return None, conn.execute(self.statement, params)
        else:
            args = {escaped.get(k, k): v for k, v in values.items()}
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql, args)
        except conn.dialect.loaded_dbapi.Error as exc:
            cursor.close()
            from sqlalchemy.exc import DBAPIError

            raise DBAPIError.instance(sql, args, exc, conn.dialect.loaded_dbapi.Error,
                                      dialect=conn.dialect) from exc
        return cursor, None

    def execute(self, conn, params: dict):
        cursor, result = self._run(conn, params)
        if result is not None:
            return result.scalar() if result.returns_rows else None
        try:
            if cursor.description is None:
                return None
            row = cursor.fetchone()
            return row[0] if row is not None else None
        finally:
            cursor.close()

    def rows(self, conn, params: dict) -> list[tuple]:
        cursor, result = self._run(conn, params)
        if result is not None:
            return [tuple(r) for r in result]
        try:
            return [tuple(r) for r in cursor.fetchall()]
        finally:
            cursor.close()

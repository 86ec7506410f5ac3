"""The database schema's version, and moving it forward with Alembic.

The revisions live in ``store/migrations/versions/`` and ship with the package; Alembic
is configured here, from the gateway's own engine, with no alembic.ini.  Every start-up
calls ``ensure_current`` (through store.db.init_db):

- the database is at ``HEAD``: nothing to do, after one read of ``alembic_version``
  (Alembic itself is not even imported: it costs a start-up ~0.15 s);
- the database is empty: every revision is applied;
- the tables were made by the gateway's old ``create_all`` (no ``alembic_version``):
  they are compared with the baseline revision's tables and, when they match, stamped
  with it, then upgraded; when they do not, start-up stops and lists the differences;
- the database is at an older revision: it is upgraded;
- the database is at a revision this code does not know (a newer gateway upgraded it):
  start-up stops with ``SchemaError`` naming both revisions.

Several processes start at once (the door, its workers, a ``gateway ingest``).  The
upgrade runs in one transaction under a lock that only one of them holds — PostgreSQL's
``pg_advisory_xact_lock``, SQLite's write lock (``BEGIN IMMEDIATE``) — and looks at the
database's revision again once it holds it, so the others find the work done.
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

# The newest revision in store/migrations/versions.  Kept here so that the start-up of a
# database already at head needs neither Alembic nor the revision files; a test checks
# that it names the head Alembic finds.  A new revision must update it.
HEAD = "0014"
BASELINE = "0001"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
# The key of the PostgreSQL advisory lock held while the schema is upgraded.
_LOCK_KEY = zlib.crc32(b"helpdesk-mail-gateway schema") - 2**31


class SchemaError(RuntimeError):
    """The database's schema cannot be used or brought up to date by this code."""


@dataclass(frozen=True)
class Migration:
    """What an upgrade or a downgrade did: the revision before (None: empty database, or
    tables made before migrations when ``stamped``) and after."""

    before: str | None
    after: str | None
    stamped: bool = False


def ensure_current(engine: Engine) -> None:
    """Bring the database to ``HEAD`` if it is not there (see the module's docstring).
    Raises SchemaError when the database is newer than this code or its tables are not
    the baseline's."""
    if stored_revision(engine) == HEAD:
        return
    upgrade(engine)


def stored_revision(engine: Engine) -> str | None:
    """The revision in ``alembic_version``, in one query; None when the table is
    missing or empty (or holds several rows, which only Alembic's branches make)."""
    try:
        # A plain read: on SQLite it takes no write lock (store.db's gateway_read_only).
        with engine.execution_options(gateway_read_only=True).connect() as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except DBAPIError:
        return None
    return rows[0][0] if len(rows) == 1 else None


def upgrade(engine: Engine, target: str = "head", *, scripts: Path = MIGRATIONS_DIR) -> Migration:
    """Migration the database to ``target``, stamping tables made before migrations with
    the baseline first.  One transaction under the schema lock."""
    from alembic import command

    with _locked(engine) as conn:
        config = alembic_config(conn, scripts)
        script = script_directory(config)
        found = _state(conn)
        stamped = False
        if found.revision is None and found.tables:
            _check_baseline(conn, script)
            command.stamp(config, BASELINE)
            _add_counters(conn)
            stamped = True
        elif found.revision is not None:
            _known(script, found.revision)
        command.upgrade(config, target)
        return Migration(found.revision, _current(conn), stamped)


def downgrade(engine: Engine, target: str, *, scripts: Path = MIGRATIONS_DIR) -> Migration:
    """Downgrade the database to ``target`` (a revision, ``-1``, or ``base``: no tables)."""
    from alembic import command

    with _locked(engine) as conn:
        config = alembic_config(conn, scripts)
        before = _current(conn)
        if before is not None:
            _known(script_directory(config), before)
        command.downgrade(config, target)
        return Migration(before, _current(conn))


@dataclass(frozen=True)
class State:
    """Where a database stands: its revision, the code's head, whether any of the
    gateway's tables exist (tables with no revision: made before migrations), and whether
    this code knows the revision (it does not when a newer gateway upgraded the database)."""

    revision: str | None
    head: str
    tables: bool
    known: bool = True

    @property
    def describe(self) -> str:
        if self.revision is None:
            return ("no revision: tables made before migrations (an upgrade stamps them as the baseline)"
                    if self.tables else "no revision: empty database")
        return self.revision if self.known else f"{self.revision}, unknown to this version (a newer one upgraded it)"


def state(engine: Engine, *, scripts: Path = MIGRATIONS_DIR) -> State:
    """The database's revision and the code's head, without changing anything."""
    with engine.execution_options(gateway_read_only=True).connect() as conn:
        found = _state(conn)
        script = script_directory(alembic_config(conn, scripts))
    known = True
    if found.revision is not None:
        try:
            _known(script, found.revision)
        except SchemaError:
            known = False
    return State(found.revision, script.get_current_head(), found.tables, known)


def differences(engine: Engine) -> list[str]:
    """How the database differs from the models (SQLModel.metadata), one line each, as
    Alembic's autogenerate sees them; empty when they agree.  Tables that are not the
    gateway's are left out."""
    from sqlmodel import SQLModel

    from store import models  # noqa: F401  (registers the tables)

    with engine.execution_options(gateway_read_only=True).connect() as conn:
        return _compare(conn, SQLModel.metadata)


def describe(diff) -> str:
    """One of compare_metadata's differences as a sentence: "add" means the models have
    it and the database does not, "remove" the other way round."""
    if isinstance(diff, list):  # column changes come as a list of modify_* tuples
        return "; ".join(describe(d) for d in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        where = "the models only" if kind == "add_table" else "the database only"
        return f"table {diff[1].name}: in {where}"
    if kind in ("add_column", "remove_column"):
        where = "the models only" if kind == "add_column" else "the database only"
        return f"column {diff[2]}.{diff[3].name}: in {where}"
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        obj = diff[1]
        what = {"index": "index", "constraint": "constraint", "fk": "foreign key"}[kind.split("_", 1)[1]]
        columns = ", ".join(c.name for c in getattr(obj, "columns", ()))
        if kind.endswith("_fk"):
            columns = ", ".join(obj.column_keys) + " -> " + obj.referred_table.name
        where = "the models only" if kind.startswith("add") else "the database only"
        return f"{what} {obj.name or '(unnamed)'} on {obj.table.name} ({columns}): in {where}"
    if kind.startswith("modify_"):
        _, _schema, table, column, _kw, old, new = diff
        return f"column {table}.{column}: {kind[len('modify_'):]} is {old!r} in the database, {new!r} in the models"
    return repr(diff)


def alembic_config(conn: Connection, scripts: Path = MIGRATIONS_DIR):
    """Alembic's configuration for ``conn``: the revisions in ``scripts``, no ini file."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.attributes["connection"] = conn
    return config


def script_directory(config):
    """The revisions (Alembic's ScriptDirectory) of an ``alembic_config``."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config)


# -- inside -------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(engine: Engine):
    """A connection in a transaction that holds the schema lock; committed at the end."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # SQLite's own procedure for schema changes: foreign keys off (batch mode
            # drops and renames tables that others refer to), a foreign_key_check before
            # the commit.  The pragma has no effect inside a transaction, so it is set on
            # the bare DB-API connection before BEGIN.
            raw = conn.connection.dbapi_connection
            raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():  # BEGIN IMMEDIATE (store.db): the write lock, waited for
                    yield conn
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise SchemaError(f"the migration leaves rows whose foreign keys point nowhere: {broken[:5]}")
            finally:
                raw.execute("PRAGMA foreign_keys=ON")
            return
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # Held until the transaction ends; PostgreSQL's DDL is transactional.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            yield conn


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _state(conn: Connection) -> State:
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from store import models  # noqa: F401

    names = set(inspect(conn).get_table_names())
    ours = bool(names & set(SQLModel.metadata.tables))
    revision = _current(conn) if VERSION_TABLE in names else None
    return State(revision, HEAD, ours)


def _known(script, revision: str) -> None:
    """SchemaError unless ``revision`` is one of this code's revisions."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        found = script.get_revision(revision)
    except (CommandError, RevisionError):
        found = None
    if found is None:
        raise SchemaError(
            f"the database's schema is at revision {revision}, which this gateway does not know "
            f"(its newest is {script.get_current_head()}): a newer gateway has upgraded it. "
            "Run that version, or restore the backup taken before the upgrade. With several instances "
            "on this database, upgrade them one by one: each instance still on the old version must be "
            "upgraded before it can start again.")


def _check_baseline(conn: Connection, script) -> None:
    """Tables made by the old create_all may be stamped with the baseline only if they are
    the baseline's tables: otherwise the revisions after it would not apply."""
    baseline = script.get_revision(BASELINE).module.tables()
    found = _compare(conn, baseline)
    if found:
        raise SchemaError(
            "the database has the gateway's tables but no schema revision, and they differ from "
            f"the baseline revision {BASELINE}, so they cannot be stamped and upgraded:\n  - "
            + "\n  - ".join(found))


def _compare(conn: Connection, metadata) -> list[str]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def include_name(name, type_, parent_names) -> bool:
        return name in metadata.tables if type_ == "table" else True

    context = MigrationContext.configure(conn, opts={"include_name": include_name, "compare_type": True})
    return [describe(d) for d in compare_metadata(context, metadata)]


def _add_counters(conn: Connection) -> None:
    """The ticket number counters the old init_db added after create_all, should a
    process have stopped between the two."""
    from store.db import PROCESS_PREFIX

    for process in PROCESS_PREFIX:
        exists = conn.execute(text("SELECT 1 FROM counter WHERE process = :p"), {"p": process}).first()
        if exists is None:
            conn.execute(text("INSERT INTO counter (process, value) VALUES (:p, 0)"), {"p": process})

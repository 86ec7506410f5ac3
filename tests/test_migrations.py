"""Schema migrations (store.schema, store/migrations): what start-up does to an empty
database, to one made by the old create_all, to an older or a newer one, with several
processes starting at once, and the `gateway db` commands; on real SQLite files and on
the real PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text
from sqlmodel import Session, SQLModel, select

from conftest import ROOT, free_port, run_gateway, write_config
from store import schema
from store.db import PROCESS_PREFIX, init_db, make_engine
from store.models import Counter, InboundMessage, Person, StatusChange, Ticket


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def create_all_as_before(engine) -> None:
    """What init_db did before migrations (commit 4ff6682): create_all of the models as
    they were then (the baseline revision's tables) and the counters."""
    with engine.connect() as conn:
        baseline = schema.script_directory(schema.alembic_config(conn, schema.MIGRATIONS_DIR)) \
            .get_revision(schema.BASELINE).module.tables()
    baseline.create_all(engine)
    with Session(engine) as session:
        for process in PROCESS_PREFIX:
            if session.get(Counter, process) is None:
                session.add(Counter(process=process, value=0))
        session.commit()


def alembic_differences(engine) -> list:
    """Alembic's own comparison of the database with SQLModel.metadata, all tables."""
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)


def table_names(engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def put_a_ticket(engine) -> int:
    """A person, a ticket with a status change, a received mail: rows in tables that
    refer to each other."""
    now = datetime.now(timezone.utc)
    with Session(engine, expire_on_commit=False) as session:
        person = Person(email="jeanne.dupont@example.be", name="Jeanne Dupont", language="fr")
        session.add(person)
        session.flush()
        ticket = Ticket(number="INC-000001", process="incident", title="Nouvel utilisateur",
                        reporting_person_id=person.id, affected_person_id=person.id, created_at=now)
        session.add(ticket)
        session.flush()
        session.add(StatusChange(ticket_id=ticket.id, from_status=None, to_status="New"))
        # Its columns as the baseline has them (later revisions add columns to the model).
        session.execute(text("INSERT INTO inboundmessage (received_at, source, mail_from, rcpt_to, message_id, "
                             "sha256, size, state, attempts) VALUES (:now, '', '', '', 'abc@example.be', :sha, 10, "
                             "'received', 0)"), {"now": now, "sha": "0" * 64})
        counter = session.get(Counter, "incident")
        counter.value = 1
        session.add(counter)
        session.commit()
        return ticket.id


def assert_ticket_kept(engine) -> None:
    with Session(engine) as session:
        ticket = session.exec(select(Ticket)).one()
        assert (ticket.number, ticket.title) == ("INC-000001", "Nouvel utilisateur")
        assert session.exec(select(StatusChange.to_status)).all() == ["New"]
        assert session.exec(select(Person.email)).all() == ["jeanne.dupont@example.be"]
        assert session.get(Counter, "incident").value == 1
        assert session.exec(select(InboundMessage.message_id)).all() == ["abc@example.be"]


# -- the revisions ---------------------------------------------------------------------


def test_head_constant_names_the_newest_revision():
    """store.schema.HEAD spares start-up the loading of Alembic; it must be the head."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(schema.MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config)
    assert script.get_heads() == [schema.HEAD], "one line of revisions, whose newest is store.schema.HEAD"
    assert script.get_base() == schema.BASELINE
    for revision in script.walk_revisions():
        assert Path(revision.path).name.startswith(f"{revision.revision}_")
    # They ship with the package: inside it, nothing needed from the checkout's root.
    assert schema.MIGRATIONS_DIR.is_relative_to(ROOT / "store")
    assert not list(ROOT.glob("alembic.ini"))


def test_upgrade_from_empty_matches_the_models(engine):
    init_db(engine)
    assert schema.stored_revision(engine) == schema.HEAD
    assert alembic_differences(engine) == []
    assert schema.differences(engine) == []
    with Session(engine) as session:
        assert sorted((c.process, c.value) for c in session.exec(select(Counter))) == [
            ("change", 0), ("incident", 0), ("service-request", 0)]
    # Exactly the tables the models define, and Alembic's own.
    assert table_names(engine) == set(SQLModel.metadata.tables) | {"alembic_version"}


def test_check_sees_what_differs(engine):
    """The comparison that the test above finds empty does see a difference."""
    init_db(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_outbox_state")
        conn.exec_driver_sql("ALTER TABLE person ADD COLUMN shoe_size INTEGER")
    assert sorted(schema.differences(engine)) == [
        "column person.shoe_size: in the database only",
        "index ix_outbox_state on outbox (state): in the models only",
    ]
    assert len(alembic_differences(engine)) == 2


def test_downgrade_to_base_and_up_again(engine):
    init_db(engine)
    down = schema.downgrade(engine, "base")
    assert (down.before, down.after) == (schema.HEAD, None)
    assert table_names(engine) <= {"alembic_version"}
    assert schema.stored_revision(engine) is None
    # Start-up finds a database at no revision, with none of the tables: it upgrades.
    init_db(engine)
    assert schema.stored_revision(engine) == schema.HEAD
    assert alembic_differences(engine) == []
    put_a_ticket(engine)
    assert_ticket_kept(engine)


# -- databases made before migrations --------------------------------------------------


def test_old_create_all_database_is_stamped_and_keeps_its_rows(engine):
    create_all_as_before(engine)
    put_a_ticket(engine)
    assert "alembic_version" not in table_names(engine)
    done = schema.upgrade(engine)
    assert done.stamped and (done.before, done.after) == (None, schema.HEAD)
    assert_ticket_kept(engine)
    assert alembic_differences(engine) == []
    with Session(engine) as session:
        assert len(session.exec(select(Counter)).all()) == 3
    # The next start-up has nothing to do.
    assert schema.upgrade(engine) == schema.Migration(schema.HEAD, schema.HEAD, False)


def test_old_database_that_is_not_the_baseline_is_refused(engine):
    create_all_as_before(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_ticket_number")
    with pytest.raises(schema.SchemaError) as caught:
        init_db(engine)
    message = str(caught.value)
    assert "differ from the baseline revision 0001" in message
    assert "index ix_ticket_number on ticket (number): in the models only" in message
    # Nothing stamped: the refusal rolled back.
    assert "alembic_version" not in table_names(engine)


# -- newer and older revisions ---------------------------------------------------------


def test_a_newer_database_stops_start_up(engine, tmp_path, database_url):
    init_db(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042'"))
    with pytest.raises(schema.SchemaError) as caught:
        init_db(engine)
    assert "revision 0042" in str(caught.value) and f"its newest is {schema.HEAD}" in str(caught.value)
    # As an operator sees it: a message naming both revisions, no traceback, exit 1.
    write_config(tmp_path, f'[database]\nurl = "{database_url}"\n[smtp]\nport = {free_port()}\n')
    for command in (["serve"], ["ticket", "list"], ["db", "upgrade"]):
        proc = run_gateway(*command, cwd=tmp_path, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1, command
        assert "gateway: database:" in err and "revision 0042" in err and f"its newest is {schema.HEAD}" in err
        assert "Traceback" not in err
    assert schema.stored_revision(engine) == "0042"


# The revision after the newest shipped one (store.schema.HEAD), written into a copy.
NEXT = f"{int(schema.HEAD) + 1:04d}"
LATER_REVISION = f'''
"""ticket priority: a later migration, as one would be written

Revision ID: {NEXT}
Revises: {schema.HEAD}
"""
from alembic import op
import sqlalchemy as sa

revision = "{NEXT}"
down_revision = "{schema.HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ticket is referred to by statuschange, outbox, ticketmessage and itself: on SQLite
    # batch mode copies it, drops the old one and renames the copy.
    with op.batch_alter_table("ticket") as batch:
        batch.add_column(sa.Column("priority", sa.String(), nullable=False, server_default="normal"))
        batch.alter_column("title", existing_type=sa.String(), type_=sa.Text(), existing_nullable=False)
        batch.create_index("ix_ticket_priority", ["priority"])


def downgrade() -> None:
    with op.batch_alter_table("ticket") as batch:
        batch.drop_index("ix_ticket_priority")
        batch.alter_column("title", existing_type=sa.Text(), type_=sa.String(), existing_nullable=False)
        batch.drop_column("priority")
'''


def test_a_later_revision_upgrades_an_older_database(engine, tmp_path):
    """A database at the head with rows, and code that has a next revision changing a table others
    refer to: the upgrade keeps the rows and their links, and can be undone."""
    scripts = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / f"{NEXT}_ticket_priority.py").write_text(textwrap.dedent(LATER_REVISION))
    init_db(engine)
    put_a_ticket(engine)

    done = schema.upgrade(engine, scripts=scripts)
    assert (done.before, done.after) == (schema.HEAD, NEXT)
    with engine.connect() as conn:
        columns = {c["name"]: c for c in inspect(conn).get_columns("ticket")}
        assert "priority" in columns
        assert "ix_ticket_priority" in {i["name"] for i in inspect(conn).get_indexes("ticket")}
        # The old indexes and foreign keys came through the copy.
        assert {"ix_ticket_number", "ix_ticket_reporting_person_id"} <= {
            i["name"] for i in inspect(conn).get_indexes("ticket")}
        assert {fk["referred_table"] for fk in inspect(conn).get_foreign_keys("ticket")} == {"person", "ticket"}
        assert conn.execute(text("SELECT number, priority FROM ticket")).all() == [("INC-000001", "normal")]
        # The status change still points at its ticket.
        assert conn.execute(text("SELECT t.number FROM statuschange s JOIN ticket t ON t.id = s.ticket_id")
                            ).all() == [("INC-000001",)]
    assert_ticket_kept(engine)
    # Foreign keys are on again for the gateway's connections after the migration.
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

    down = schema.downgrade(engine, "-1", scripts=scripts)
    assert (down.before, down.after) == (NEXT, schema.HEAD)
    assert alembic_differences(engine) == []
    assert_ticket_kept(engine)


# -- start-up --------------------------------------------------------------------------


def test_start_up_at_head_is_one_query(engine):
    init_db(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: statements.append(statement))
    init_db(engine)
    assert [s for s in statements if not s.startswith("BEGIN")] == ["SELECT version_num FROM alembic_version"]


def test_start_up_at_head_does_not_load_alembic(tmp_path):
    """Alembic's import costs a start-up about 0.15 s: `gateway ingest` must not pay it
    when the database is already at head."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    code = textwrap.dedent(f"""
        import sys
        from store.db import make_engine, init_db
        engine = make_engine({url!r})
        init_db(engine)
        first = 'alembic' in sys.modules
        for name in [m for m in sys.modules if m == 'alembic' or m.startswith('alembic.')]:
            del sys.modules[name]
        init_db(make_engine({url!r}))
        print(first, 'alembic' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def _init_in_a_process(url: str, go, results) -> None:
    engine = make_engine(url)
    go.wait(30)
    try:
        init_db(engine)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


@pytest.mark.parametrize("fresh", [True, False], ids=["empty", "old-create-all"])
def test_processes_starting_at_once(database_url, fresh):
    """The door and its workers start together on a new (or an old) database: one
    upgrades, the others wait for it and find the work done."""
    if not fresh:
        old = make_engine(database_url)
        create_all_as_before(old)
        old.dispose()
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    processes = [ctx.Process(target=_init_in_a_process, args=(database_url, go, results)) for _ in range(4)]
    for p in processes:
        p.start()
    go.set()
    outcomes = [results.get(timeout=60) for _ in processes]
    for p in processes:
        p.join(30)
    assert outcomes == ["ok"] * 4
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(schema.HEAD,)]
            assert conn.execute(text("SELECT count(*) FROM counter")).scalar() == 3
        assert alembic_differences(engine) == []
    finally:
        engine.dispose()


# -- gateway db ------------------------------------------------------------------------


def test_db_commands(tmp_path, database_url):
    write_config(tmp_path, f'[database]\nurl = "{database_url}"\n')

    def gateway(*args, check=True):
        return run_gateway("db", *args, cwd=tmp_path, check=check)

    assert json.loads(gateway("current", "--json").stdout) == {"revision": None, "head": schema.HEAD,
                                                                 "tables": False}
    proc = gateway("check", check=False)
    assert proc.returncode == 1 and b"no revision: empty database" in proc.stdout
    assert gateway("upgrade").stdout.decode() == f"upgraded from an empty database to {schema.HEAD}\n"
    assert gateway("upgrade").stdout.decode() == f"at {schema.HEAD} (head): nothing to upgrade\n"
    assert gateway("current").stdout.decode() == f"{schema.HEAD} (head)\n"
    assert gateway("check").stdout.decode() == f"the database matches the models (revision {schema.HEAD}, head)\n"

    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_inboundmessage_state")
    finally:
        engine.dispose()
    proc = gateway("check", check=False)
    assert proc.returncode == 1
    assert proc.stdout.decode().splitlines() == [
        "the database and the models disagree:",
        "  - index ix_inboundmessage_state on inboundmessage (state): in the models only",
    ]


def test_db_downgrade_takes_the_schema_back_for_an_older_version(tmp_path, database_url):
    """Before going back to an older gateway: its revision, the rows kept; that version
    starts on it (here: the revisions up to it), and the newer one upgrades it again."""
    write_config(tmp_path, f'[database]\nurl = "{database_url}"\n')

    def gateway(*args, check=True):
        return run_gateway("db", *args, cwd=tmp_path, check=check)

    gateway("upgrade")
    engine = make_engine(database_url)
    try:
        put_a_ticket(engine)
    finally:
        engine.dispose()
    for wrong, says in [("base", "is not a revision"), (schema.HEAD, "is not an older revision"),
                        ("9999", "is not an older revision"), ("0000", "the oldest revision is")]:
        proc = gateway("downgrade", wrong, check=False)
        assert proc.returncode != 0 and says.encode() in proc.stderr, (wrong, proc.stderr)
    assert gateway("current").stdout.decode() == f"{schema.HEAD} (head)\n"

    assert gateway("downgrade", schema.BASELINE).stdout.decode() == \
        f"downgraded from {schema.HEAD} to {schema.BASELINE}\n"
    assert json.loads(gateway("current", "--json").stdout)["revision"] == schema.BASELINE
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:  # the baseline's tables, exactly (an older version's check)
            assert schema._compare(conn, schema.script_directory(schema.alembic_config(conn, schema.MIGRATIONS_DIR))
                                   .get_revision(schema.BASELINE).module.tables()) == []
        assert_ticket_kept(engine)
    finally:
        engine.dispose()
    proc = gateway("downgrade", schema.BASELINE, check=False)
    assert proc.returncode != 0 and b"is not an older revision" in proc.stderr
    assert gateway("upgrade").stdout.decode() == f"upgraded from {schema.BASELINE} to {schema.HEAD}\n"
    assert gateway("check").returncode == 0


def test_db_upgrade_stamps_an_old_database(tmp_path):
    write_config(tmp_path, "")
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")
    try:
        create_all_as_before(engine)
        put_a_ticket(engine)
    finally:
        engine.dispose()
    out = run_gateway("db", "current", cwd=tmp_path).stdout.decode()
    assert out.startswith("no revision: tables made before migrations")
    out = run_gateway("db", "upgrade", cwd=tmp_path).stdout.decode()
    assert out == f"the tables made before migrations are the baseline's: stamped {schema.BASELINE}\n" + (
        f"at {schema.HEAD} (head): nothing to upgrade\n" if schema.HEAD == schema.BASELINE
        else f"upgraded from {schema.BASELINE} to {schema.HEAD}\n")
    tickets = json.loads(run_gateway("ticket", "list", "--json", cwd=tmp_path).stdout)
    assert [t["number"] for t in tickets] == ["INC-000001"]


def test_db_revision_writes_the_next_numbered_file(tmp_path, monkeypatch, capsys):
    """For developers: the file comes numbered after the head, revising it; with
    --autogenerate and models that match the database, it has nothing to do."""
    from gateway.cli import main

    scripts = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(schema, "MIGRATIONS_DIR", scripts)
    config = write_config(tmp_path, "")
    assert main(["--config", str(config), "db", "revision", "-m", "ticket priority", "--autogenerate"]) == 1
    assert f"must be at {schema.HEAD} first" in capsys.readouterr().err
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert main(["--config", str(config), "db", "revision", "-m", "ticket priority", "--autogenerate"]) == 0
    written = scripts / "versions" / f"{NEXT}_ticket_priority.py"
    assert f"wrote {written}" in capsys.readouterr().out
    source = written.read_text()
    assert f"revision = '{NEXT}'" in source and f"down_revision = '{schema.HEAD}'" in source
    # The models and the database agree: nothing to generate.
    assert source.split("def upgrade() -> None:")[1].split("def downgrade")[0].count("pass") == 1
    assert "op." not in source.split("def upgrade() -> None:")[1]
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")
    try:
        assert schema.upgrade(engine, scripts=scripts) == schema.Migration(schema.HEAD, NEXT, False)
    finally:
        engine.dispose()

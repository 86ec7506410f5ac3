"""What /metrics reads at every scrape (gateway.health) never reads a whole table: each
query on SQLite's planner uses an index, or reads the newest rows by primary key and
stops (a LIMIT)."""

from __future__ import annotations

from sqlalchemy import event, text

from gateway import health
from harness.ingest import make_app
from store.db import reader
from store.models import utcnow


def test_a_scrape_reads_indexes_only(tmp_path):
    app = make_app(tmp_path, '[[mailboxes]]\nname = "desk"\nhost = "127.0.0.1"\nuser = "desk"\n'
                             'password_env = "DESK_PASSWORD"\n')
    statements: list[tuple[str, tuple]] = []

    def seen(_conn, _cursor, statement, parameters, _context, _many):
        statements.append((statement, parameters))

    event.listen(app.engine, "before_cursor_execute", seen)
    now = utcnow()
    with reader(app.engine) as session:
        health.inbound_figures(session, now)
        health.outbox_figures(session, now, now)
        health.relay_figures(session, 3)
        health.processes(session, now, 10)
        health.mailbox_polls(session, ["desk"])
    event.remove(app.engine, "before_cursor_execute", seen)
    small = ("serviceprocess", "mailboxpoll")  # a row a process, a row a mailbox
    assert len(statements) >= 12
    with app.engine.connect() as conn:
        for statement, parameters in statements:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            for step in plan:
                full = step.startswith("SCAN ") and " INDEX " not in step
                if full and not step.split()[1] in small:
                    assert "ORDER BY" in statement and "LIMIT" in statement, (statement, plan)
    app.engine.dispose()

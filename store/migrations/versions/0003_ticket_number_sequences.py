"""ticket numbers from sequences on PostgreSQL: no row lock held until the commit

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A ticket's number was the counter row of its process, updated in the mail's
transaction: the row stayed locked until the commit, so a second worker opening a
ticket waited for the first one's whole transaction, and workers could not take several
mails a transaction.  On PostgreSQL each process now has a sequence,
``ticket_number_<process>``, started where its counter stood; ``nextval`` holds no lock.
The price is a gap: a number taken by a transaction that is rolled back is not used
again (a number is still never given twice).  SQLite has one writer at a time and
keeps the counter table, gapless.  On PostgreSQL the counter rows stay as they were at
this upgrade; the downgrade writes the sequences' last values back into them (the
larger of the two).
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PROCESSES = ("incident", "service-request", "change")


def sequence_name(process: str) -> str:
    return "ticket_number_" + process.replace("-", "_")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for process in PROCESSES:
        name = sequence_name(process)
        last = bind.execute(sa.text("SELECT value FROM counter WHERE process = :p"), {"p": process}).scalar() or 0
        op.execute(f"CREATE SEQUENCE {name} AS bigint MINVALUE 1")
        if last > 0:  # the next nextval gives last + 1
            bind.execute(sa.text("SELECT setval(CAST(:s AS regclass), :v, true)"), {"s": name, "v": last})


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for process in PROCESSES:
        name = sequence_name(process)
        last, called = bind.execute(sa.text(f"SELECT last_value, is_called FROM {name}")).one()
        # The larger of the two: a number is never given twice, whichever wrote last.
        bind.execute(sa.text("UPDATE counter SET value = GREATEST(value, :v) WHERE process = :p"),
                     {"v": last if called else 0, "p": process})
        op.execute(f"DROP SEQUENCE {name}")

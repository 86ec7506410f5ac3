"""faults of the surroundings wait; a mail that kills its worker is counted

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

A stored mail whose processing failed for a reason of the gateway's surroundings (a
full disk, a database that does not answer, a lock held too long) is not counted
toward quarantine: it waits until ``not_before`` (``waits``: how many times it did, the
delay grows with it; gateway.ingest.faults).  ``deaths``: how many times a worker died
while holding this mail alone; past ``[limits] max_worker_deaths`` it is quarantined.
"""
from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inboundmessage") as batch:
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("waits", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("deaths", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("inboundmessage") as batch:
        batch.drop_column("deaths")
        batch.drop_column("waits")
        batch.drop_column("not_before")

"""the audit log: who changed what, when

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

The HTTP API, the admin console and the customer pages change tickets, people,
templates and tokens for someone; each write leaves an entry (store.audit) in the
transaction of the change.  A new table only.
"""
from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auditentry",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("client", sa.String(), nullable=False),
    )
    op.create_index("ix_auditentry_at", "auditentry", ["at"])
    op.create_index("ix_auditentry_actor", "auditentry", ["actor"])
    op.create_index("ix_auditentry_target", "auditentry", ["target"])


def downgrade() -> None:
    op.drop_index("ix_auditentry_target", table_name="auditentry")
    op.drop_index("ix_auditentry_actor", table_name="auditentry")
    op.drop_index("ix_auditentry_at", table_name="auditentry")
    op.drop_table("auditentry")

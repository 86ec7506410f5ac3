"""heartbeats of the service's processes, mailbox polls, the quarantine's index

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

``gateway status`` could not tell a running service from a stopped one, nor a mailbox
whose every login failed from a quiet one (issue 16).  ``serviceprocess`` holds a row
per process of each running ``gateway serve`` (host, pid, the instance it belongs to,
role, version, started, last seen), refreshed by a heartbeat; ``mailboxpoll`` the last
poll of each mailbox that worked and the last that failed.  An index on inboundmessage
(state, processed_at) lets status and every /metrics scrape count the quarantine and
its last day without reading the quarantined rows.  New tables and an index only.
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "serviceprocess",
        sa.Column("id", sa.Integer(), nullable=False, primary_key=True),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("instance", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("started_at", when, nullable=False),
        sa.Column("last_seen", when, nullable=False),
        sa.Column("stopped_at", when, nullable=True),
        sa.Column("exit_reason", sa.String(), nullable=True),
        sa.UniqueConstraint("host", "pid", name="uq_serviceprocess_host_pid"),
    )
    op.create_index("ix_serviceprocess_instance", "serviceprocess", ["instance"])
    op.create_table(
        "mailboxpoll",
        sa.Column("mailbox", sa.String(), nullable=False, primary_key=True),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("last_success_at", when, nullable=True),
        sa.Column("last_failure_at", when, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_inboundmessage_state_processed_at", "inboundmessage", ["state", "processed_at"])


def downgrade() -> None:
    op.drop_index("ix_inboundmessage_state_processed_at", table_name="inboundmessage")
    op.drop_table("mailboxpoll")
    op.drop_index("ix_serviceprocess_instance", table_name="serviceprocess")
    op.drop_table("serviceprocess")

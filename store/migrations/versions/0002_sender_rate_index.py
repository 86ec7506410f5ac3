"""the rate limit's index: a sender's recent mails found without reading every message

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Processor.over_rate counts a sender's mails of the last rate_window seconds for every
mail it processes; without an index on (from_addr, created_at) that count read the whole
ticketmessage table, a cost that grew with the store (EXPLAIN: SCAN ticketmessage).  An
index only: no table is rewritten, on SQLite or PostgreSQL.
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ticketmessage_from_addr_created_at", "ticketmessage", ["from_addr", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ticketmessage_from_addr_created_at", table_name="ticketmessage")

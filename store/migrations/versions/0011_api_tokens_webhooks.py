"""API tokens and webhook events

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

The HTTP API (/api/v1) accepts tokens made by ``gateway tokens create``: the table
keeps each token's SHA-256, never the token.  Webhook events are queued in the
transaction of the change they tell about and delivered by the deliverer (store.webhooks).
Two new tables only.
"""
from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apitoken",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_apitoken_name", "apitoken", ["name"], unique=True)
    op.create_index("ix_apitoken_token_hash", "apitoken", ["token_hash"], unique=True)
    op.create_table(
        "webhookevent",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_answer", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_webhookevent_event_id", "webhookevent", ["event_id"], unique=True)
    op.create_index("ix_webhookevent_state", "webhookevent", ["state"])
    op.create_index("ix_webhookevent_next_attempt_at", "webhookevent", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_webhookevent_next_attempt_at", table_name="webhookevent")
    op.drop_index("ix_webhookevent_state", table_name="webhookevent")
    op.drop_index("ix_webhookevent_event_id", table_name="webhookevent")
    op.drop_table("webhookevent")
    op.drop_index("ix_apitoken_token_hash", table_name="apitoken")
    op.drop_index("ix_apitoken_name", table_name="apitoken")
    op.drop_table("apitoken")

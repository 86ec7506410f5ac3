"""several instances: blobs in the database, leases, single-use approval decisions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Several ``gateway serve`` on several hosts share one PostgreSQL and nothing else (issue
19): raw mails and attachments may live in the database (blob, blobchunk; ``[store]
blobs = "database"``), the closer and each IMAP mailbox have one holder at a time (lease),
an approval request is decided once (approvaldecision), and a notification whose end the
relay was given is not sent again by another deliverer (outbox.handed_at).
"""
from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "blob",
        sa.Column("sha256", sa.String(), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", when, nullable=False),
    )
    op.create_table(
        "blobchunk",
        sa.Column("sha256", sa.String(), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "lease",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("expires_at", when, nullable=False),
    )
    op.create_table(
        "approvaldecision",
        sa.Column("ticket_id", sa.Integer(), sa.ForeignKey("ticket.id"), primary_key=True),
        sa.Column("request", sa.Integer(), primary_key=True),
        sa.Column("decision", sa.String(), nullable=False),
        sa.Column("inbound_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", when, nullable=False),
    )
    op.add_column("outbox", sa.Column("handed_at", when, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("handed_at")
    op.drop_table("approvaldecision")
    op.drop_table("lease")
    op.drop_table("blobchunk")
    op.drop_table("blob")

"""the door's client (address, HELO) and the gateway's own verdict on each stored mail

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

The gateway checks SPF, DKIM and DMARC itself when no MTA in front does (issue 25): SPF
needs the connecting address and the HELO name the door saw, which the inbound row
keeps beside MAIL FROM; the outcome, the gateway's own Authentication-Results header,
is kept on the row so that a mail processed again (``gateway inbound reprocess``) is
judged as it was received, not by the DNS of a later day.  New columns only.
"""
from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inboundmessage") as batch:
        batch.add_column(sa.Column("peer", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("helo", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("authentication", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inboundmessage") as batch:
        batch.drop_column("authentication")
        batch.drop_column("helo")
        batch.drop_column("peer")

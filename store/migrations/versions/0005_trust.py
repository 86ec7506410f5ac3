"""who may join a thread, and the secret the gateway makes itself

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

- ``ticketmessage.authenticated``: our MTA's Authentication-Results said dmarc=pass for
  the mail.  Only such a mail's To and Cc may become people of its ticket's thread
  (gateway.ingest.threading.permission); the mails stored before know nothing of it and
  are false, so their To and Cc no longer grant anything (their senders still do).
- ``secret``: the reply-address secret made at the first start when [gateway] secret is
  not set, on PostgreSQL, where several instances must share it (gateway.secret).  On
  SQLite it is a file of the data folder instead, and the table stays empty.

The downgrade drops both; a secret made in the table is lost with it, so the older
version must be given one in [gateway] secret.
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ticketmessage") as batch:
        batch.add_column(sa.Column("authenticated", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "secret",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("secret")
    with op.batch_alter_table("ticketmessage") as batch:
        batch.drop_column("authenticated")

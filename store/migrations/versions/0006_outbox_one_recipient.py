"""the outbox: one row a recipient, rendered by the deliverer

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Until now a notification was one row for its recipients, joined by commas in
``recipients``, and split again when sent: a legal address whose quoted local part holds
commas ("x,victim@victim.test"@evil.test) became several envelope recipients.  A row is
now one copy for one recipient (``recipient``, a checked addr-spec), and what the mail
says is kept as data (``context``, ``thread_ids``, ``in_reply_to``, ``auto_submitted``),
rendered by the deliverer into ``raw`` before its first attempt; ``claimed_by`` and
``claimed_until`` let several deliverers share the outbox.

Rows already written keep their bytes: a row for several recipients becomes one row a
recipient with the same bytes (the later ones new rows, with the attempts so far copied;
the attempt log stays with the first).  The downgrade joins nothing back (each copy stays
a row of its own) and refuses while a row waits to be rendered: deliver it first
(``gateway outbox flush``), since the older code cannot render it.
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_OLD = ("ticket_id", "event", "language", "subject", "message_id", "raw", "state", "attempts",
        "next_attempt_at", "last_answer", "created_at", "sent_at")


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("recipient", sa.String(), nullable=True))
        batch.add_column(sa.Column("recipient_name", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("person_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("in_reply_to", sa.String(), nullable=True))
        batch.add_column(sa.Column("thread_ids", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("auto_submitted", sa.String(), nullable=False, server_default="auto-generated"))
        batch.add_column(sa.Column("context", sa.Text(), nullable=True))
        batch.add_column(sa.Column("approval_request", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.String(), nullable=True))
        batch.add_column(sa.Column("claimed_until", when, nullable=True))
        batch.alter_column("raw", existing_type=sa.LargeBinary(), nullable=True)
    bind = op.get_bind()
    outbox = sa.table("outbox", sa.column("id", sa.Integer()), sa.column("recipients", sa.String()),
                      sa.column("recipient", sa.String()), sa.column("approval_request", sa.Integer()),
                      *(sa.column(c) for c in _OLD))
    rows = bind.execute(sa.select(outbox).order_by(outbox.c.id)).mappings().all()
    requests: dict[int, int] = {}  # ticket -> approval requests so far
    for row in rows:
        request = None
        if row["event"] == "approval" and row["ticket_id"] is not None:
            request = requests[row["ticket_id"]] = requests.get(row["ticket_id"], 0) + 1
        addresses = [a for a in (row["recipients"] or "").split(",") if a] or [""]
        bind.execute(sa.update(outbox).where(outbox.c.id == row["id"])
                     .values(recipient=addresses[0], approval_request=request))
        for address in addresses[1:]:
            bind.execute(sa.insert(outbox).values(recipient=address, recipients="", approval_request=request,
                                                  **{c: row[c] for c in _OLD}))
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("recipient", existing_type=sa.String(), nullable=False)
        batch.alter_column("recipient_name", server_default=None, existing_type=sa.String())
        batch.alter_column("thread_ids", server_default=None, existing_type=sa.Text())
        batch.alter_column("auto_submitted", server_default=None, existing_type=sa.String())
        batch.drop_column("recipients")
        batch.create_index("ix_outbox_recipient", ["recipient"])
        batch.create_foreign_key("fk_outbox_person_id", "person", ["person_id"], ["id"])


def downgrade() -> None:
    bind = op.get_bind()
    waiting = bind.execute(sa.text("SELECT count(*) FROM outbox WHERE raw IS NULL")).scalar()
    if waiting:
        raise RuntimeError(f"{waiting} notification(s) wait to be rendered, which the older version cannot do: "
                           f"deliver them first (gateway outbox flush), then downgrade")
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("recipients", sa.String(), nullable=False, server_default=""))
    bind.execute(sa.text("UPDATE outbox SET recipients = recipient"))
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("recipients", server_default=None, existing_type=sa.String())
        batch.drop_constraint("fk_outbox_person_id", type_="foreignkey")
        batch.drop_index("ix_outbox_recipient")
        for name in ("recipient", "recipient_name", "person_id", "in_reply_to", "thread_ids", "auto_submitted",
                     "context", "approval_request", "claimed_by", "claimed_until"):
            batch.drop_column(name)
        batch.alter_column("raw", existing_type=sa.LargeBinary(), nullable=False)

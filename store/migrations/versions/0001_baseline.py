"""baseline: the tables as the gateway made them before it had migrations

Revision ID: 0001
Revises:
Create Date: 2026-11-28

The schema is frozen here as it stood (SQLModel's create_all of store/models.py at that
time), not imported from the models: later revisions change the models, and this one
must keep creating the same tables.  store.schema also compares a database made by the
old create_all against ``tables()`` before stamping it with this revision.
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PROCESSES = ("incident", "service-request", "change")


def tables() -> sa.MetaData:
    """The baseline schema: every table, index and unique constraint."""
    m = sa.MetaData()
    text, string, integer, boolean = sa.Text(), sa.String(), sa.Integer(), sa.Boolean()
    when = sa.DateTime(timezone=True)

    def col(name, type_, nullable=False, **kw):
        return sa.Column(name, type_, nullable=nullable, **kw)

    sa.Table("counter", m, col("process", string, primary_key=True), col("value", integer))
    sa.Table("company", m, col("name", string, primary_key=True), col("language", string))
    sa.Table(
        "person", m,
        col("id", integer, primary_key=True),
        col("email", string),
        col("name", string),
        col("language", string),
        col("company", string),
        col("company_access", boolean),
        col("timezone", string),
        col("hard_bounces", integer),
        col("undeliverable", boolean),
        col("created_at", when),
        sa.Index("ix_person_email", "email", unique=True),
        sa.Index("ix_person_company", "company"),
    )
    sa.Table(
        "ticket", m,
        col("id", integer, primary_key=True),
        col("number", string),
        col("process", string),
        col("status", string),
        col("waiting_reason", string, True),
        col("title", string),
        col("description", text),
        col("personal_reference", string, True),
        col("reference_source", string, True),
        col("reporting_person_id", integer),
        col("affected_person_id", integer),
        col("status_reason", text, True),
        col("appointment_at", when, True),
        col("appointment_place", string, True),
        col("solution", text, True),
        col("approval_text", text, True),
        col("solved_at", when, True),
        col("linked_ticket_id", integer, True),
        col("created_at", when),
        col("updated_at", when),
        sa.ForeignKeyConstraint(["reporting_person_id"], ["person.id"]),
        sa.ForeignKeyConstraint(["affected_person_id"], ["person.id"]),
        sa.ForeignKeyConstraint(["linked_ticket_id"], ["ticket.id"]),
        sa.Index("ix_ticket_number", "number", unique=True),
        sa.Index("ix_ticket_personal_reference", "personal_reference"),
        sa.Index("ix_ticket_reporting_person_id", "reporting_person_id"),
        sa.Index("ix_ticket_affected_person_id", "affected_person_id"),
    )
    sa.Table(
        "statuschange", m,
        col("id", integer, primary_key=True),
        col("ticket_id", integer),
        col("at", when),
        col("from_status", string, True),
        col("to_status", string),
        col("by", string),
        col("note", text, True),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"]),
        sa.Index("ix_statuschange_ticket_id", "ticket_id"),
    )
    sa.Table(
        "inboundmessage", m,
        col("id", integer, primary_key=True),
        col("received_at", when),
        col("source", string),
        col("mail_from", string),
        col("rcpt_to", string),
        col("process", string, True),
        col("message_id", string),
        col("sha256", string),
        col("size", integer),
        col("state", string),
        col("outcome", string, True),
        col("ticket_number", string, True),
        col("detail", text, True),
        col("attempts", integer),
        col("processed_at", when, True),
        sa.UniqueConstraint("message_id", "sha256", name="uq_inbound_mid_sha"),
        sa.Index("ix_inboundmessage_message_id", "message_id"),
        sa.Index("ix_inboundmessage_state", "state"),
    )
    sa.Table(
        "outbox", m,
        col("id", integer, primary_key=True),
        col("ticket_id", integer, True),
        col("event", string),
        col("recipients", string),
        col("language", string),
        col("subject", string),
        col("message_id", string),
        col("raw", sa.LargeBinary()),
        col("state", string),
        col("attempts", integer),
        col("next_attempt_at", when),
        col("last_answer", text, True),
        col("created_at", when),
        col("sent_at", when, True),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"]),
        sa.Index("ix_outbox_ticket_id", "ticket_id"),
        sa.Index("ix_outbox_message_id", "message_id"),
        sa.Index("ix_outbox_state", "state"),
        sa.Index("ix_outbox_next_attempt_at", "next_attempt_at"),
    )
    sa.Table(
        "ticketmessage", m,
        col("id", integer, primary_key=True),
        col("ticket_id", integer),
        col("direction", string),
        col("internal", boolean),
        col("from_addr", string),
        col("to_addrs", string),
        col("cc_addrs", string),
        col("subject", string),
        col("body_text", text),
        col("body_full", text, True),
        col("body_html", text, True),
        col("message_id", string, True),
        col("inbound_id", integer, True),
        col("outbox_id", integer, True),
        col("created_at", when),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"]),
        sa.ForeignKeyConstraint(["inbound_id"], ["inboundmessage.id"]),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"]),
        sa.Index("ix_ticketmessage_ticket_id", "ticket_id"),
        sa.Index("ix_ticketmessage_message_id", "message_id"),
    )
    sa.Table(
        "attachment", m,
        col("id", integer, primary_key=True),
        col("message_id", integer),
        col("filename", string),
        col("content_type", string),
        col("size", integer),
        col("sha256", string),
        col("inline", boolean),
        col("content_id", string, True),
        sa.ForeignKeyConstraint(["message_id"], ["ticketmessage.id"]),
        sa.Index("ix_attachment_message_id", "message_id"),
    )
    sa.Table(
        "deliveryattempt", m,
        col("id", integer, primary_key=True),
        col("outbox_id", integer),
        col("at", when),
        col("outcome", string),
        col("answer", text),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"]),
        sa.Index("ix_deliveryattempt_outbox_id", "outbox_id"),
    )
    return m


def upgrade() -> None:
    schema = tables()
    schema.create_all(op.get_bind(), checkfirst=False)
    # The ticket number counters, one per process, as the old init_db made them.
    op.bulk_insert(schema.tables["counter"], [{"process": p, "value": 0} for p in PROCESSES])


def downgrade() -> None:
    tables().drop_all(op.get_bind(), checkfirst=False)

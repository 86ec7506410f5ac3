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

    def col(name, type_, **kw):  # NOT NULL, as SQLModel makes every field that is not Optional
        return sa.Column(name, type_, nullable=False, **kw)

    def null(name, type_):
        return sa.Column(name, type_, nullable=True)

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
        null("waiting_reason", string),
        col("title", string),
        col("description", text),
        null("personal_reference", string),
        null("reference_source", string),
        col("reporting_person_id", integer),
        col("affected_person_id", integer),
        null("status_reason", text),
        null("appointment_at", when),
        null("appointment_place", string),
        null("solution", text),
        null("approval_text", text),
        null("solved_at", when),
        null("linked_ticket_id", integer),
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
        null("from_status", string),
        col("to_status", string),
        col("by", string),
        null("note", text),
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
        null("process", string),
        col("message_id", string),
        col("sha256", string),
        col("size", integer),
        col("state", string),
        null("outcome", string),
        null("ticket_number", string),
        null("detail", text),
        col("attempts", integer),
        null("processed_at", when),
        sa.UniqueConstraint("message_id", "sha256", name="uq_inbound_mid_sha"),
        sa.Index("ix_inboundmessage_message_id", "message_id"),
        sa.Index("ix_inboundmessage_state", "state"),
    )
    sa.Table(
        "outbox", m,
        col("id", integer, primary_key=True),
        null("ticket_id", integer),
        col("event", string),
        col("recipients", string),
        col("language", string),
        col("subject", string),
        col("message_id", string),
        col("raw", sa.LargeBinary()),
        col("state", string),
        col("attempts", integer),
        col("next_attempt_at", when),
        null("last_answer", text),
        col("created_at", when),
        null("sent_at", when),
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
        null("body_full", text),
        null("body_html", text),
        null("message_id", string),
        null("inbound_id", integer),
        null("outbox_id", integer),
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
        null("content_id", string),
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

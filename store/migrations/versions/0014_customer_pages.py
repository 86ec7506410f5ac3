"""the customers' pages: sign-in links, grants, assessments

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

Customers sign in by a link sent by mail (single use, short-lived: its hash is kept,
with who asked from where, for the rate limits), see the tickets of the companies an
operator granted them, and assess a Solved ticket.  New tables only.
"""
from alembic import op
import sqlalchemy as sa

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signintoken",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(), nullable=False, unique=True),
        sa.Column("email", sa.String(), nullable=False),
        sa.Column("person_id", sa.Integer(), sa.ForeignKey("person.id"), nullable=True),
        sa.Column("client", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_signintoken_email_created_at", "signintoken", ["email", "created_at"])
    op.create_index("ix_signintoken_client_created_at", "signintoken", ["client", "created_at"])
    op.create_table(
        "portalgrant",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("person_id", sa.Integer(), sa.ForeignKey("person.id"), nullable=False),
        sa.Column("company", sa.String(), nullable=False),
        sa.Column("granted_by", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("person_id", "company", name="uq_portalgrant_person_company"),
    )
    op.create_index("ix_portalgrant_person_id", "portalgrant", ["person_id"])
    op.create_table(
        "assessment",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ticket_id", sa.Integer(), sa.ForeignKey("ticket.id"), nullable=False),
        sa.Column("person_id", sa.Integer(), sa.ForeignKey("person.id"), nullable=False),
        sa.Column("solved", sa.Boolean(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_assessment_ticket_id", "assessment", ["ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_assessment_ticket_id", table_name="assessment")
    op.drop_table("assessment")
    op.drop_index("ix_portalgrant_person_id", table_name="portalgrant")
    op.drop_table("portalgrant")
    op.drop_index("ix_signintoken_client_created_at", table_name="signintoken")
    op.drop_index("ix_signintoken_email_created_at", table_name="signintoken")
    op.drop_table("signintoken")

"""The admin console's accounts and sessions (issue 23).

``adminuser``: who may sign in to /admin, with an argon2 hash of the password and the
failed sign-ins that lock the account for a while; ``adminsession``: the signed-in
sessions (the SHA-256 of the cookie's token), read by every instance, ended on sign-out.

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "adminuser",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", when, nullable=True),
        sa.Column("created_at", when, nullable=False),
    )
    op.create_table(
        "adminsession",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(), nullable=False, unique=True),
        sa.Column("admin_id", sa.Integer(), sa.ForeignKey("adminuser.id"), nullable=False),
        sa.Column("csrf", sa.String(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
        sa.Column("ended_at", when, nullable=True),
        sa.Column("client", sa.String(), nullable=False),
    )
    op.create_index("ix_adminsession_admin_id", "adminsession", ["admin_id"])


def downgrade() -> None:
    op.drop_index("ix_adminsession_admin_id", table_name="adminsession")
    op.drop_table("adminsession")
    op.drop_table("adminuser")

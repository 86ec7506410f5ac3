"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Written for SQLite and PostgreSQL: on SQLite, change existing tables inside
``with op.batch_alter_table(...)`` (SQLite's ALTER TABLE cannot do most changes; batch
mode copies the table).  When this is the new head, set store.schema.HEAD to its revision.
"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}

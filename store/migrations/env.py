"""Alembic's environment for the gateway.  It is run by store.schema (and so by
``gateway db`` and every start-up), which hands it an open connection in
``config.attributes["connection"]``: the database URL comes from the gateway's own
configuration, and there is no alembic.ini."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from store import models  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata


def include_name(name, type_, parent_names) -> bool:
    """Only the gateway's own tables: a shared PostgreSQL schema may hold others."""
    if type_ == "table":
        return name in target_metadata.tables
    return True


def render_item(type_, obj, autogen_context):
    """Render SQLModel's column types as plain SQLAlchemy ones, so that a revision does
    not depend on SQLModel's internals (AutoString is VARCHAR, UTCDateTime a DateTime
    with time zone)."""
    if type_ == "type" and isinstance(obj, AutoString):
        return "sa.String()"
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection: sa.Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through store.schema or `gateway db`, which supply the connection")

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    include_name=include_name,
    render_item=render_item,
    compare_type=True,
    # SQLite's ALTER TABLE cannot drop or change a column: batch mode copies the table.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

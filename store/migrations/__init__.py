"""The Alembic migration environment of the gateway's database (see store.schema)."""

"""Alembic environment: runs on the connection the store hands over (see store.database.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from store.schema import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("store migrations run through store.database.migrate(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

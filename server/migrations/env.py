"""Alembic environment: migrations run on the connection ``evr.db.migrate`` passes in."""

from alembic import context

from evr.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations through `evr serve` or evr.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic's entry point, run by ``alembic.command``: migrations run on the connection the caller passes in
``config.attributes["connection"]`` (``deepgrad_server.migrations.migrate`` holds the lock and the transaction).
Without one (a developer's ``command.revision(..., autogenerate=True)``) it connects to ``sqlalchemy.url``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from deepgrad_server.models import Base

config = context.config


def run(connection: Connection) -> None:
    # SQLite alters most things only by copying a table: batch mode writes those copies.
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():  # a no-op inside the caller's transaction
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported: the baseline inspects the database")
if (given := config.attributes.get("connection")) is not None:
    run(given)
else:
    with create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool).connect() as connection:
        run(connection)
        connection.commit()

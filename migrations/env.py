"""Alembic environment. Alembic is the only way Sagashi's schema changes.

The database URL comes from the caller's Alembic config (``sqlalchemy.url``), which
Sagashi's ``db upgrade`` command fills from ``SAGASHI_DATABASE_URL``/``SAGASHI_DATA_DIR``.
The table metadata arrives with the store (the index issue); until then there are no
revisions.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, event, pool

from app.store.db import sqlite_page_size
from app.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    if connectable.dialect.name == "sqlite":
        event.listen(connectable, "connect", sqlite_page_size)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Fast bulk inserts: the DB-API's own batch paths, past the ORM.

Postings are the bulk of every write (about 60 rows per image), so they skip SQLAlchemy's
per-row parameter processing: SQLite gets ``executemany`` over plain tuples, PostgreSQL gets
``COPY``. Rows are sorted by the clustered key first, so the B-tree fills in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session


def insert_rows(
    session: Session, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` into ``table`` inside the session's transaction."""
    if not rows:
        return
    connection = session.connection()
    raw = connection.connection.driver_connection
    names = ", ".join(columns)
    if connection.dialect.name == "postgresql":
        with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
        return
    placeholders = ", ".join("?" for _ in columns)
    cursor = raw.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({placeholders})", rows)
    finally:
        cursor.close()

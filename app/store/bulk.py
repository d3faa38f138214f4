"""Fast bulk inserts: the DB-API's own batch paths, past the ORM.

Postings are the bulk of every write (about 60 rows per image), so they skip SQLAlchemy's
per-row parameter processing: SQLite gets multi-row ``INSERT ... VALUES`` statements over
plain tuples, PostgreSQL gets ``COPY``. Rows are sorted by the clustered key first, so the
B-tree fills in order. Errors are SQLAlchemy's (``IntegrityError`` and the rest), as from
any other statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

# Rows in one SQLite INSERT. Python's sqlite3 gives the GIL up around every step of a
# statement, and ``executemany`` steps once per row: 4,000 hand-offs for a batch of 64
# images, each waiting out another thread's switch interval when one runs Python (a
# model thread, a reader). Beside a busy thread that made a batch's write 58 times slower
# than alone (docs/benchmarks.md); one statement of many rows is one step. Large ones: with
# the postings' per-image index, 512 rows a statement inserted 28% slower than executemany,
# 2,048 10% faster and 8,192 28% faster (each statement costs the index a fixed amount);
# 4,096 rows of 4 columns is the most within SQLite's default limit of 32,766 variables.
SQLITE_ROWS_PER_STATEMENT = 4096


def insert_rows(
    session: Session, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` into ``table`` inside the session's transaction."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        _copy(connection, table, tuple(columns), rows)
    else:
        _sqlite_insert(connection, table, tuple(columns), rows)


def insert_records(session: Session, table: Table, records: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows given as column -> value (every record with the same columns), each value
    converted as SQLAlchemy binds it for this database (dates as text on SQLite), then as
    :func:`insert_rows` does."""
    if not records:
        return
    dialect = session.get_bind().dialect
    columns = tuple(records[0])
    convert = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]
    rows = [
        tuple(
            value if to_db is None else to_db(value)
            for to_db, value in zip(convert, (record[name] for name in columns), strict=True)
        )
        for record in records
    ]
    insert_rows(session, table.name, columns, rows)


def _copy(
    connection: Connection, table: str, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    raw = connection.connection.driver_connection
    dbapi_error = connection.dialect.loaded_dbapi.Error
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
    except dbapi_error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi_error) from exc


def _sqlite_insert(
    connection: Connection, table: str, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """``rows`` in statements of a power of two rows each, at most
    :data:`SQLITE_ROWS_PER_STATEMENT` and within SQLite's variable limit: a few shapes a
    table, all kept in the connection's statement cache."""
    raw = connection.connection.driver_connection
    limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns)  # type: ignore[union-attr]
    most = _power_of_two_at_most(min(SQLITE_ROWS_PER_STATEMENT, limit))
    start = 0
    while start < len(rows):
        size = min(most, _power_of_two_at_most(len(rows) - start))
        values = tuple(chain.from_iterable(rows[start : start + size]))
        connection.exec_driver_sql(_insert_sql(table, columns, size), values)
        start += size


def _power_of_two_at_most(n: int) -> int:
    return 1 << (n.bit_length() - 1)


@lru_cache(maxsize=256)
def _insert_sql(table: str, columns: tuple[str, ...], rows: int) -> str:
    row = "(" + ", ".join("?" for _ in columns) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([row] * rows)

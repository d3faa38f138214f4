"""Fast bulk inserts: the DB-API's own batch paths, past the ORM.

Postings are the bulk of every write (about 60 rows per image), so they skip SQLAlchemy's
per-row parameter processing: SQLite gets multi-row ``INSERT ... VALUES`` statements over
plain tuples, PostgreSQL gets ``COPY``. Rows are sorted by the clustered key first, so the
B-tree fills in order. Errors are SQLAlchemy's (``IntegrityError`` and the rest), as from
any other statement.

Rows given as numpy columns (:func:`insert_columns`) reach PostgreSQL as one binary
``COPY`` buffer built in a few array operations, with no Python loop over the rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Connection, Float, Integer, LargeBinary, SmallInteger, Table
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


def insert_columns(session: Session, table: Table, columns: Mapping[str, np.ndarray | int]) -> None:
    """Insert rows given column by column: a 1-D array of numbers for an integer or float
    column, a 2-D array for a binary column (each row's bytes, as the array holds them), or
    one integer for every row. An integer beyond its column's type is an error on either
    database, not a value wrapped round. On PostgreSQL the rows go as one binary ``COPY``
    built by numpy, where a text ``COPY`` formatted each value in a Python loop: a batch of
    3,840 postings into ``image_tags`` commits in 11 ms instead of 12.5, and the import is
    8-11% faster (``bench.bench_copy``, docs/benchmarks.md); on SQLite as :func:`insert_rows`."""
    count = _row_count(columns)
    wire = {name: _wire_value(table, name, value) for name, value in columns.items()}
    if count == 0:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        _binary_copy(connection, table.name, wire, count)
        return
    converted = [_python_values(value, count) for value, _ in wire.values()]
    insert_rows(session, table.name, tuple(columns), list(zip(*converted, strict=True)))


def _row_count(columns: Mapping[str, np.ndarray | int]) -> int:
    lengths = {len(value) for value in columns.values() if isinstance(value, np.ndarray)}
    if len(lengths) != 1:
        raise ValueError(f"columns of unequal or no length: {sorted(lengths)}")
    return lengths.pop()


def _wire_value(table: Table, name: str, value: np.ndarray | int) -> tuple[Any, np.dtype]:
    """A column's value as it is written, and the big-endian type of its binary ``COPY``
    field, from the column's SQLAlchemy type (the tests hold the migrated schema to it)."""
    kind = table.c[name].type
    if isinstance(kind, LargeBinary):
        if not isinstance(value, np.ndarray) or value.ndim != 2:
            raise ValueError(f"{table.name}.{name} takes a 2-D array, a row's bytes each")
        width = value.shape[1] * value.itemsize
        data = np.ascontiguousarray(value).view(np.uint8).reshape(len(value), width)
        return data, np.dtype(("u1", (data.shape[1],)))
    if isinstance(kind, Float):
        single = kind.precision is not None and kind.precision <= 24
        return value, np.dtype(">f4" if single else ">f8")
    for sql_type, code in ((BigInteger, ">i8"), (SmallInteger, ">i2"), (Integer, ">i4")):
        if isinstance(kind, sql_type):
            bounds, array = np.iinfo(code), np.asarray(value)
            if array.size and (array.min() < bounds.min or array.max() > bounds.max):
                raise OverflowError(f"{table.name}.{name}: a value beyond {bounds.bits} bits")
            return value, np.dtype(code)
    raise TypeError(f"{table.name}.{name} ({kind}) has no bulk column type here")


def _python_values(value: np.ndarray | int, count: int) -> list[Any]:
    if not isinstance(value, np.ndarray):
        return [int(value)] * count
    if value.ndim == 2:
        return [row.tobytes() for row in value]
    return value.tolist()  # type: ignore[no-any-return]


# PostgreSQL's binary COPY: a signature, flags and an extension length, then each row as a
# field count and each field as its length and big-endian value, then -1.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"


def _binary_copy(
    connection: Connection, table: str, wire: Mapping[str, tuple[Any, np.dtype]], count: int
) -> None:
    fields: list[tuple[str, Any]] = [("count", ">i2")]
    for index, (_value, kind) in enumerate(wire.values()):
        fields += [(f"length{index}", ">i4"), (f"value{index}", kind)]
    block = np.empty(count, dtype=np.dtype(fields))
    block["count"] = len(wire)
    for index, (value, kind) in enumerate(wire.values()):
        block[f"length{index}"] = kind.itemsize
        block[f"value{index}"] = value
    data = _COPY_HEADER + block.tobytes() + _COPY_TRAILER
    statement = f"COPY {table} ({', '.join(wire)}) FROM STDIN (FORMAT BINARY)"
    _run_copy(connection, statement, lambda copy: copy.write(data))


def _copy(
    connection: Connection, table: str, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"

    def write(copy: Any) -> None:
        for row in rows:
            copy.write_row(row)

    _run_copy(connection, statement, write)


def _run_copy(connection: Connection, statement: str, write: Callable[[Any], None]) -> None:
    """Run a ``COPY ... FROM STDIN`` on the session's own connection (its transaction),
    the driver's errors raised as SQLAlchemy's."""
    raw = connection.connection.driver_connection
    dbapi_error = connection.dialect.loaded_dbapi.Error
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            write(copy)
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

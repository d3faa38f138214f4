"""The bulk write path on real SQLite and PostgreSQL: every row once, exactly, in few
statements; and the batch postings against a plain reference."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    event,
    func,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.store import bulk
from app.store import repository as repo
from app.store.db import create_db_engine, session_factory
from app.store.migrate import upgrade
from app.store.models import Embedding, Image, ImageChange, ImageTag
from tests.app.store.test_store import INFO, VOCAB
from tests.support.postgres import postgres_schema_url

COLUMNS = ("n", "score", "name", "blob")


def scratch(session: Session) -> None:
    """A temporary table of four kinds of value (integer, double, text, bytes)."""
    if session.get_bind().dialect.name == "postgresql":
        kinds = "n BIGINT, score DOUBLE PRECISION, name TEXT, blob BYTEA"
    else:
        kinds = "n INTEGER, score REAL, name TEXT, blob BLOB"
    session.execute(text(f"CREATE TEMPORARY TABLE scratch ({kinds})"))


def rows_of(count: int) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(count)
    scores = rng.random(count, dtype=np.float32).astype(np.float64).tolist()
    return [
        (i, scores[i], None if i % 7 == 0 else f"name {i}", bytes([i % 256]) * (i % 5))
        for i in range(count)
    ]


def statements(engine: Engine) -> list[str]:
    """The SQL statements the engine sends from now on (appended as they go)."""
    sent: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    return sent


@pytest.mark.parametrize("count", [1, 3, 511, 4096, 4097, 10_000])
def test_every_row_goes_in_once_and_exactly(migrated_url: str, count: int) -> None:
    engine = create_db_engine(migrated_url)
    rows = rows_of(count)
    with session_factory(engine)() as session:
        scratch(session)
        bulk.insert_rows(session, "scratch", COLUMNS, rows)
        stored = session.execute(text("SELECT n, score, name, blob FROM scratch ORDER BY n"))
        assert [(n, score, name, bytes(blob)) for n, score, name, blob in stored] == rows
    engine.dispose()


def test_sqlite_takes_many_rows_a_statement_in_a_few_shapes(tmp_path: Any) -> None:
    """One statement a power of two of rows, at most 4,096: 10,000 rows are 4,096 + 4,096 +
    1,024 + 512 + 256 + 16, six steps where executemany took 10,000 (each a GIL hand-off)."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'bulk.db'}")
    sent = statements(engine)
    with session_factory(engine)() as session:
        scratch(session)
        sent.clear()
        bulk.insert_rows(session, "scratch", COLUMNS, rows_of(10_000))
        assert [statement.count("(?, ?, ?, ?)") for statement in sent] == [
            4096,
            4096,
            1024,
            512,
            256,
            16,
        ]
        assert session.scalar(text("SELECT count(*) FROM scratch")) == 10_000
    engine.dispose()


def test_sqlite_statements_stay_within_the_variable_limit(tmp_path: Any) -> None:
    """A SQLite built with a lower limit on bound variables (older builds: 999) gets
    smaller statements, not 'too many SQL variables'."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'bulk.db'}")
    sent = statements(engine)
    with session_factory(engine)() as session:
        scratch(session)
        raw = session.connection().connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 10)  # 2 rows of 4 columns
        sent.clear()
        bulk.insert_rows(session, "scratch", COLUMNS, rows_of(7))
        assert [statement.count("(?, ?, ?, ?)") for statement in sent] == [2, 2, 2, 1]
        assert session.scalar(text("SELECT count(*) FROM scratch")) == 7
    engine.dispose()


def test_records_are_bound_as_the_orm_binds_them(migrated_url: str) -> None:
    """Image rows through the bulk path read back through the ORM as they were given,
    dates included; a second live row at one path is SQLAlchemy's IntegrityError."""
    engine = create_db_engine(migrated_url)
    stamp = datetime(2026, 12, 5, 14, 30, 15, 123456, tzinfo=UTC)
    record = {
        "path": "/x/a.png",
        "sha256": "a" * 64,
        "md5": None,
        "size_bytes": 5_000_000_000,
        "mtime_ns": 1_764_944_000_123_456_789,
        "width": 1600,
        "height": 1200,
        "format": "png",
        "indexed_at": stamp,
        "generation_id": None,
        "deleted_at": None,
    }
    with session_factory(engine)() as session:
        bulk.insert_records(session, Image.__table__, [record])  # type: ignore[arg-type]
        session.commit()
        image = session.scalars(select(Image)).one()
        assert image.path == "/x/a.png" and image.md5 is None
        assert (image.size_bytes, image.mtime_ns) == (5_000_000_000, 1_764_944_000_123_456_789)
        assert image.indexed_at.replace(tzinfo=UTC) == stamp
        assert session.scalar(select(Image.id).where(Image.indexed_at == stamp)) == image.id
        with pytest.raises(IntegrityError):
            bulk.insert_records(session, Image.__table__, [record])  # type: ignore[arg-type]
        session.rollback()
    engine.dispose()


def reference_postings(tag_map: repo.TagMap, probs: np.ndarray, floor: float) -> dict[int, float]:
    """One image's stored tags, written out plainly: the best score of the entries that
    alias to a tag, and each copyright with the best score of its characters."""
    best: dict[int, float] = {}
    for index, score in enumerate(probs.tolist()):
        tag_id = int(tag_map.tag_ids[index])
        if tag_id >= 0 and score >= floor:
            best[tag_id] = max(score, best.get(tag_id, -1.0))
    for character, score in list(best.items()):
        for ip in tag_map.copyrights.get(character, ()):
            best[ip] = max(score, best.get(ip, -1.0))
    return best


def test_batch_postings_agree_with_a_plain_reference(migrated_url: str) -> None:
    engine = create_db_engine(migrated_url)
    with session_factory(engine)() as session:
        repo.generation_for_index(session, INFO)
        tag_map = repo.TagMap.ensure(session, VOCAB, {"doughnut": "donut"})
    engine.dispose()
    assert tag_map.has_duplicates and tag_map.copyrights
    rng = np.random.default_rng(0)
    probs = rng.random((200, len(VOCAB)), dtype=np.float32)
    probs[rng.random(probs.shape) < 0.5] = 0.01  # many below the floor
    probs[7] = 0.0  # an image with no tag at all
    probs[8] = 0.05  # every tag exactly at the floor
    each = tag_map.batch_postings(probs, 0.05)
    assert len(each) == len(probs)
    for row, (tag_ids, scores) in enumerate(each):
        assert tag_ids.dtype == np.int64 and scores.dtype == np.float32
        got = dict(zip(tag_ids.tolist(), scores.tolist(), strict=True))
        assert len(got) == len(tag_ids)  # a tag once per image
        assert got == reference_postings(tag_map, probs[row], 0.05)
    assert each[7][0].size == 0
    assert tag_map.batch_postings(probs[:0], 0.05) == []


def test_vectors_are_stored_as_one_by_one() -> None:
    matrix = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    stored = repo.stored_vectors(matrix)
    assert [row.tobytes() for row in stored] == [
        np.asarray(row, dtype="<f2").tobytes() for row in matrix
    ]
    assert repo.encode_vector(matrix[2]) == stored[2].tobytes()


@pytest.fixture
def typed(migrated_url: str) -> Iterator[tuple[Session, Table]]:
    """A session, and a table of every column type the column-wise path writes, created in
    it (sqlite, postgresql)."""
    engine = create_db_engine(migrated_url)
    table = Table(
        "typed",
        MetaData(),
        Column("n", Integer, primary_key=True),
        Column("wide", BigInteger, nullable=False),
        Column("small", SmallInteger, nullable=False),
        Column("single", Float(precision=24), nullable=False),
        Column("double", Float(precision=53), nullable=False),
        Column("blob", LargeBinary, nullable=False),
        Column("generation", Integer, nullable=False),
    )
    with session_factory(engine)() as session:
        table.create(session.connection())
        yield session, table
    engine.dispose()


def typed_columns(count: int) -> dict[str, np.ndarray | int]:
    """Values to the ends of each type's range, floats of both widths, bytes of float16."""
    rng = np.random.default_rng(count)
    wide = rng.integers(-(2**63), 2**63 - 1, count, dtype=np.int64, endpoint=True)
    small = rng.integers(-(2**15), 2**15 - 1, count, dtype=np.int16, endpoint=True)
    wide[:2], small[:2] = [-(2**63), 2**63 - 1][:count], [-(2**15), 2**15 - 1][:count]
    n = rng.permutation(np.arange(-(2**31), -(2**31) + count, dtype=np.int64))
    n[-1] = 2**31 - 1
    single = (rng.standard_normal(count) * 10.0 ** rng.integers(-30, 30, count)).astype(np.float32)
    return {
        "n": n,
        "wide": wide,
        "small": small,
        "single": single,
        "double": rng.standard_normal(count),
        "blob": rng.standard_normal((count, 3)).astype("<f2"),
        "generation": 7,
    }


@pytest.mark.parametrize("count", [1, 3840, 10_000])
def test_columns_go_in_once_and_exactly(typed: tuple[Session, Table], count: int) -> None:
    """Column by column (a binary COPY on PostgreSQL): every row once, each value exact:
    integers to the ends of their types, single floats the same float32, bytes the array's."""
    session, table = typed
    columns = typed_columns(count)
    bulk.insert_columns(session, table, columns)
    session.commit()
    stored = session.execute(select(table).order_by(table.c.n)).all()
    order = np.argsort(columns["n"])
    expected = [
        (n, wide, small, single, double, blob.tobytes(), 7)
        for n, wide, small, single, double, blob in zip(
            *(np.asarray(columns[name])[order].tolist() for name in ("n", "wide", "small")),
            np.asarray(columns["single"])[order].astype(np.float64).tolist(),
            np.asarray(columns["double"])[order].tolist(),
            np.asarray(columns["blob"])[order],
            strict=True,
        )
    ]
    # A REAL reads back as the shortest text of its float32 (PostgreSQL), so compare as float32.
    got = [(*row[:3], float(np.float32(row[3])), row[4], bytes(row[5]), row[6]) for row in stored]
    assert got == expected


def test_a_value_beyond_its_column_is_refused_on_either_database(
    typed: tuple[Session, Table],
) -> None:
    """2**31 in an INTEGER column would wrap round to -2**31 in a binary COPY; it is an
    error before anything is written, on SQLite too (which would have stored it)."""
    session, table = typed
    for name, beyond in (("n", 2**31), ("small", -(2**15) - 1), ("generation", 2**31)):
        columns = typed_columns(4)
        if name == "generation":
            columns[name] = beyond
        else:
            columns[name] = np.asarray(columns[name], dtype=np.int64)
            columns[name][2] = beyond  # type: ignore[index]
        with pytest.raises(OverflowError, match=f"typed.{name}: a value beyond"):
            bulk.insert_columns(session, table, columns)
    assert session.scalar(select(func.count()).select_from(table)) == 0


def test_columns_of_unequal_length_are_refused(typed: tuple[Session, Table]) -> None:
    session, table = typed
    columns = typed_columns(4)
    columns["double"] = np.zeros(3)
    with pytest.raises(ValueError, match="unequal"):
        bulk.insert_columns(session, table, columns)
    columns = typed_columns(4)
    columns["blob"] = np.zeros(4, dtype="<f2")  # a 1-D array for a binary column
    with pytest.raises(ValueError, match="2-D array"):
        bulk.insert_columns(session, table, columns)
    empty = {
        name: value[:0] if isinstance(value, np.ndarray) else value
        for name, value in typed_columns(4).items()
    }
    bulk.insert_columns(session, table, empty)
    assert session.scalar(select(func.count()).select_from(table)) == 0


def test_a_duplicate_key_by_columns_is_sqlalchemys_integrity_error(
    typed: tuple[Session, Table],
) -> None:
    session, table = typed
    columns = typed_columns(5)
    bulk.insert_columns(session, table, columns)
    with pytest.raises(IntegrityError):
        bulk.insert_columns(session, table, columns)
    session.rollback()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from postgres_schema_url()


WIRE_TYPES = {">i2": "smallint", ">i4": "integer", ">i8": "bigint", ">f4": "real"}


@pytest.mark.parametrize("model", [ImageTag, Embedding, ImageChange])
def test_the_migrated_schema_takes_the_binary_copy_types(postgres_url: str, model: Any) -> None:
    """A binary COPY field must have its column's exact width. The types come from the
    models; here the migrated PostgreSQL schema is held to them, column by column."""
    upgrade(postgres_url)
    engine = create_db_engine(postgres_url)
    table = model.__table__
    with session_factory(engine)() as session:
        found: dict[str, str] = dict(
            session.execute(
                text(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = CAST(:table AS regclass) AND attnum > 0"
                    " AND NOT attisdropped"
                ),
                {"table": table.name},
            ).all()
        )
    engine.dispose()
    for column in table.c:
        if column.name == "seq":
            continue  # the change log's own counter, never written by the bulk path
        value = np.zeros((1, 2), np.uint8) if isinstance(column.type, LargeBinary) else 0
        _value, kind = bulk._wire_value(table, column.name, value)
        expected = "bytea" if kind.subdtype is not None else WIRE_TYPES[kind.str]
        assert found[column.name] == expected, column.name

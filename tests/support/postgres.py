"""The shared PostgreSQL of the suite: a fresh schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_URL = os.environ.get("SAGASHI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_schema_url() -> Iterator[str]:
    """A fresh schema per test on the shared PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_URL)
    try:
        with admin.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as exc:
        admin.dispose()
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL is required in CI but unreachable: {exc}") from exc
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

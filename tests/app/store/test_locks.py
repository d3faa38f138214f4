"""The writer lock and the job leases on PostgreSQL belong to one schema: advisory locks are
the whole database's, so two installations in two schemas of one database (search_path)
must not hold each other's, while two processes on one schema still exclude each other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from app.store.db import create_db_engine
from app.store.locks import WriterBusy, job_lease, lease_held, writer_lock
from tests.support.postgres import postgres_schema_url


@pytest.fixture
def two_schemas() -> Iterator[tuple[Engine, Engine, Engine]]:
    """Two engines on schema A (two processes of one installation) and one on schema B."""
    for first in postgres_schema_url():
        for second in postgres_schema_url():
            engines = (create_db_engine(first), create_db_engine(first), create_db_engine(second))
            yield engines
            for engine in engines:
                engine.dispose()


def test_the_writer_lock_is_one_per_schema(two_schemas: tuple[Engine, Engine, Engine]) -> None:
    a, also_a, b = two_schemas
    with writer_lock(a):
        with pytest.raises(WriterBusy), writer_lock(also_a, wait=0):
            pass
        with writer_lock(b, wait=0):  # another schema: another installation
            pass
    with writer_lock(also_a, wait=0):  # released
        pass


def test_a_job_lease_is_one_per_schema(two_schemas: tuple[Engine, Engine, Engine]) -> None:
    a, also_a, b = two_schemas
    with job_lease(a, 1) as mine:
        assert mine
        assert lease_held(also_a, 1)
        assert not lease_held(b, 1)  # job 1 of schema B is another job
        with job_lease(b, 1) as theirs:
            assert theirs
        with job_lease(also_a, 1) as twice:
            assert not twice
    assert not lease_held(also_a, 1)

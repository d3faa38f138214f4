"""One writer at a time: index, import and reindex runs exclude each other.

Two concurrent runs over the same collection would race on the same paths. The lock is
held by the operating system or the database server for the life of the process, so a run
killed with -9 never leaves a stale lock: SQLite uses an flock on a file beside the
database, PostgreSQL a session-level advisory lock on a dedicated connection.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

ADVISORY_KEY = 0x5A6A_5368  # "Sagashi writer"
# A run killed a moment ago may still hold the lock while the server notices its socket
# closed; waiting this long covers that without making a real conflict slow to report.
WAIT_SECONDS = 5.0
BUSY = "another index, import or reindex run is writing to this database"


class WriterBusy(Exception):
    """Another run holds the writer lock."""


@contextmanager
def writer_lock(engine: Engine, wait: float = WAIT_SECONDS) -> Iterator[None]:
    """Hold the writer lock, trying for ``wait`` seconds before raising WriterBusy."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, wait):
            yield
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with _file_lock(Path(f"{database}.writer.lock"), wait):
        yield


@contextmanager
def _file_lock(path: Path, wait: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _retry(lambda: _try_flock(fd), wait):
            raise WriterBusy(BUSY)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def _advisory_lock(engine: Engine, wait: float) -> Iterator[None]:
    with engine.connect() as connection:

        def attempt() -> bool:
            query = text("select pg_try_advisory_lock(:k)")
            acquired = bool(connection.execute(query, {"k": ADVISORY_KEY}).scalar())
            connection.commit()
            return acquired

        if not _retry(attempt, wait):
            raise WriterBusy(BUSY)
        try:
            yield
        finally:
            with suppress(SQLAlchemyError):  # a dead server has already dropped the lock
                connection.execute(text("select pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                connection.commit()


def _retry(attempt: Callable[[], bool], wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        if attempt():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)

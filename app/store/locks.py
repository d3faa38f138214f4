"""One writer at a time: index, import and reindex runs exclude each other.

Two concurrent runs over the same collection would race on the same paths. The lock is
held by the operating system or the database server for the life of the process, so a run
killed with -9 never leaves a stale lock: SQLite uses an flock on a file beside the
database, PostgreSQL a session-level advisory lock on a dedicated connection. PostgreSQL's
advisory locks belong to the whole database, not to a schema: each key is taken within the
schema the connection works in (its search_path), so that installations in two schemas of
one database (or two tests at once) never hold each other's locks.

A queued job that only reads the index (an export) runs without that lock, under a lease
of its own job (:func:`job_lease`, held the same two ways), so that whoever settles dead
jobs under the writer lock can tell it is alive (:func:`lease_held`).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import SagashiError

# pg_advisory_lock(class, key): the class is a hash of the lock's kind and the schema, the
# key 0 for the writer and the job's id for a lease.
_CLASS = "hashtext(:kind || current_schema())"
WRITER_KIND = "sagashi writer:"
LEASE_KIND = "sagashi job:"
# A run killed a moment ago may still hold the lock while the server notices its socket
# closed; waiting this long covers that without making a real conflict slow to report.
WAIT_SECONDS = 5.0
BUSY = "another index, import or reindex run is writing to this database"


class WriterBusy(SagashiError):
    """Another run holds the writer lock."""

    http_status = 409
    error_code = "writer_busy"

    def reason(self) -> str:
        return f"{self}; wait for it to finish (see 'sagashi jobs list')"


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
            return _advisory(connection, "pg_try_advisory_lock", WRITER_KIND, 0)

        if not _retry(attempt, wait):
            raise WriterBusy(BUSY)
        try:
            yield
        finally:
            with suppress(SQLAlchemyError):  # a dead server has already dropped the lock
                _advisory(connection, "pg_advisory_unlock", WRITER_KIND, 0)


def _advisory(connection: Connection, function: str, kind: str, key: int) -> bool:
    """``function(class, key)`` (try-lock or unlock) with the class of ``kind`` in this
    connection's schema; committed, so no transaction stays open on the lock's connection."""
    query = text(f"select {function}({_CLASS}, :key)")
    done = bool(connection.execute(query, {"kind": kind, "key": key}).scalar())
    connection.commit()
    return done


def _retry(attempt: Callable[[], bool], wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        if attempt():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


@contextmanager
def job_lease(engine: Engine, job_id: int) -> Iterator[bool]:
    """Hold job ``job_id``'s lease for the block if no other process holds it; yields
    whether this one does. Released when the block ends or the process dies."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            mine = _try_lease(connection, job_id)
            try:
                yield mine
            finally:
                if mine:
                    with suppress(SQLAlchemyError):
                        _advisory(connection, "pg_advisory_unlock", LEASE_KIND, job_id)
        return
    path = _lease_path(engine, job_id)
    if path is None:
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # locked, and still the file at that path (lease_held may have just removed it)
        mine = _try_flock(fd) and _is_at(fd, path)
        try:
            yield mine
        finally:
            if mine:  # the job's record is final by now: a checker finding no file is right
                with suppress(FileNotFoundError):
                    os.unlink(path)
    finally:
        os.close(fd)


def lease_held(engine: Engine, job_id: int) -> bool:
    """Whether a live process (this one included) holds job ``job_id``'s lease."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            if not _try_lease(connection, job_id):
                return True
            _advisory(connection, "pg_advisory_unlock", LEASE_KIND, job_id)
            return False
    path = _lease_path(engine, job_id)
    if path is None:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if not _try_flock(fd):
            return True
        # Its process died: the file goes. A new holder that opened it meanwhile fails to
        # lock it and tries again later on a new file.
        with suppress(FileNotFoundError):
            os.unlink(path)
        return False
    finally:
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _try_lease(connection: Connection, job_id: int) -> bool:
    return _advisory(connection, "pg_try_advisory_lock", LEASE_KIND, job_id)


def _lease_path(engine: Engine, job_id: int) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(f"{database}.job-{int(job_id)}.lock")

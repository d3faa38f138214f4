"""A long operation as the user sees it: a progress bar, a job record, a summary."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.store.job_records import JobRecorder, recover_dead
from app.store.locks import writer_lock
from indexer.progress import progress_bar, rate_text

HEARTBEAT_SECONDS = 1.0
# After a heartbeat skipped for the run's own uncommitted batch (SQLite), try again soon:
# the next progress call may follow a commit.
RETRY_SECONDS = 0.1


class Run:
    """Reports progress to the terminal every call, and to the job record once a second."""

    def __init__(self, recorder: JobRecorder, progress: Any, task: Any, unit: str) -> None:
        self.recorder = recorder
        self.progress = progress
        self.task = task
        self.unit = unit
        self.started = time.perf_counter()
        self._next_beat = 0.0
        self.last: tuple[int, int, int] = (0, 0, 0)

    @property
    def job_id(self) -> int:
        return self.recorder.id

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def update(self, done: int, total: int | None = None, failed: int = 0) -> None:
        self.last = (done, total or 0, failed)
        rate = rate_text(done, self.elapsed(), self.unit)
        self.progress.update(self.task, completed=done, total=total, rate=rate)
        now = time.monotonic()
        if now >= self._next_beat:
            written = self.recorder.progress(done, total or 0, failed)
            self._next_beat = now + (HEARTBEAT_SECONDS if written else RETRY_SECONDS)


@contextmanager
def tracked(
    engine: Engine,
    kind: str,
    params: dict[str, Any],
    label: str,
    unit: str,
    job_id: int | None = None,
) -> Iterator[Run]:
    """Take the writer lock, open a job record and a progress bar; mark the job failed if
    the body raises. With ``job_id`` (a queued job a worker claimed) the caller already
    holds the lock and the record exists."""
    if job_id is not None:
        with _progress(JobRecorder(engine, kind, params, job_id), label, unit) as run:
            yield run
        return
    with writer_lock(engine):
        recover_dead(engine)  # runs that died before: their records say so now
        recorder = JobRecorder(engine, kind, params)
        with _progress(recorder, label, unit) as run:
            yield run


@contextmanager
def _progress(recorder: JobRecorder, label: str, unit: str) -> Iterator[Run]:
    with progress_bar() as progress:
        task = progress.add_task(label, total=None, rate="")
        run = Run(recorder, progress, task, unit)
        try:
            yield run
        except BaseException as exc:
            if not recorder.finished:
                with suppress(SQLAlchemyError):  # the database may be what failed
                    recorder.finish({}, error=f"{type(exc).__name__}: {exc}"[:2000])
            raise


def abort(run: Run, message: str) -> None:
    """Record why the run stopped (before the CLI exits with the same message)."""
    with suppress(SQLAlchemyError):
        run.recorder.finish({}, error=message)


def finish(run: Run, summary: dict[str, Any], failures: Iterable[tuple[str, str, str]]) -> None:
    rows = list(failures)
    run.recorder.failures(rows)
    done, total, _failed = run.last  # the throttled heartbeat may lag the last update
    run.recorder.progress(done, max(total, done), len(rows))
    run.recorder.finish({**summary, "seconds": round(run.elapsed(), 3)})

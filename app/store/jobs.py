"""Job records: every index, import and reindex run, with progress, summary and failures.

The record is written in its own short transactions, so progress is visible to other
processes (the API, ``sagashi jobs``) while the run's batches commit separately.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, insert, select, update

from app.store.db import session_factory
from app.store.models import Job, JobFailure
from app.store.repository import now


class JobRecorder:
    def __init__(self, engine: Engine, kind: str, params: dict[str, Any]) -> None:
        self.sessions = session_factory(engine)
        with self.sessions() as session:
            job = Job(
                kind=kind,
                params=json.dumps(params),
                state="running",
                created_at=now(),
                started_at=now(),
                heartbeat_at=now(),
                total=0,
                done=0,
                failed=0,
                summary="{}",
            )
            session.add(job)
            session.commit()
            self.id = job.id
        self.finished = False

    def progress(self, done: int, total: int, failed: int) -> None:
        with self.sessions() as session:
            session.execute(
                update(Job)
                .where(Job.id == self.id)
                .values(done=done, total=total, failed=failed, heartbeat_at=now())
            )
            session.commit()

    def failures(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """(path, code, message) per file that could not be processed."""
        values = [{"job_id": self.id, "path": p, "code": c, "message": m} for p, c, m in rows]
        if values:
            with self.sessions() as session:
                session.execute(insert(JobFailure), values)
                session.commit()

    def finish(self, summary: dict[str, Any], error: str | None = None) -> None:
        self.finished = True
        with self.sessions() as session:
            session.execute(
                update(Job)
                .where(Job.id == self.id)
                .values(
                    state="failed" if error else "done",
                    summary=json.dumps(summary),
                    error=error,
                    finished_at=now(),
                    heartbeat_at=now(),
                )
            )
            session.commit()


def recent_jobs(engine: Engine, limit: int = 20) -> list[Job]:
    with session_factory(engine)() as session:
        return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)).all())


def get_job(engine: Engine, job_id: int) -> Job | None:
    with session_factory(engine)() as session:
        return session.get(Job, job_id)


def job_failures(engine: Engine, job_id: int, limit: int = 1000) -> list[JobFailure]:
    with session_factory(engine)() as session:
        return list(
            session.scalars(
                select(JobFailure)
                .where(JobFailure.job_id == job_id)
                .order_by(JobFailure.id)
                .limit(limit)
            ).all()
        )

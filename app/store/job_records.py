"""Job records: every index, import and reindex run, with progress, summary and failures.

The record is written in its own short transactions, so progress is visible to other
processes (the API, ``sagashi jobs``) while the run's batches commit separately.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.exc import OperationalError

from app.store.db import session_factory
from app.store.models import Job, JobFailure
from app.store.repository import now

JOB_KINDS = ("index", "reindex", "rebuild_faiss", "export")  # what can be queued for a worker
# Jobs that only read the index: a worker runs them without the writer lock, under a lease
# of the job (app.store.locks.job_lease), so index runs go on meanwhile.
READ_ONLY_KINDS = frozenset({"export"})
MAX_ATTEMPTS = 3  # a queued job whose worker died this often is failed, not retried


def valid_export_name(name: str) -> bool:
    """An export job's folder name: one plain folder name under SAGASHI_EXPORT_DIR."""
    return (
        0 < len(name) <= 255
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not name.startswith(".")
        and name.isprintable()
        and name == name.encode("utf-8", "replace").decode("utf-8")
    )


class JobRecorder:
    """Writes one job's progress. Opens a new running job, or adopts ``job_id``: a queued
    job a worker has just claimed."""

    def __init__(
        self, engine: Engine, kind: str, params: dict[str, Any], job_id: int | None = None
    ) -> None:
        self.sessions = session_factory(engine)
        self.finished = False
        if job_id is not None:
            self.id = job_id
            return
        stamp = now()  # a run starts as it is recorded: created and started at one instant
        job = _insert_job(
            engine,
            kind,
            params,
            state="running",
            created_at=stamp,
            started_at=stamp,
            heartbeat_at=stamp,
        )
        self.id = job.id

    def progress(self, done: int, total: int, failed: int) -> bool:
        """Best effort: on SQLite, while the run itself holds the write lock (its batch
        not yet committed), the heartbeat is skipped at once rather than waiting for the
        lock. It only informs; the final state is written by :meth:`finish`. Returns
        whether it was written."""
        with self.sessions() as session:
            sqlite = session.get_bind().dialect.name == "sqlite"
            if sqlite:
                waited = session.execute(text("PRAGMA busy_timeout")).scalar_one()
                session.execute(text("PRAGMA busy_timeout=0"))
            try:
                session.execute(
                    update(Job)
                    .where(Job.id == self.id)
                    .values(done=done, total=total, failed=failed, heartbeat_at=now())
                )
                session.commit()
                return True
            except OperationalError as exc:
                if not sqlite or "locked" not in str(exc.orig):
                    raise
                session.rollback()
                return False
            finally:
                if sqlite:
                    session.execute(text(f"PRAGMA busy_timeout={int(waited)}"))

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


def enqueue(engine: Engine, kind: str, params: dict[str, Any]) -> Job:
    """Queue a job for ``sagashi worker``."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(JOB_KINDS)}")
    return _insert_job(engine, kind, params, state="queued", origin="queue")


def _insert_job(engine: Engine, kind: str, params: dict[str, Any], **fields: Any) -> Job:
    """A new job row with no progress yet; ``fields`` set its state and origin."""
    fields.setdefault("created_at", now())
    with session_factory(engine)() as session:
        job = Job(
            kind=kind,
            params=json.dumps(params),
            attempts=0,
            total=0,
            done=0,
            failed=0,
            summary="{}",
            **fields,
        )
        session.add(job)
        session.commit()
        return job


def claim_next(
    engine: Engine, kinds: Collection[str] | None = None, skip: Collection[str] = ()
) -> Job | None:
    """Take the oldest queued job (of ``kinds``, not of ``skip``), marking it running. Safe
    with several workers: the conditional update lets exactly one of them win each job."""
    while (candidate := next_queued(engine, kinds, skip)) is not None:
        claimed = claim(engine, candidate)
        if claimed is not None:
            return claimed
    return None


def next_queued(
    engine: Engine, kinds: Collection[str] | None = None, skip: Collection[str] = ()
) -> int | None:
    """The oldest queued job's id (of ``kinds``, not of ``skip``), or None."""
    query = select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(1)
    if kinds is not None:
        query = query.where(Job.kind.in_(sorted(kinds)))
    if skip:
        query = query.where(Job.kind.not_in(sorted(skip)))
    with session_factory(engine)() as session:
        found = session.scalar(query)
        return None if found is None else int(found)


def claim(engine: Engine, job_id: int) -> Job | None:
    """Mark queued job ``job_id`` running; None when another worker took it first."""
    with session_factory(engine)() as session:
        stamp = now()
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(
                state="running", started_at=stamp, heartbeat_at=stamp, attempts=Job.attempts + 1
            )
        )
        session.commit()
        if getattr(claimed, "rowcount", 0) == 1:
            return session.get(Job, job_id)
        return None


def job_record(job: Job) -> dict[str, Any]:
    """A job as plain JSON values (CLI and API print the same thing)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "done": job.done,
        "total": job.total,
        "failed": job.failed,
        "params": json.loads(job.params),
        "summary": json.loads(job.summary),
        "error": job.error,
        "origin": job.origin,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
    }


def failure_records(engine: Engine, job_id: int, limit: int = 1000) -> list[dict[str, str]]:
    return [
        {"path": f.path, "code": f.code, "message": f.message}
        for f in job_failures(engine, job_id, limit)
    ]


def requeue(engine: Engine, job_id: int) -> None:
    """Put a claimed job back: its worker could not start it yet, or was stopped midway
    (every job resumes where it stopped)."""
    with session_factory(engine)() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state != "done")
            .values(
                state="queued", started_at=None, heartbeat_at=None, finished_at=None, error=None
            )
        )
        session.commit()


def recover_dead(engine: Engine) -> tuple[int, int]:
    """Settle jobs whose process died. Call only while holding the writer lock: every run
    holds it while it runs, except a read-only job (an export), which holds its own lease
    instead; so any other job still marked running has no live process. Queued jobs go back
    to the queue (each run resumes where the last stopped), unless they have died
    MAX_ATTEMPTS times; a command's own run is marked failed (run it again to resume).
    Returns (requeued, failed)."""
    from app.store.locks import lease_held

    died = "its process died (killed, or the machine stopped); nothing was lost"
    with session_factory(engine)() as session:
        running = list(session.scalars(select(Job).where(Job.state == "running")))
        session.expunge_all()
    requeued = failed = 0
    for job in running:
        if lease_held(engine, job.id):
            continue  # an export, alive
        if job.origin == "queue" and job.attempts < MAX_ATTEMPTS:
            values: dict[str, Any] = {"state": "queued", "started_at": None, "heartbeat_at": None}
        else:
            error = (
                f"{died}; run the command again to resume"
                if job.origin != "queue"
                else f"{died}, {job.attempts} times; giving up (resubmit it to try again)"
            )
            values = {"state": "failed", "finished_at": now(), "error": error}
        with session_factory(engine)() as session:
            # only if still running: an export may have finished since it was read
            changed = session.execute(
                update(Job).where(Job.id == job.id, Job.state == "running").values(**values)
            )
            session.commit()
        if getattr(changed, "rowcount", 0) == 1:
            if values["state"] == "queued":
                requeued += 1
            else:
                failed += 1
    return requeued, failed

"""'sagashi worker': runs the jobs queued through the admin API.

Jobs live in the database, so the worker can run on another host (a GPU machine) than the
server, sharing only the database. Each job runs through the same code as its CLI
command, under the same writer lock, and records progress on its job row. Models are
loaded once per directory and kept for later jobs.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.settings import Settings
from app.store.job_records import (
    READ_ONLY_KINDS,
    claim,
    claim_next,
    next_queued,
    recover_dead,
    requeue,
)
from app.store.locks import WriterBusy, job_lease, writer_lock
from app.store.models import Job
from app.tagger import ModelLoadError
from app.tagger.factory import tagger_from_settings
from app.tagger.protocol import Tagger
from indexer import jobs
from indexer.runs import Run, abort, tracked

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._taggers: dict[Path, Tagger] = {}

    def serve(self, stop: threading.Event, once: bool = False) -> int:
        """Run jobs until ``stop`` is set (or, with ``once``, until none is left that can
        run now). Returns how many jobs ran."""
        ran = 0
        while not stop.is_set():
            try:
                found = self.run_next()
            except SQLAlchemyError as exc:
                log.warning("cannot reach the database (%s); retrying", jobs.first_line(exc))
                found = False
            ran += found
            if found:
                continue
            if once:
                break
            stop.wait(self.settings.worker_poll_seconds)
        return ran

    def run_next(self) -> bool:
        """Take the writer lock if it is free, settle jobs whose process died, then claim
        and run the oldest queued job that writes; else (nothing to write, or another run
        holds the lock) the oldest read-only one (an export), without the lock. False when
        there was nothing this worker could run."""
        try:
            with writer_lock(self.engine, wait=0):
                requeued, failed = recover_dead(self.engine)
                if requeued or failed:
                    log.warning(
                        "%d dead jobs back in the queue, %d marked failed", requeued, failed
                    )
                job = claim_next(self.engine, skip=READ_ONLY_KINDS)
                if job is not None:
                    self.execute(job)
                    return True
        except WriterBusy:
            pass
        return self.run_read_only()

    def run_read_only(self) -> bool:
        """Claim and run the oldest queued read-only job under its lease (taken before the
        claim, so a lock holder settling dead jobs never sees it running without one)."""
        while (candidate := next_queued(self.engine, kinds=READ_ONLY_KINDS)) is not None:
            with job_lease(self.engine, candidate) as mine:
                if not mine:
                    return False  # another worker is claiming it
                job = claim(self.engine, candidate)
                if job is None:
                    continue  # another worker took it first
                self.execute(job)
                return True
        return False

    def execute(self, job: Job) -> None:
        """Run one claimed job, the writer lock (or a read-only job's lease) held; its
        outcome goes on its record."""
        params: dict[str, Any] = json.loads(job.params)
        log.info("job %d: %s %s", job.id, job.kind, json.dumps(params))
        try:
            with tracked(self.engine, job.kind, params, f"job {job.id}", "items", job.id) as run:
                try:
                    summary = self._dispatch(job.kind, params, run)
                    log.info("job %d done: %s", job.id, json.dumps(summary))
                except jobs.JobStopped as exc:
                    abort(run, str(exc))
                    log.warning("job %d stopped: %s", job.id, exc)
        except KeyboardInterrupt:  # SIGINT or SIGTERM: the next worker resumes the job
            requeue(self.engine, job.id)
            log.warning("job %d interrupted; back in the queue", job.id)
            raise
        except Exception:  # recorded on the job by tracked(); the worker goes on
            log.exception("job %d failed", job.id)

    def _dispatch(self, kind: str, params: dict[str, Any], run: Run) -> dict[str, Any]:
        if kind == "index":
            paths = [Path(p) for p in params.get("paths", [])]
            if not paths:
                raise jobs.JobStopped("an index job needs at least one path")
            tagger = self._tagger(params.get("model_dir"))
            index_summary = jobs.run_index(self.engine, self.settings, tagger, paths, run)
            return index_summary.as_dict()
        if kind == "reindex":
            tagger = self._tagger(params.get("model_dir"))
            where = params.get("where")
            reindex_summary = jobs.run_reindex(self.engine, self.settings, tagger, where, run)
            return reindex_summary.as_dict()
        if kind == "rebuild_faiss":
            return jobs.run_rebuild_faiss(self.engine, self.settings, run)
        if kind == "export":  # needs no model
            from indexer.dataset import run_export

            exported: dict[str, Any] = run_export(self.engine, self.settings, params, run)
            return exported
        raise jobs.JobStopped(f"unknown job kind {kind!r}")

    def _tagger(self, model_dir: str | None) -> Tagger:
        directory = Path(model_dir) if model_dir else self.settings.model_dir
        if directory is None:
            raise jobs.JobStopped(
                "no model directory: give model_dir in the job or set SAGASHI_MODEL_DIR "
                "for the worker"
            )
        if directory not in self._taggers:
            try:
                tagger = tagger_from_settings(self.settings, directory)
            except ModelLoadError as exc:
                raise jobs.JobStopped(str(exc)) from exc
            self._taggers[directory] = tagger
        return self._taggers[directory]

"""An export job only reads the index: 'sagashi worker' runs it without the writer lock, so
'sagashi index' runs while it exports, and a lock holder settling dead jobs leaves a live
export alone (its worker holds the job's lease) but puts back one whose worker was killed.

A real worker process runs the export and is held inside it: a FIFO stands where the export
writes its manifest, so opening it blocks until the test reads it. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.store.db import create_db_engine
from app.store.job_records import enqueue, get_job
from app.store.models import Job
from indexer.dataset import MANIFEST, TEMP_PREFIX
from tests.support.api_helpers import make_library
from tests.support.cli import SAGASHI, run_sagashi
from tests.support.index_helpers import make_image


def wait_until(check, seconds: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest.fixture
def library(
    db_url: str, tiny_pixai_dir: Path, tmp_path: Path
) -> Iterator[tuple[dict[str, str], Engine]]:
    env = {
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_DATABASE_URL": db_url,
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_EXPORT_DIR": str(tmp_path / "exports"),
        "SAGASHI_WORKER_POLL_SECONDS": "0.2",
        "SAGASHI_DEVICE": "cpu",
        "SAGASHI_TORCH_THREADS": "1",
        "SAGASHI_DECODE_WORKERS": "1",
    }
    make_library(tmp_path / "library", 4)
    indexed = run_sagashi("index", str(tmp_path / "library"), env=env)
    assert indexed.returncode == 0, indexed.stderr
    engine = create_db_engine(db_url)
    yield env, engine
    engine.dispose()


@contextmanager
def worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        process = subprocess.Popen(
            [SAGASHI, "worker"], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()


def held_export(env: dict[str, str], engine: Engine, pid: int, name: str) -> tuple[Job, Path]:
    """Queue an export that the worker ``pid`` will block in, and wait until it runs."""
    folder = Path(env["SAGASHI_EXPORT_DIR"]) / name
    folder.mkdir(parents=True)
    fifo = folder / f"{TEMP_PREFIX}{pid}-{MANIFEST}.tmp"
    os.mkfifo(fifo)
    job = enqueue(engine, "export", {"name": name, "where": "", "images": "copy"})

    def running() -> Job | None:
        record = get_job(engine, job.id)
        return record if record is not None and record.state == "running" else None

    return wait_until(running), fifo


def read_all(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    """Open the FIFO for reading (which lets the export go on) and read it to its end."""
    lines: list[bytes] = []

    def drain() -> None:
        with fifo.open("rb") as stream:
            lines.extend(stream.read().splitlines())

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return thread, lines


def test_an_index_run_goes_on_while_an_export_job_runs(
    library: tuple[dict[str, str], Engine], tmp_path: Path
) -> None:
    env, engine = library
    with worker(env, tmp_path / "worker.log") as process:
        job, fifo = held_export(env, engine, process.pid, "held")
        # the worker sits inside the export; a writer runs meanwhile
        for i in range(2):
            make_image(tmp_path / "more" / f"new{i}.png", seed=50 + i)
        started = time.monotonic()
        indexed = run_sagashi("index", str(tmp_path / "more"), "--json", env=env)
        assert indexed.returncode == 0, indexed.stderr
        assert json.loads(indexed.stdout)["new"] == 2
        assert time.monotonic() - started < 60
        # a second worker takes the writer lock and settles dead jobs: not this live one
        other = run_sagashi("worker", "--once", env=env)
        assert other.returncode == 0, other.stderr
        assert "worker ran 0 jobs" in other.stderr
        record = get_job(engine, job.id)
        assert record is not None and (record.state, record.attempts) == ("running", 1)
        thread, lines = read_all(fifo)

        def finished() -> Job | None:
            record = get_job(engine, job.id)
            return record if record is not None and record.state != "running" else None

        done = wait_until(finished)
        thread.join(timeout=30)
    assert done.state == "done", done.error
    assert (done.done, done.total, done.failed) == (4, 4, 0)
    assert len(lines) == 4  # the four images indexed before it began
    assert sorted(p.suffix for p in fifo.parent.iterdir()) == [
        ".jpg", ".jpg", ".jsonl", ".png", ".png", ".txt", ".txt", ".txt", ".txt",
    ]  # fmt: skip
    leftovers = [p.name for p in Path(env["SAGASHI_DATA_DIR"]).iterdir() if ".job-" in p.name]
    assert leftovers == []  # the lease's file went with the job


def test_an_export_job_whose_worker_was_killed_goes_back_to_the_queue(
    library: tuple[dict[str, str], Engine], tmp_path: Path
) -> None:
    env, engine = library
    with worker(env, tmp_path / "worker.log") as process:
        job, _fifo = held_export(env, engine, process.pid, "killed")
        process.kill()
        process.wait(timeout=30)
    resumed = run_sagashi("worker", "--once", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 dead jobs back in the queue" in resumed.stderr
    record = get_job(engine, job.id)
    assert record is not None
    assert (record.state, record.attempts) == ("done", 2), record.error
    assert record.done == record.total == 4

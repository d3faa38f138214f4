"""kill -9 of real 'sagashi worker' processes at random moments of an index job, and of a
real 'sagashi serve': after a restart nothing is lost, nothing is duplicated, the job
resumes where it stopped, and the server answers as before. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.store.db import create_db_engine, session_factory
from app.store.job_records import enqueue, get_job
from app.store.models import Embedding, Image, ImageTag
from tests.support.api_helpers import make_library
from tests.support.cli import SAGASHI, run_sagashi
from tests.support.crash import step_until
from tests.support.index_helpers import live_images
from tests.support.network import free_port, wait_for
from tests.support.postgres import postgres_schema_url

IMAGES = 120  # 60 commits at batch 2: many moments to die at, both kills well before the end


@pytest.fixture(params=["sqlite", "postgresql"])
def environment(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_pixai_dir: Path
) -> Iterator[dict[str, str]]:
    values = {
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_DEVICE": "cpu",
        "SAGASHI_TORCH_THREADS": "1",
        "SAGASHI_DECODE_WORKERS": "1",
        "SAGASHI_BATCH_SIZE": "2",  # many small commits: many moments to die between
        "SAGASHI_WORKER_POLL_SECONDS": "0.1",
    }
    if request.param == "sqlite":
        values["SAGASHI_DATABASE_URL"] = f"sqlite:///{tmp_path / 'sagashi.db'}"
        yield values
    else:
        for url in postgres_schema_url():
            values["SAGASHI_DATABASE_URL"] = url
            yield values


def start(*args: str, environment: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SAGASHI, *args],
        env={**os.environ, **environment},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_workers_resume_the_job_without_loss_or_duplicates(
    environment: dict[str, str], tmp_path: Path
) -> None:
    assert run_sagashi("db", "upgrade", env=environment).returncode == 0
    library = tmp_path / "library"
    paths = make_library(library, IMAGES)
    engine = create_db_engine(environment["SAGASHI_DATABASE_URL"])
    job_id = enqueue(engine, "index", {"paths": [str(library)]}).id
    rng = random.Random(7)
    committed = 0
    for attempt in (1, 2):
        worker = start("worker", environment=environment)
        # a random moment while images are being committed, well before the last batch
        target = committed + rng.randint(5, (IMAGES - committed) // 3)

        def reached(attempt: int = attempt, target: int = target) -> bool:
            record = get_job(engine, job_id)
            claimed = record is not None and record.attempts == attempt
            return claimed and live_images(engine) >= target

        step_until(worker, reached, 0.005)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        committed = live_images(engine)
        record = get_job(engine, job_id)
        assert record is not None
        assert record.state == "running", "the job ended before the kill; make it longer"
        assert committed < IMAGES

    finisher = run_sagashi("worker", "--once", env=environment)
    assert finisher.returncode == 0, finisher.stderr
    record = get_job(engine, job_id)
    assert record is not None and record.state == "done", record and record.error
    assert record.attempts == 3

    with session_factory(engine)() as session:
        live = session.execute(
            select(Image.path, func.count()).where(Image.deleted_at.is_(None)).group_by(Image.path)
        ).all()
        assert sorted(path for path, _ in live) == sorted(str(p) for p in paths)
        assert all(count == 1 for _, count in live), "an image was stored twice"
        assert session.scalar(select(func.count()).select_from(Image)) == IMAGES
        assert session.scalar(select(func.count()).select_from(Embedding)) == IMAGES
        tagged = session.scalar(select(func.count(func.distinct(ImageTag.image_id))))
        assert tagged == IMAGES
    engine.dispose()
    search = run_sagashi("search", "", "--limit", "1000", env=environment)
    assert search.returncode == 0, search.stderr
    assert sorted(search.stdout.split()) == sorted(str(p) for p in paths)


def test_a_killed_server_comes_back_with_the_same_answers(
    environment: dict[str, str], tmp_path: Path
) -> None:
    assert run_sagashi("db", "upgrade", env=environment).returncode == 0
    make_library(tmp_path / "library", 8)
    indexed = run_sagashi("index", str(tmp_path / "library"), env=environment)
    assert indexed.returncode == 0, indexed.stderr
    answers = []
    for _ in range(2):
        port = free_port()
        # One process: a SIGKILL of uvicorn's parent would orphan its workers on the port.
        single = {**environment, "SAGASHI_WORKERS": "1"}
        server = start("serve", "--port", str(port), environment=single)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda base=base: httpx.get(f"{base}/readyz").status_code == 200, 60)
            answers.append(httpx.get(f"{base}/api/search", params={"q": "solo"}).json())
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
        time.sleep(0.2)
    assert answers[0] == answers[1]
    assert answers[0]["count"] >= 0

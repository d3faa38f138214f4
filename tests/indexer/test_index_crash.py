"""Kill -9 ``sagashi index`` at several points, resume, and compare with a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from app.store import migrate, vectors
from app.store.db import create_db_engine, session_factory
from app.store.models import Image
from app.store.repository import active_generation
from tests.support.cli import SAGASHI
from tests.support.index_helpers import make_image, snapshot, stored_vector

IMAGES = 240


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "art"
    for i in range(IMAGES):
        make_image(root / f"{i // 60}" / f"{i:04d}.png", seed=i)
    return root


def environment(url: str, data_dir: Path, model_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SAGASHI_DATABASE_URL": url,
        "SAGASHI_DATA_DIR": str(data_dir),
        "SAGASHI_MODEL_DIR": str(model_dir),
        "SAGASHI_BATCH_SIZE": "8",
        "SAGASHI_LOG_LEVEL": "WARNING",
    }


def live_count(url: str) -> int:
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).where(Image.deleted_at.is_(None))) or 0)
    finally:
        engine.dispose()


def index_until_killed(root: Path, env: dict[str, str], url: str, kill_at: int) -> tuple[int, int]:
    """Start an index run and kill -9 it once at least ``kill_at`` images are committed.
    Returns the exit status and the number of images committed when it died."""
    process = subprocess.Popen(
        [SAGASHI, "index", str(root)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if live_count(url) >= kill_at:
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode, live_count(url)


def index_run(
    root: Path, env: dict[str, str], preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """One ``sagashi index`` run to its end, output captured."""
    return subprocess.run(
        [SAGASHI, "index", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=preexec_fn,
        check=False,
    )


def finish(root: Path, env: dict[str, str]) -> None:
    result = index_run(root, env)
    assert result.returncode == 0, result.stderr


def faiss_state(url: str, data_dir: Path) -> dict[str, np.ndarray]:
    """Path -> vector as held by the FAISS index, which must hold exactly the live images."""
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            generation = active_generation(session)
            assert generation is not None
            paths = dict(
                session.execute(
                    select(Image.id, Image.path).where(Image.deleted_at.is_(None))
                ).all()
            )
        index = vectors.load_fresh(engine, data_dir, generation.id)
        ids = vectors.stored_ids(index.index)
        assert sorted(ids.tolist()) == sorted(paths), "FAISS ids must be exactly the live images"
        return dict(zip([paths[i] for i in ids.tolist()], index.reconstruct(ids), strict=True))
    finally:
        engine.dispose()


def assert_same_index(
    got: dict[str, dict[str, object]], expected: dict[str, dict[str, object]]
) -> None:
    """Same files, content and tags; scores and vectors equal up to the float noise of a
    forward pass whose batch composition differs after a resume."""
    assert sorted(got) == sorted(expected)
    for path, state in got.items():
        want = expected[path]
        assert (state["sha256"], state["size"]) == (want["sha256"], want["size"]), path
        tags, want_tags = state["tags"], want["tags"]
        assert isinstance(tags, dict) and isinstance(want_tags, dict)
        assert sorted(tags) == sorted(want_tags), path
        for name, score in tags.items():
            assert score == pytest.approx(want_tags[name], abs=1e-4), (path, name)
        vector = stored_vector(state)
        want_vector = stored_vector(want)
        np.testing.assert_allclose(vector, want_vector, atol=2e-3)


def test_kill_minus_nine_then_resume_equals_a_clean_run(
    db_url: str, tmp_path: Path, tiny_pixai_dir: Path, collection: Path
) -> None:
    # The clean run, into its own SQLite database.
    clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
    migrate.upgrade(clean_url)
    clean_env = environment(clean_url, tmp_path / "clean-data", tiny_pixai_dir)
    finish(collection, clean_env)
    clean_engine = create_db_engine(clean_url)
    expected = snapshot(clean_engine)
    clean_engine.dispose()
    assert len(expected) == IMAGES

    migrate.upgrade(db_url)
    env = environment(db_url, tmp_path / "data", tiny_pixai_dir)
    midway = []
    for kill_at in (1, 40, 100, 160):
        status, committed = index_until_killed(collection, env, db_url, kill_at)
        assert status == -signal.SIGKILL, "the run must die, not finish"
        # A fast run may commit its last batch before the kill lands; it then dies in its
        # closing steps (tag counts, FAISS), which is a crash point worth resuming from too.
        assert kill_at <= committed <= IMAGES
        midway.append(committed < IMAGES)
    assert sum(midway) >= 2, "most kills must land while images are still being indexed"
    finish(collection, env)
    engine = create_db_engine(db_url)
    assert_same_index(snapshot(engine), expected)
    engine.dispose()
    got = faiss_state(db_url, tmp_path / "data")
    want = faiss_state(clean_url, tmp_path / "clean-data")
    assert sorted(got) == sorted(want)
    for path, vector in got.items():
        np.testing.assert_allclose(vector, want[path], atol=2e-3)

"""Kill -9 ``sagashi index`` at several points, resume, and compare with a clean run."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from app.store import migrate
from app.store.db import create_db_engine
from tests.support.cli import environment, finish
from tests.support.crash import kill_when
from tests.support.index_helpers import (
    assert_same_index,
    faiss_state,
    live_images,
    make_image,
    snapshot,
)

IMAGES = 160  # batches of 8: each kill lands within a batch or two of its point


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "art"
    for i in range(IMAGES):
        make_image(root / f"{i // 40}" / f"{i:04d}.png", seed=i)
    return root


def index_until_killed(root: Path, env: dict[str, str], url: str, kill_at: int) -> tuple[int, int]:
    """Start an index run and kill -9 it once at least ``kill_at`` images are committed.
    Returns the exit status and the number of images committed when it died."""
    engine = create_db_engine(url)  # one for the hundreds of checks of a paced run
    try:

        def ready() -> bool:
            return live_images(engine) >= kill_at

        process = kill_when(["index", str(root)], env, ready, 0.005, paced=True)
        return process.returncode, live_images(engine)
    finally:
        engine.dispose()


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
    for kill_at in (1, 40, 80, 120):
        status, committed = index_until_killed(collection, env, db_url, kill_at)
        assert status == -signal.SIGKILL, "the run must die, not finish"
        assert kill_at <= committed < IMAGES, "the kill must land while images are indexed"
    finish(collection, env)
    engine = create_db_engine(db_url)
    assert_same_index(snapshot(engine), expected)
    engine.dispose()
    got = faiss_state(db_url, tmp_path / "data")
    want = faiss_state(clean_url, tmp_path / "clean-data")
    assert sorted(got) == sorted(want)
    for path, vector in got.items():
        np.testing.assert_allclose(vector, want[path], atol=2e-3)

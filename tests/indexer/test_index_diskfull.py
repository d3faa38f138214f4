"""A write that fails part-way (a full disk) stops ``sagashi index`` cleanly; a rerun resumes.

The failure is real, not mocked: the index process runs under a file-size limit
(RLIMIT_FSIZE), so the kernel refuses its writes past that size, exactly as a full disk
refuses them. Python ignores SIGXFSZ, so each refused write returns an error to the caller.
On SQLite that hits the database itself, part-way through the run; on PostgreSQL, whose
files the server writes, it hits the FAISS index that the run writes at its end.
"""

from __future__ import annotations

import resource
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.store import migrate, vectors
from app.store.db import create_db_engine, session_factory
from app.store.repository import active_generation
from tests.support.cli import environment, finish, index_run
from tests.support.index_helpers import assert_same_index, faiss_state, make_image, snapshot

IMAGES = 96


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("diskfull") / "art"
    for i in range(IMAGES):
        make_image(root / f"{i:04d}.png", seed=1000 + i)
    return root


@dataclass(frozen=True)
class Clean:
    url: str
    data_dir: Path
    snapshot: dict[str, dict[str, object]]


@pytest.fixture(scope="module")
def clean(
    tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path, collection: Path
) -> Clean:
    """The same collection indexed once, with nothing in the way."""
    work = tmp_path_factory.mktemp("clean")
    url = f"sqlite:///{work / 'clean.db'}"
    migrate.upgrade(url)
    finish(collection, environment(url, work / "data", tiny_pixai_dir))
    engine = create_db_engine(url)
    state = snapshot(engine)
    engine.dispose()
    return Clean(url, work / "data", state)


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Lower this process's own soft limit for a moment (the hard limit stays, so the old
    soft limit can be restored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def index_with_file_limit(
    root: Path, env: dict[str, str], limit: int
) -> subprocess.CompletedProcess[str]:
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return index_run(root, env, preexec_fn=limited)


def test_a_failed_write_stops_the_run_cleanly_and_a_rerun_resumes(
    db_url: str, tmp_path: Path, tiny_pixai_dir: Path, collection: Path, clean: Clean
) -> None:
    expected = clean.snapshot

    migrate.upgrade(db_url)
    env = environment(db_url, tmp_path / "data", tiny_pixai_dir)
    sqlite = db_url.startswith("sqlite")
    # SQLite: room for the schema and a few batches. PostgreSQL: room for no index file.
    stopped = index_with_file_limit(collection, env, 300_000 if sqlite else 2_048)

    assert stopped.returncode != 0, "a run whose writes fail must not report success"
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1, stopped.stderr
    assert lines[0].startswith("sagashi: error:"), lines[0]
    assert "rerun" in lines[0], lines[0]
    assert "Traceback" not in stopped.stderr
    assert ("disk space" if sqlite else "cannot write the FAISS index") in lines[0], lines[0]
    engine = create_db_engine(db_url)
    partial = snapshot(engine)
    engine.dispose()
    if sqlite:
        assert 0 < len(partial) < IMAGES, "the limit must land part-way through the run"
    # What was committed is whole: each image with its tags and its embedding.
    for path, state in partial.items():
        assert state["vector"] is not None and state["tags"], path
        assert state["tags"] == pytest.approx(expected[path]["tags"], abs=1e-4)

    finish(collection, env)
    engine = create_db_engine(db_url)
    assert_same_index(snapshot(engine), expected)
    engine.dispose()
    got = faiss_state(db_url, tmp_path / "data")
    want = faiss_state(clean.url, clean.data_dir)
    assert sorted(got) == sorted(want)


def test_a_server_serves_a_rebuilt_index_it_cannot_write(clean: Clean, tmp_path: Path) -> None:
    engine = create_db_engine(clean.url)
    try:
        with session_factory(engine)() as session:
            generation = active_generation(session)
            assert generation is not None
        with file_size_limit(1024):
            with pytest.raises(vectors.IndexWriteError, match="File too large"):
                vectors.load_fresh(engine, tmp_path / "cli", generation.id)
            served = vectors.load_fresh(
                engine, tmp_path / "server", generation.id, keep_unwritten=True
            )
    finally:
        engine.dispose()
    assert served.index.ntotal == served.meta.count == IMAGES
    # Nothing half-written is left behind; the next reader rebuilds from the database.
    for folder in (tmp_path / "cli", tmp_path / "server"):
        assert [p.name for p in folder.rglob("*") if p.is_file()] == []

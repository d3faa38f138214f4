"""Kill -9 the driver of ``sagashi index --ray local`` while it tags, change a file a shard
describes, rerun: the index equals a clean local run of the files as they are, with nothing
lost or duplicated, and the rerun took what the killed runs left in whole shards.

On PostgreSQL only, the database a Ray cluster's nodes share: what a killed driver leaves
and how the rerun takes it up go through the same code on either database, and
test_ray_index.py runs Ray's index on both. RAY_ADDRESS names a cluster that is not there:
'--ray local' starts its own Ray whatever the environment says."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from app.store import migrate
from app.store.db import create_db_engine, session_factory
from app.store.models import Image
from tests.support.cli import SAGASHI, environment
from tests.support.crash import kill_when
from tests.support.index_helpers import (
    assert_same_index,
    faiss_state,
    live_count,
    make_image,
    snapshot,
)
from tests.support.postgres import postgres_schema_url

pytest.importorskip("ray")
# Ray starts clusters and reads the process table: one xdist worker runs every Ray test.
pytestmark = pytest.mark.xdist_group("ray")

IMAGES = 160


def live_paths(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            return set(session.scalars(select(Image.path).where(Image.deleted_at.is_(None))))
    finally:
        engine.dispose()


def session_pids(sid: int) -> list[int]:
    """Processes of the session the run was started in: its driver and the local Ray."""
    listing = subprocess.run(
        ["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True
    ).stdout
    pids = []
    for line in listing.splitlines():
        pid, session = (int(part) for part in line.split())
        if session == sid:
            pids.append(pid)
    return pids


def end_session(sid: int) -> None:
    """Kill what is left in the session a killed driver ran in: the local Ray it started."""
    time.sleep(1)  # the local Ray notices its driver is gone
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_once_shards_land(root: Path, env: dict[str, str], data_dir: Path) -> list[Path]:
    """Start a run, kill -9 its driver once a shard of its own has landed; then end what was
    left of the local Ray it started. Returns the whole shards on disk after the kill."""
    shards = data_dir / "ray-shards"
    before = set(shards.glob("*/*.parquet"))
    process = kill_when(
        ["index", str(root), "--ray", "local"],
        env,
        lambda: bool(set(shards.glob("*/*.parquet")) - before),
        0.02,
        new_session=True,
        after_kill=end_session,
    )
    assert process.returncode == -signal.SIGKILL, "the run must die, not finish"
    return sorted(shards.glob("*/*.parquet"))


@pytest.fixture
def db_url() -> Iterator[str]:
    yield from postgres_schema_url()


def test_a_killed_driver_leaves_whole_shards_and_a_rerun_completes_exactly(
    db_url: str, tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    root = tmp_path / "art"
    for i in range(IMAGES):
        make_image(root / f"{i // 40}" / f"{i:04d}.png", seed=i)
    migrate.upgrade(db_url)
    data_dir = tmp_path / "data"
    env = {**environment(db_url, data_dir, tiny_pixai_dir), "RAY_ADDRESS": "127.0.0.1:1"}

    left: list[Path] = []
    for _ in range(2):
        left = kill_once_shards_land(root, env, data_dir)
        assert left, "a shard landed before the kill"
        for shard in left:  # whole: each one reads back with every row
            table = pq.read_table(shard)
            assert table.num_rows > 0 and table.column("embedding").null_count == 0
        assert live_count(db_url) < IMAGES, "killed while tagging, not after"

    # A file a leftover shard describes changes before the rerun: its new content is tagged.
    described = pq.read_table(left[-1]).column("path").to_pylist()
    changed = Path(described[0])
    make_image(changed, seed=10_000)
    # The rows the killed runs wrote to shards but did not commit: the rerun must take them
    # from the shards. (The driver imports a shard the moment it lands, so whether the kill
    # came before that import finished is a race: when it lost, there is nothing to take.)
    pending = {
        path
        for shard in left
        for path in pq.read_table(shard).column("path").to_pylist()
        if path != str(changed)
    } - live_paths(db_url)

    result = subprocess.run(
        [SAGASHI, "index", str(root), "--ray", "local"],
        env={**env, "SAGASHI_LOG_LEVEL": "INFO"},
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    taken = f"{len(pending)} files tagged by an earlier run come from"
    assert (
        (taken in result.stderr) if pending else ("tagged by an earlier run" not in result.stderr)
    )
    assert not any((data_dir / "ray-shards").rglob("*.parquet")), "imported shards are removed"
    assert live_count(db_url) == IMAGES  # nothing duplicated, nothing lost

    clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
    migrate.upgrade(clean_url)
    clean_env = environment(clean_url, tmp_path / "clean-data", tiny_pixai_dir)
    clean = subprocess.run(
        [SAGASHI, "index", str(root)], env=clean_env, capture_output=True, text=True, timeout=600
    )
    assert clean.returncode == 0, clean.stderr
    engines = [create_db_engine(db_url), create_db_engine(clean_url)]
    try:
        got, want = (snapshot(engine) for engine in engines)
    finally:
        for engine in engines:
            engine.dispose()
    assert len(got) == IMAGES
    assert_same_index(got, want)
    assert got[str(changed)]["sha256"] == want[str(changed)]["sha256"]
    assert sorted(faiss_state(db_url, data_dir)) == sorted(
        faiss_state(clean_url, tmp_path / "clean-data")
    )

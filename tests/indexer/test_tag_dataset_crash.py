"""Kill -9 ``sagashi tag-dataset`` while it writes shards, change a file a shard describes,
rerun: DIR holds only whole shards after each kill, and the rerun ends with every file
exactly once, as it is now, with the rows a clean run writes; imported, they give the index
``sagashi index`` builds of the same files."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from app.store import migrate
from app.store.db import create_db_engine
from indexer.shards import shard_paths
from tests.support.cli import environment, index_run, run_sagashi
from tests.support.crash import kill_when
from tests.support.index_helpers import assert_same_index, make_image, snapshot

IMAGES = 80  # 10 shards of 8: both kills land within a slice of a new shard, long before the last


def kill_once_shards_land(root: Path, out: Path, env: dict[str, str]) -> list[Path]:
    """Start a run, kill -9 it once a shard of its own has landed; the whole shards left."""
    before = set(shard_paths(out))
    process = kill_when(
        ["tag-dataset", str(root), "--out", str(out), "--shard-rows", "8"],
        env,
        lambda: bool(set(shard_paths(out)) - before),
        0.005,
        paced=True,
    )
    assert process.returncode == -signal.SIGKILL, "the run must die, not finish"
    return shard_paths(out)


def rows_by_path(out: Path) -> dict[str, dict[str, Any]]:
    rows = [row for shard in shard_paths(out) for row in pq.read_table(shard).to_pylist()]
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "every file exactly once"
    return by_path


def test_a_killed_run_leaves_whole_shards_and_a_rerun_completes_exactly(
    tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    root = tmp_path / "art"
    for i in range(IMAGES):
        make_image(root / f"{i // 20}" / f"{i:04d}.png", seed=i)
    out = tmp_path / "out"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = environment(url, tmp_path / "data", tiny_pixai_dir)

    left: list[Path] = []
    for _ in range(2):
        left = kill_once_shards_land(root, out, env)
        for shard in left:  # whole: each one reads back with every row
            table = pq.read_table(shard)
            assert table.num_rows > 0 and table.column("embedding").null_count == 0
        assert sum(pq.read_metadata(s).num_rows for s in left) < IMAGES, "killed mid-run"

    described = pq.read_table(left[-1]).column("path").to_pylist()
    changed = Path(described[0])
    make_image(changed, seed=10_000)

    result = run_sagashi(
        "tag-dataset", str(root), "--out", str(out), "--shard-rows", "8", "--json", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    got = rows_by_path(out)
    assert sorted(got) == sorted(str(p) for p in root.rglob("*.png"))
    for path, row in got.items():
        facts = os.stat(path)
        assert (row["size"], row["mtime_ns"]) == (facts.st_size, facts.st_mtime_ns)

    clean_out = tmp_path / "clean"
    clean = run_sagashi("tag-dataset", str(root), "--out", str(clean_out), env=env)
    assert clean.returncode == 0, clean.stderr[-3000:]
    want = rows_by_path(clean_out)
    for path, row in got.items():
        expected = want[path]
        assert (row["sha256"], row["md5"], row["tag"]) == (
            expected["sha256"],
            expected["md5"],
            expected["tag"],
        ), path
        np.testing.assert_allclose(row["score"], expected["score"], atol=1e-5)
        np.testing.assert_allclose(row["embedding"], expected["embedding"], atol=1e-5)

    # Imported, the rerun's shards give the index 'sagashi index' builds.
    migrate.upgrade(url)
    imported = run_sagashi("import", str(out), "--model-dir", str(tiny_pixai_dir), env=env)
    assert imported.returncode == 0, imported.stderr[-3000:]
    index_url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    migrate.upgrade(index_url)
    indexed = index_run(root, environment(index_url, tmp_path / "index-data", tiny_pixai_dir))
    assert indexed.returncode == 0, indexed.stderr[-3000:]
    engines = [create_db_engine(url), create_db_engine(index_url)]
    try:
        assert_same_index(*(snapshot(engine) for engine in engines))
    finally:
        for engine in engines:
            engine.dispose()

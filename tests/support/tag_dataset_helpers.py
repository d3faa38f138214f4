"""A collection, settings and the shards' rows, for the tests of ``sagashi tag-dataset``
on local files and on object storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from app.settings import Settings
from indexer.shards import shard_paths
from tests.support.index_helpers import make_image, with_two_bad_files

IMAGES = 20


def collection(root: Path) -> Path:
    """Images in two folders, a file that is not an image, a truncated PNG, and two images
    whose captions would share a name (b.png, b.jpg)."""
    with_two_bad_files(root, IMAGES)
    make_image(root / "2" / "b.png", seed=50)
    make_image(root / "2" / "b.jpg", seed=51)
    return root


def settings_for(url: str, data_dir: Path, model_dir: Path) -> Settings:
    return Settings(
        database_url=url, data_dir=data_dir, model_dir=model_dir, batch_size=8, device="cpu"
    )


def rows_in(out: Path) -> list[dict[str, Any]]:
    return [row for shard in shard_paths(out) for row in pq.read_table(shard).to_pylist()]

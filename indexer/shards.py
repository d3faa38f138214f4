"""Parquet shards in the import format, written whole: what ``sagashi index --ray`` leaves
under ``DATA_DIR/ray-shards`` and ``sagashi tag-dataset`` writes into its output folder.

A shard holds the columns ``sagashi import`` reads (:mod:`indexer.importer`): the file's
path, sha256, md5, width, height, size, mtime_ns and format, its tags and scores (the
postings the local index would store: aliases applied, scores at or above the floor,
copyrights from the characters) and its embedding as a fixed-size list of float32. With the
size and mtime a later run tells a file it described, unchanged, from one to tag again.

Only whole shards exist: each is written through :func:`app.atomic_files.atomic_file` (a
hidden temporary name, flushed to disk, renamed to ``NAME.parquet``, the folder synced); a
run killed at any moment leaves at most a temporary file, which the next run removes
(:func:`app.atomic_files.sweep`) and never reads. Names start
with the time they were written, so they sort oldest first.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.atomic_files import atomic_file
from app.store.repository import FileFacts

log = logging.getLogger(__name__)

SUFFIX = ".parquet"


def shard_schema(dim: int) -> Any:
    """The import format's Parquet columns, with the file's size, mtime and format."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("md5", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("format", pa.string()),
            ("tag", pa.list_(pa.string())),
            ("score", pa.list_(pa.float32())),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


def shard_row(
    facts: FileFacts, tags: Sequence[str], scores: np.ndarray, embedding: np.ndarray
) -> dict[str, Any]:
    """One file's row as a shard stores it (``tags`` aligned with ``scores``)."""
    return {
        "path": facts.path,
        "sha256": facts.sha256,
        "md5": facts.md5,
        "width": int(facts.width),
        "height": int(facts.height),
        "size": int(facts.size_bytes),
        "mtime_ns": int(facts.mtime_ns),
        "format": facts.format,
        "tag": list(tags),
        "score": np.asarray(scores, dtype=np.float32).tolist(),
        "embedding": np.asarray(embedding, dtype=np.float32).tolist(),
    }


def import_row(row: dict[str, Any]) -> dict[str, Any]:
    """A shard's row as :class:`~indexer.importer.Importer` takes it (``tags``: name ->
    score); ``row`` is changed in place and returned."""
    row["tags"] = dict(zip(row.pop("tag"), row.pop("score"), strict=True))
    return row


def write_shard(folder: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` (from :func:`shard_row`) as one whole shard in ``folder``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows), schema=shard_schema(len(rows[0]["embedding"])))
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    target = folder / f"{name}{SUFFIX}"
    with atomic_file(target) as handle:  # hidden until whole: shard_paths skips it
        pq.write_table(table, handle)
    return target


def shard_paths(folder: Path) -> list[Path]:
    """The whole shards in ``folder``, oldest first (none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith("."))


def read_shard(shard: Path) -> list[dict[str, Any]] | None:
    """A shard's rows (``tag``/``score`` lists as written), or None when it cannot be read:
    shards are renamed only once whole, so that is a damaged disk, logged and passed by."""
    import pyarrow.parquet as pq

    try:
        rows: list[dict[str, Any]] = pq.read_table(shard).to_pylist()
    except Exception as exc:  # pyarrow raises several types for unreadable files
        log.warning("ignoring unreadable shard %s: %s", shard, exc)
        return None
    return rows


def remove_files(paths: Iterable[Path]) -> None:
    """Remove shards whose rows live on elsewhere (imported, or rewritten into another)."""
    for path in paths:
        path.unlink(missing_ok=True)

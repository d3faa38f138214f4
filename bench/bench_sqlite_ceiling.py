"""How fast SQLite itself can fill the postings table on this machine, with no Python per row.

    python -m bench.bench_sqlite_ceiling                # 3M postings (50k images' worth)
    python -m bench.bench_sqlite_ceiling --scale 1000000  # the two layouts at 1M images

The rows are made inside SQLite (a recursive CTE) into a plain rowid staging table, then
copied with one ``INSERT ... SELECT`` into a table shaped like ``image_tags``: WITHOUT
ROWID, clustered by (generation, tag, score, image), with and without the per-image
secondary index, in random and in key order. This is the rate no importer written on top of
SQLite can beat on this machine, whatever it does in Python.

``--scale N`` fills N images' postings (60 each, Zipf-like tag frequencies) in batches of
50,000 images through ``executemany``, as the importer does, in two layouts: the
``image_tags`` table as it is (each batch sorted by the clustered key, the per-image index
kept up as rows arrive), and a plain heap whose two keys are built once at the end.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path

import numpy as np

from bench.common import machine

log = logging.getLogger("bench.sqlite_ceiling")

POSTINGS_PER_IMAGE = 60
TAGS = 13_000


def fill(path: Path, rows: int, secondary: bool, ordered: bool) -> tuple[float, float]:
    """(staging rows/s, postings rows/s) for one fresh database file."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-2000000"):
            connection.execute(f"PRAGMA {pragma}")
        connection.execute(
            "CREATE TABLE image_tags (generation_id INT, tag_id INT, score REAL, image_id INT, "
            "PRIMARY KEY (generation_id, tag_id, score, image_id)) WITHOUT ROWID"
        )
        if secondary:
            connection.execute("CREATE INDEX ix_image ON image_tags (image_id, generation_id)")
        connection.execute("CREATE TABLE staging (g INT, t INT, s REAL, i INT)")
        started = time.perf_counter()
        connection.execute(
            f"WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < {rows - 1}) "
            f"INSERT INTO staging SELECT 1, abs(random()) % {TAGS}, "
            f"(abs(random()) % 1000000) / 1e6, x / {POSTINGS_PER_IMAGE} FROM n"
        )
        staged = time.perf_counter()
        order = " ORDER BY 1, 2, 3, 4" if ordered else ""
        connection.execute(f"INSERT INTO image_tags SELECT * FROM staging{order}")
        done = time.perf_counter()
    finally:
        connection.close()
    return rows / (staged - started), rows / (done - staged)


SCALE_BATCH = 50_000


def _batches(images: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, TAGS + 1) ** 0.9
    cumulative = np.cumsum(weights) / weights.sum()
    for start in range(0, images, SCALE_BATCH):
        count = min(SCALE_BATCH, images - start) * POSTINGS_PER_IMAGE
        tags = np.searchsorted(cumulative, rng.random(count))
        scores = rng.random(count)
        owners = np.arange(start, start + count // POSTINGS_PER_IMAGE).repeat(POSTINGS_PER_IMAGE)
        yield tags, scores, owners


def fill_at_scale(path: Path, images: int, heap: bool) -> tuple[float, float, float]:
    """(seconds inserting, seconds building keys, file bytes) for one layout."""
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in ("page_size=16384", "journal_mode=WAL", "synchronous=NORMAL"):
        connection.execute(f"PRAGMA {pragma}")
    connection.execute("PRAGMA cache_size=-1048576")  # the importer's 1 GiB
    columns = "generation_id INT, tag_id INT, score REAL, image_id INT"
    keys = [
        "CREATE INDEX ix_key ON image_tags (generation_id, tag_id, score, image_id)",
        "CREATE INDEX ix_image ON image_tags (image_id, generation_id)",
    ]
    if heap:
        connection.execute(f"CREATE TABLE image_tags ({columns})")
    else:
        connection.execute(
            f"CREATE TABLE image_tags ({columns}, "
            "PRIMARY KEY (generation_id, tag_id, score, image_id)) WITHOUT ROWID"
        )
        connection.execute(keys.pop())
    inserting = 0.0
    for tags, scores, owners in _batches(images):
        if not heap:
            order = np.lexsort((owners, scores, tags))
            tags, scores, owners = tags[order], scores[order], owners[order]
        rows = list(zip(repeat(1), tags.tolist(), scores.tolist(), owners.tolist()))
        started = time.perf_counter()
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO image_tags VALUES (?, ?, ?, ?)", rows)
        connection.execute("COMMIT")
        inserting += time.perf_counter() - started
    started = time.perf_counter()
    for statement in keys if heap else []:
        connection.execute(statement)
    building = time.perf_counter() - started
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return inserting, building, float(path.stat().st_size)


def at_scale(images: int) -> None:
    log.info("| layout | insert s | keys built after s | images/s | file GB |")
    log.info("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for heap in (False, True):
            inserting, building, size = fill_at_scale(Path(tmp) / f"{heap}.db", images, heap)
            log.info(
                "| %s | %.0f | %.0f | %.0f | %.2f |",
                "heap, keys built after" if heap else "image_tags as it is",
                inserting,
                building,
                images / (inserting + building),
                size / 1e9,
            )
            (Path(tmp) / f"{heap}.db").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--scale", type=int, default=0, help="images; see above")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("machine: %s; SQLite %s", machine(), sqlite3.sqlite_version)
    if args.scale:
        at_scale(args.scale)
        return
    log.info("| secondary index | insert order | staging rows/s | postings rows/s | images/s |")
    log.info("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for number, (secondary, ordered) in enumerate(
            [(True, False), (True, True), (False, False), (False, True)]
        ):
            staging, postings = fill(Path(tmp) / f"{number}.db", args.rows, secondary, ordered)
            log.info(
                "| %s | %s | %.0f | %.0f | %.0f |",
                "yes" if secondary else "no",
                "key order" if ordered else "random",
                staging,
                postings,
                postings / POSTINGS_PER_IMAGE,
            )


if __name__ == "__main__":
    main()

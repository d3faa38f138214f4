"""How fast SQLite itself can fill the postings table on this machine, with no Python per row.

    python -m bench.bench_sqlite_ceiling                # 3M postings (50k images' worth)
    python -m bench.bench_sqlite_ceiling --scale 1000000  # the layouts at 1M images

The rows are made inside SQLite (a recursive CTE) into a plain rowid staging table, then
copied with one ``INSERT ... SELECT`` into a table shaped like ``image_tags``: WITHOUT
ROWID, clustered by (generation, tag, score, image), with and without the per-image
secondary index, in random and in key order. This is the rate no importer written on top of
SQLite can beat on this machine, whatever it does in Python.

``--scale N`` fills N images' postings (60 each, Zipf-like tag frequencies) in batches of
50,000 images through ``executemany`` (as the importer did until 2026-12-05; it now writes
multi-row statements, app.store.bulk), 16 KiB pages, 1 GiB page cache,
in the layouts of ``LAYOUTS``: the ``image_tags`` table as it is, the same without its
per-image index, a plain heap whose two keys are built once at the end, a table clustered
by (tag, image) instead of (tag, score), and postings packed into one row per tag and batch
(what a block layout would write).
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
from typing import Any

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
DRAWS = 90
LAYOUTS = ("image_tags", "clustered-only", "heap", "tag-image", "packed")
LAYOUT_NAMES = {
    "image_tags": "`image_tags` as it is (clustered by tag, score; per-image index kept up)",
    "clustered-only": "`image_tags` without its per-image index",
    "heap": "plain heap, both keys built once at the end",
    "tag-image": "clustered by (tag, image) instead: each batch appends to each tag's range",
    "packed": "packed: one row per tag and batch (ids and scores as blobs), no per-posting row",
}


def _batches(images: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(tags, scores, owners) of SCALE_BATCH images at a time: POSTINGS_PER_IMAGE distinct
    tags per image, drawn by Zipf-like frequency (DRAWS draws, of which a random 60 distinct
    are kept, so that frequent tags are not favoured by the deduplication)."""
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, TAGS + 1) ** 0.9
    cumulative = np.cumsum(weights) / weights.sum()
    for start in range(0, images, SCALE_BATCH):
        count = min(SCALE_BATCH, images - start)
        drawn = np.sort(np.searchsorted(cumulative, rng.random((count, DRAWS))), axis=1)
        priority = rng.random(drawn.shape)
        priority[:, 1:][drawn[:, 1:] == drawn[:, :-1]] = np.inf
        chosen = np.argpartition(priority, POSTINGS_PER_IMAGE - 1, axis=1)
        chosen = chosen[:, :POSTINGS_PER_IMAGE]
        tags = np.take_along_axis(drawn, chosen, axis=1)
        distinct = np.isfinite(np.take_along_axis(priority, chosen, axis=1))
        owners = np.arange(start, start + count)[:, None].repeat(POSTINGS_PER_IMAGE, axis=1)
        yield tags[distinct], rng.random(int(distinct.sum())), owners[distinct]


_SCHEMAS = {
    "image_tags": [
        "CREATE TABLE image_tags ({columns}, "
        "PRIMARY KEY (generation_id, tag_id, score, image_id)) WITHOUT ROWID",
        "CREATE INDEX ix_image ON image_tags (image_id, generation_id)",
    ],
    "clustered-only": [
        "CREATE TABLE image_tags ({columns}, "
        "PRIMARY KEY (generation_id, tag_id, score, image_id)) WITHOUT ROWID",
    ],
    "heap": ["CREATE TABLE image_tags ({columns})"],
    "tag-image": [
        "CREATE TABLE image_tags ({columns}, "
        "PRIMARY KEY (generation_id, tag_id, image_id)) WITHOUT ROWID",
        "CREATE INDEX ix_image ON image_tags (image_id, generation_id)",
    ],
    "packed": [
        "CREATE TABLE tag_blocks (generation_id INT, tag_id INT, block INT, count INT, "
        "image_ids BLOB, scores BLOB, PRIMARY KEY (generation_id, tag_id, block)) WITHOUT ROWID"
    ],
}
_HEAP_KEYS = [
    "CREATE INDEX ix_key ON image_tags (generation_id, tag_id, score, image_id)",
    "CREATE INDEX ix_image ON image_tags (image_id, generation_id)",
]


def _rows(layout: str, block: int, batch: tuple[np.ndarray, ...]) -> tuple[str, list[Any]]:
    """The batch as the layout's INSERT and its parameter rows (sorting included)."""
    tags, scores, owners = batch
    if layout == "packed":
        order = np.lexsort((owners, -scores, tags))
        tags = tags[order]
        ids = owners[order].astype("<u4")
        values = scores[order].astype("<f4")
        bounds = np.flatnonzero(np.diff(tags)) + 1
        starts = np.concatenate(([0], bounds)).tolist()
        ends = np.concatenate((bounds, [len(tags)])).tolist()
        blocks = [
            (1, int(tags[a]), block, b - a, ids[a:b].tobytes(), values[a:b].tobytes())
            for a, b in zip(starts, ends, strict=True)
        ]
        return "INSERT INTO tag_blocks VALUES (?, ?, ?, ?, ?, ?)", blocks
    if layout in ("image_tags", "clustered-only"):
        order = np.lexsort((owners, scores, tags))
    elif layout == "tag-image":
        order = np.lexsort((owners, tags))
    else:
        order = np.arange(len(tags))
    columns = (tags[order].tolist(), scores[order].tolist(), owners[order].tolist())
    rows = list(zip(repeat(1), *columns))
    return "INSERT INTO image_tags VALUES (?, ?, ?, ?)", rows


def fill_at_scale(path: Path, images: int, layout: str) -> tuple[float, float, float, int]:
    """(seconds inserting, seconds building keys, file bytes, postings) for one layout. The
    time covers sorting each batch and the inserts, as an importer would pay them."""
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in ("page_size=16384", "journal_mode=WAL", "synchronous=NORMAL"):
        connection.execute(f"PRAGMA {pragma}")
    connection.execute("PRAGMA cache_size=-1048576")  # the importer's 1 GiB
    columns = "generation_id INT, tag_id INT, score REAL, image_id INT"
    for statement in _SCHEMAS[layout]:
        connection.execute(statement.format(columns=columns))
    inserting = 0.0
    postings = 0
    for block, batch in enumerate(_batches(images)):
        postings += len(batch[0])
        started = time.perf_counter()
        sql, rows = _rows(layout, block, batch)
        connection.execute("BEGIN")
        connection.executemany(sql, rows)
        connection.execute("COMMIT")
        inserting += time.perf_counter() - started
    started = time.perf_counter()
    for statement in _HEAP_KEYS if layout == "heap" else []:
        connection.execute(statement)
    building = time.perf_counter() - started
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return inserting, building, float(path.stat().st_size), postings


def at_scale(images: int, layouts: list[str]) -> None:
    log.info("| layout | postings | insert s | keys built after s | images/s | file GB |")
    log.info("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for layout in layouts:
            path = Path(tmp) / f"{layout}.db"
            inserting, building, size, postings = fill_at_scale(path, images, layout)
            log.info(
                "| %s | %d | %.0f | %.0f | %.0f | %.2f |",
                LAYOUT_NAMES[layout],
                postings,
                inserting,
                building,
                images / (inserting + building),
                size / 1e9,
            )
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--scale", type=int, default=0, help="images; see above")
    parser.add_argument(
        "--layouts", default=",".join(LAYOUTS), help=f"with --scale: some of {', '.join(LAYOUTS)}"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("machine: %s; SQLite %s", machine(), sqlite3.sqlite_version)
    if args.scale:
        layouts = args.layouts.split(",")
        if unknown := set(layouts) - set(LAYOUTS):
            parser.error(f"unknown layout(s): {', '.join(sorted(unknown))}")
        at_scale(args.scale, layouts)
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

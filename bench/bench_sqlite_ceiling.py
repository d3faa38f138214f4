"""How fast SQLite itself can fill the postings table on this machine, with no Python per row.

    python -m bench.bench_sqlite_ceiling                # 3M postings (50k images' worth)

The rows are made inside SQLite (a recursive CTE) into a plain rowid staging table, then
copied with one ``INSERT ... SELECT`` into a table shaped like ``image_tags``: WITHOUT
ROWID, clustered by (generation, tag, score, image), with and without the per-image
secondary index, in random and in key order. This is the rate no importer written on top of
SQLite can beat on this machine, whatever it does in Python.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("machine: %s; SQLite %s", machine(), sqlite3.sqlite_version)
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

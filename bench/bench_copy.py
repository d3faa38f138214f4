"""Postings into PostgreSQL: the text ``COPY`` formatted row by row against the binary
``COPY`` built by numpy (``app.store.bulk.insert_columns``), into a migrated ``image_tags``.

    python -m bench.bench_copy --database-url postgresql+psycopg://postgres@127.0.0.1/test
    python -m bench.bench_copy --database-url ... --batch-size 5000 --batches 6   # the import's

Each batch is one transaction, as the index writes it (batches of 64 images) or the import
(5,000): 60 postings an image, tag ids drawn Zipf-like from PixAI's 13,461, sorted by the
clustered key. The two ways alternate batch by batch into the same table, so both meet the
same table size and the same server; each batch is timed from the first row to the commit.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import cast

import numpy as np
from sqlalchemy import Engine, Table

from app.store import bulk
from app.store.db import session_factory
from app.store.models import ImageTag
from bench.bench_writer import ABOVE_FLOOR, FLOOR, TAGS, tag_weights
from bench.common import emit, measured_on_scratch

log = logging.getLogger("bench.copy")

Postings = dict[str, np.ndarray | int]


def postings(first_image: int, images: int, rng: np.random.Generator) -> Postings:
    """One batch's postings in the clustered key's order, as ``insert_predictions`` sorts."""
    weights = tag_weights(TAGS)
    tag_ids = np.concatenate(
        [rng.choice(TAGS, size=ABOVE_FLOOR, replace=False, p=weights) for _ in range(images)]
    ).astype(np.int64)
    scores = rng.uniform(FLOOR, 1.0, size=len(tag_ids)).astype(np.float32)
    image_ids = np.repeat(np.arange(first_image, first_image + images, dtype=np.int64), ABOVE_FLOOR)
    order = np.lexsort((image_ids, scores, tag_ids))
    return {
        "generation_id": 1,
        "tag_id": tag_ids[order],
        "score": scores[order],
        "image_id": image_ids[order],
    }


def as_text_copy(engine: Engine, batch: Postings) -> None:
    """The way before: each row a tuple of Python values, ``COPY`` in text."""
    count = len(cast(np.ndarray, batch["tag_id"]))
    rows = list(
        zip(
            [batch["generation_id"]] * count,
            cast(np.ndarray, batch["tag_id"]).tolist(),
            cast(np.ndarray, batch["score"]).astype(np.float64).tolist(),
            cast(np.ndarray, batch["image_id"]).tolist(),
            strict=True,
        )
    )
    with session_factory(engine)() as session:
        bulk.insert_rows(session, "image_tags", tuple(batch), rows)
        session.commit()


def as_binary_copy(engine: Engine, batch: Postings) -> None:
    with session_factory(engine)() as session:
        bulk.insert_columns(session, cast(Table, ImageTag.__table__), batch)
        session.commit()


def run(engine: Engine, images: int, batches: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    ways: dict[str, Callable[[Engine, Postings], None]] = {
        "text_copy": as_text_copy,
        "binary_copy": as_binary_copy,
    }
    spent: dict[str, list[float]] = {name: [] for name in ways}
    first = 0
    for number in range(batches + 1):  # the first round warms the connection and caches
        for name, write in ways.items():
            batch = postings(first, images, rng)
            first += images
            began = time.perf_counter()
            write(engine, batch)
            if number:
                spent[name].append(time.perf_counter() - began)
    results: dict[str, object] = {"images_per_batch": images, "batches": batches}
    for name, seconds in spent.items():
        ms = np.array(seconds) * 1000
        results[name] = {
            "batch_ms_p50": round(float(np.percentile(ms, 50)), 2),
            "batch_ms_p90": round(float(np.percentile(ms, 90)), 2),
            "postings_per_s": round(images * ABOVE_FLOOR * len(ms) / (ms.sum() / 1000)),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database")
    parser.add_argument("--batch-size", type=int, default=64, help="images a transaction")
    parser.add_argument("--batches", type=int, default=40, help="timed batches of each way")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.database_url.startswith("postgresql"):
        parser.error("--database-url: COPY is PostgreSQL's; SQLite takes neither way")
    results = measured_on_scratch(
        args.database_url, lambda engine: run(engine, args.batch_size, args.batches)
    )
    emit(results, args.out)


if __name__ == "__main__":
    main()

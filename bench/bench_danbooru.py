"""The Danbooru compatibility layer's cost: GET /posts.json against GET /api/search for
the same query and page size, from one keep-alive client to a real 'sagashi serve', the
two requests of each query interleaved in the same run (so both see the same machine
load and caches).

    python -m bench.bench_danbooru --images 100000

The synthetic index (bench/synthetic.py, imported once by bench_search.prepared_database)
is reused across runs. /api/search answers each hit with its top 8 tags; /posts.json
with the whole post object (every tag at the thresholds, the rating, md5, file size).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from app.store.db import create_db_engine
from bench.bench_api import start_server
from bench.bench_search import prepared_database, query_mix, ranked_tags
from bench.common import latency_table, machine
from tests.support.tiny_models import build_tiny_pixai

log = logging.getLogger("bench.danbooru")


def timed(client: httpx.Client, path: str, params: dict[str, str | int]) -> float:
    started = time.perf_counter()
    response = client.get(path, params=params)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def compare(base: str, queries: list[str], limit: int) -> tuple[np.ndarray, np.ndarray]:
    ours, theirs = [], []
    with httpx.Client(base_url=base, timeout=120) as client:
        for number, text in enumerate(queries):
            first_ours = number % 2 == 0  # alternate which goes first
            for side in (0, 1) if first_ours else (1, 0):
                if side == 0:
                    ours.append(timed(client, "/api/search", {"q": text, "limit": limit}))
                else:
                    theirs.append(timed(client, "/posts.json", {"tags": text, "limit": limit}))
    return np.array(ours), np.array(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    log.info("machine: %s", machine())
    url = prepared_database(args.work, args.images)
    data_dir = args.work / f"data-{args.images}"
    mix = query_mix(ranked_tags(create_db_engine(url)), args.queries)
    model_dir = build_tiny_pixai(Path(tempfile.mkdtemp(prefix="sagashi-tiny-")))
    process, base = start_server(url, data_dir, model_dir)
    try:
        compare(base, mix[:100], args.limit)  # warm both paths
        ours, theirs = compare(base, mix, args.limit)
    finally:
        process.terminate()
        process.wait(timeout=60)
    log.info("%d images, pages of %d, %d queries", args.images, args.limit, len(mix))
    latency_table(log, "route", [("GET /api/search", ours), ("GET /posts.json", theirs)])
    overhead = np.median(theirs) / np.median(ours) - 1
    log.info("p50 overhead of /posts.json: %+.1f%%", 100 * overhead)


if __name__ == "__main__":
    main()

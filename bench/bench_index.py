"""Overhead of ``sagashi index`` over the bare tagger, measured in the same run.

    python -m bench.bench_index                 # 16 real images, batch 8, SQLite
    python -m bench.bench_index --images 64 --database-url postgresql://postgres@127.0.0.1/test
    python -m bench.bench_index --device cuda --images 2048 --batch-size 64

The model is the real-size architecture with random weights (see bench_tagger). The index
run includes everything a user pays for: the scan, reading and hashing, decoding, the
forward, alias-normalised postings, the database transactions and the FAISS build.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import torch
from sqlalchemy import text

from app.store import migrate
from app.store.aliases import load_aliases
from app.store.db import create_db_engine
from app.store.vectors import rebuild
from app.tagger import TimmTagger
from bench.bench_tagger import bare_forward_rate, build_random_pixai, image_files
from bench.common import machine
from indexer.pipeline import Indexer, IndexOptions

log = logging.getLogger("bench.index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--device", default="cpu", help="cpu, cuda")
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0: all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tagger = TimmTagger(build_random_pixai(work), device=args.device)
        tagger.load()
        folder = work / "collection"
        folder.mkdir()
        sources = list(islice(cycle(image_files(work, None)), args.images))
        for i, source in enumerate(sources):
            shutil.copy(source, folder / f"{i:05d}{source.suffix}")
        url = args.database_url or f"sqlite:///{work / 'bench.db'}"
        migrate.upgrade(url)
        engine = create_db_engine(url)
        options = IndexOptions(
            batch_size=args.batch_size,
            workers=args.workers or torch.get_num_threads(),
            max_pixels=10**9,
            jpeg_draft=True,
            score_floor=0.05,
            aliases=load_aliases(),
        )
        log.info("machine: %s", machine())
        # The CPU's speed drifts on a shared machine: measure the baseline before and after.
        before = bare_forward_rate(tagger, args.batch_size, args.images)
        started = time.perf_counter()
        summary = Indexer(engine, tagger, options).run([folder])
        rebuild(engine, work / "data", 1)
        indexed = summary.new / (time.perf_counter() - started)
        with engine.connect() as connection:
            postings = connection.execute(text("SELECT count(*) FROM image_tags")).scalar_one()
        log.info("postings stored: %.1f per image", postings / max(summary.new, 1))
        after = bare_forward_rate(tagger, args.batch_size, args.images)
        bare = (before + after) / 2
        log.info(
            "| images | batch | database | bare img/s before / after | index img/s | "
            "overhead vs mean bare |"
        )
        log.info("|---|---|---|---|---|---|")
        log.info(
            "| %d | %d | %s | %.3f / %.3f | %.3f | %.1f%% |",
            summary.new,
            args.batch_size,
            engine.dialect.name,
            before,
            after,
            indexed,
            100 * (bare / indexed - 1),
        )


if __name__ == "__main__":
    main()

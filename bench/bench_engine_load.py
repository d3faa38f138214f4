"""Posting engine load: time and peak memory of a fresh process loading a generation.

    python -m bench.bench_engine_load --images 1000000

On the synthetic --images database of bench_search (imported once), each run is a new
Python process that loads the active generation's posting engine (postings, attributes and
the prebuilt bitmaps; no FAISS), as a server does at start, and reports the seconds, its
peak RSS, the size of the posting arrays and a digest of them. The baseline run, in the same
invocation, reads the postings the way the code did before 2026-11-28 (sorted by descending
score in SQL, every row block kept, then one grouping: ``older_read_postings``); the digests
must match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.search import postings
from app.store.db import create_db_engine, session_factory
from app.store.models import ImageTag
from app.store.repository import active_generation

log = logging.getLogger("bench.engine_load")


def older_read_postings(
    session: Session, generation_id: int, image_ids: object
) -> dict[int, postings.Postings]:
    """The full load as it was: all row blocks kept, concatenated, then grouped."""
    assert image_ids is None, "the baseline covers full loads only"
    statement = (
        select(ImageTag.tag_id, ImageTag.score, ImageTag.image_id)
        .where(ImageTag.generation_id == generation_id)
        .order_by(ImageTag.tag_id, ImageTag.score.desc(), ImageTag.image_id)
    )
    blocks = list(postings._raw_blocks(session, statement))
    if not blocks:
        return {}
    rows = np.concatenate(blocks)
    tags = rows[:, 0].astype(np.int64)
    neg = -rows[:, 1].astype(np.float32)
    ids = rows[:, 2].astype(np.uint32)
    bounds = np.flatnonzero(np.diff(tags)) + 1
    starts = np.concatenate(([0], bounds)).tolist()
    ends = np.concatenate((bounds, [len(tags)])).tolist()
    return {
        int(tags[s]): postings.Postings(ids[s:e].copy(), neg[s:e].copy())
        for s, e in zip(starts, ends, strict=True)
    }


def child(url: str, baseline: bool) -> None:
    """Load once and print the measurements as one JSON line."""
    if baseline:
        postings._read_postings = older_read_postings
    engine = create_db_engine(url)
    with session_factory(engine)() as session:
        generation = active_generation(session)
        assert generation is not None, "the database has no active generation"
        started = time.perf_counter()
        loaded = postings.PostingEngine.load(session, generation.id)
        seconds = time.perf_counter() - started
    digest = hashlib.sha256()
    count = arrays = 0
    for segment in loaded.segments:
        for tag_id in sorted(segment.postings):
            found = segment.postings[tag_id]
            digest.update(np.int64(tag_id).tobytes() + found.ids.tobytes())
            digest.update(found.neg_scores.tobytes())
            count += len(found.ids)
            arrays += found.ids.nbytes + found.neg_scores.nbytes
    peak = _high_water_mark()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak": peak,
                "arrays": arrays,
                "postings": count,
                "digest": digest.hexdigest()[:16],
            }
        )
    )


def _high_water_mark() -> int:
    """This process's peak resident bytes. Not ``ru_maxrss``: Linux carries that across
    ``exec`` from the parent, whose own peak (the import) would then be reported."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(url: str, baseline: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.bench_engine_load", "--child", "--url", url]
    result = subprocess.run(
        [*command, *(["--baseline"] if baseline else [])],
        check=True,
        capture_output=True,
        text=True,
    )
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument("--runs", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.url, args.baseline)
        return
    # Imported here, not above: the measured child process must not carry them (torch, FAISS).
    from bench.bench_search import prepared_database
    from bench.common import machine

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("machine: %s", machine())
    args.work.mkdir(parents=True, exist_ok=True)
    url = prepared_database(args.work, args.images)
    log.info("| run | images | postings | load s | peak RSS GB | arrays GB | digest |")
    log.info("|---|---|---|---|---|---|---|")
    for _ in range(args.runs):
        for baseline in (True, False):
            m = measure(url, baseline)
            log.info(
                "| %s | %d | %d | %.1f | %.2f | %.2f | %s |",
                "baseline" if baseline else "current",
                args.images,
                m["postings"],
                m["seconds"],
                m["peak"] / 1e9,
                m["arrays"] / 1e9,
                m["digest"],
            )


if __name__ == "__main__":
    main()

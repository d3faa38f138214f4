"""Tag-query latency with implications on against off, in the same run.

    python -m bench.bench_implications --images 100000
    python -m bench.bench_implications --images 1000000 --engines segments

Uses bench_search's synthetic database (real PixAI tag frequencies, ~60 tags per image,
imported once under --work) and its seeded query mix over real tag names. For each engine,
two services over the same opened index data: one with the shipped implication table
(SAGASHI_IMPLICATIONS=true, the default) and one without. Both are warmed with the whole
mix, then every query is timed off and on alternately (so drift hits both alike), each a
40-hit page with rows fetched. Prints p50/p99 of both, the slowdown, how many queries the
implications changed (their plans grew), and the slowest queries with implications.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from app.query import parse
from app.search.binder import Binder
from app.search.service import EngineKind, SearchRequest, SearchService
from app.store.aliases import load_aliases
from app.store.db import create_db_engine
from app.tagrules.implications import packaged_implications
from bench.bench_search import prepared_database, query_mix, ranked_tags
from bench.common import latency_table, machine

log = logging.getLogger("bench.implications")

ENGINES: dict[str, EngineKind] = {"memory": "memory", "segments": "segments", "sql": "sql"}


def timed(service: SearchService, text: str) -> float:
    started = time.perf_counter()
    service.search(SearchRequest(text, 40))
    return (time.perf_counter() - started) * 1000


def compare(url: str, data_dir: Path, kind: EngineKind, mix: list[str]) -> None:
    engine = create_db_engine(url)
    aliases = load_aliases()
    on = SearchService(engine, data_dir, aliases, kind, implications=packaged_implications())
    off = SearchService(engine, data_dir, aliases, kind, implications=None)
    for service in (off, on):
        started = time.perf_counter()
        service.current()
        log.info("%s engine opened in %.1fs", kind, time.perf_counter() - started)
        for text in mix:  # warm: every tag of the mix touched once
            timed(service, text)
    changed = [
        text
        for text in mix
        if Binder(on.catalog(), on.thresholds()).bind(parse(text).root)
        != Binder(off.catalog(), off.thresholds()).bind(parse(text).root)
    ]
    times_off, times_on = [], []
    for text in mix:
        times_off.append(timed(off, text))
        times_on.append(timed(on, text))
    a, b = np.array(times_off), np.array(times_on)
    latency_table(log, f"{kind} engine", [("implications off", a), ("implications on", b)])
    log.info(
        "%s: p50 %+.0f%%, p99 %+.0f%%, mean %+.0f%%; %d of %d queries changed by implications",
        kind,
        100 * (np.percentile(b, 50) / np.percentile(a, 50) - 1),
        100 * (np.percentile(b, 99) / np.percentile(a, 99) - 1),
        100 * (b.mean() / a.mean() - 1),
        len(changed),
        len(mix),
    )
    picked = np.array([text in set(changed) for text in mix])
    if picked.any():
        latency_table(
            log,
            f"{kind}, changed queries only",
            [("implications off", a[picked]), ("implications on", b[picked])],
        )
    for i in np.argsort(-b)[:3]:
        log.info("slowest with implications: %.2f ms (off %.2f ms)  %s", b[i], a[i], mix[i])
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--engines", default="segments,memory", help="comma-separated")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    log.info("machine: %s", machine())
    url = prepared_database(args.work, args.images)
    data_dir = args.work / f"data-{args.images}"
    engine = create_db_engine(url)
    mix = query_mix(ranked_tags(engine), args.queries)
    engine.dispose()
    for kind in args.engines.split(","):
        compare(url, data_dir, ENGINES[kind.strip()], mix)


if __name__ == "__main__":
    main()

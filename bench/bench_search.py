"""Search latency (posting engine vs SQL) and filtered-kNN recall and speed, at scale.

    python -m bench.bench_search --images 100000
    python -m bench.bench_search --images 1000000 --sql-queries 40

Imports --images synthetic images (bench/synthetic.py: real PixAI tag frequencies, ~60 tags
per image, embeddings with real structure) into a SQLite file under --work once, reusing it
on later runs. Then, in one process:

1. Tag queries: a fixed, seeded mix of 1 to 6 terms with OR groups, negations, thresholds,
   wildcards, metatags and orders, over real tag names at three frequencies. Each query is
   one ``SearchService.search`` of a 40-hit page, rows fetched: the posting engine (memory)
   and the SQL engine on the same queries; p50 and p99 latency and the speed-up.
2. Filtered kNN (k=10) at selectivities 0.01% to 100%: the planner's search against an
   exact filtered brute force in numpy over the same vectors (the baseline); recall@10
   and queries per second of both.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from pyroaring import BitMap
from sqlalchemy import Engine, func, select

from app.search import similar
from app.search.service import SearchRequest, SearchService
from app.store import migrate, vectors
from app.store.aliases import load_aliases
from app.store.db import create_db_engine, session_factory
from app.store.models import Embedding, Tag
from app.tagger.vocab import load_pixai_vocabulary
from bench.bench_import import dataset
from bench.common import latency_table, machine
from indexer.importer import Importer, ImportOptions

log = logging.getLogger("bench.search")
SELECTIVITIES = (0.0001, 0.001, 0.01, 0.1, 1.0)


def prepared_database(work: Path, images: int, url: str | None = None) -> str:
    """The database of --images synthetic images: a SQLite file under ``work``, or ``url``
    (PostgreSQL, say), imported once and reused."""
    url = url or f"sqlite:///{work / f'search-{images}.db'}"
    migrate.upgrade(url)
    engine = create_db_engine(url)
    with session_factory(engine)() as session:
        count = session.scalar(select(func.count()).select_from(Embedding)) or 0
    if count < images:
        source = dataset(work, images)
        vocab = load_pixai_vocabulary(Path(f"{source}.vocab.json"), None)
        options = ImportOptions("synthetic", vocab, load_aliases(), 0.05, strict=False)
        started = time.perf_counter()
        Importer(engine, options).run_file(source)
        log.info("imported %d images in %.0fs", images, time.perf_counter() - started)
    engine.dispose()
    return url


def ranked_tags(engine: Engine) -> list[tuple[str, int]]:
    """(name, image count) of every tag, most used first: what query_mix draws from."""
    with session_factory(engine)() as session:
        statement = select(Tag.name, Tag.image_count).order_by(Tag.image_count.desc())
        return [(name, count) for name, count in session.execute(statement)]


def query_mix(session_tags: list[tuple[str, int]], count: int, seed: int = 0) -> list[str]:
    """Seeded queries over tags ranked by image count: frequent, middling and rare."""
    rng = random.Random(seed)
    ranked = [name for name, _n in session_tags if name.isascii() and " " not in name]
    frequent, middle, rare = ranked[:30], ranked[100:600], ranked[2000:6000] or ranked[-500:]

    def f() -> str:
        return rng.choice(frequent)

    def m() -> str:
        return rng.choice(middle)

    def r() -> str:
        return rng.choice(rare)

    templates = [
        lambda: f(),
        lambda: f"{f()} {f()}",
        lambda: f"{f()} {m()}",
        lambda: f"{f()} -{f()}",
        lambda: f"~{m()} ~{m()} ~{r()}",
        lambda: f"({f()} or {m()}) {f()} -{m()}",
        lambda: f"{f()},>=0.9 {m()},0.5..0.8",
        lambda: f"{f()[:3]}* {f()}",
        lambda: f"{f()} {f()} {m()} {m()} -{f()} -{r()}",
        lambda: f"{r()}",
        lambda: f"{f()} tagcount:>40",
        lambda: f"{m()} width:>1000 filetype:png,jpg",
        lambda: f"{f()} {m()} order:score:{m()}",
        lambda: f"-{f()} -{f()} order:filesize",
    ]
    return [templates[i % len(templates)]() for i in range(count)]


def latencies(service: SearchService, queries: list[str]) -> np.ndarray:
    times = []
    for text in queries:
        started = time.perf_counter()
        service.search(SearchRequest(text, 40))
        times.append(time.perf_counter() - started)
    return np.array(times) * 1000


def tag_queries(url: str, data_dir: Path, queries: int, sql_queries: int) -> None:
    engine = create_db_engine(url)
    mix = query_mix(ranked_tags(engine), queries)
    memory = SearchService(engine, data_dir, load_aliases(), "memory", refresh_seconds=1.0)
    started = time.perf_counter()
    state = memory.current()
    assert state.postings is not None
    arrays = sum(
        p.ids.nbytes + p.neg_scores.nbytes
        for segment in state.postings.segments
        for p in segment.postings.values()
    )
    log.info(
        "posting engine loaded in %.1fs: %.2f GB of postings; process peak RSS %.2f GB",
        time.perf_counter() - started,
        arrays / 1e9,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    )
    latencies(memory, mix[:50])  # warm the caches a server would have warm
    fast = latencies(memory, mix)
    sql = latencies(SearchService(engine, data_dir, load_aliases(), "sql"), mix[:sql_queries])
    fast_same = fast[:sql_queries]
    latency_table(log, "engine", [("memory (posting engine)", fast), ("SQL on SQLite", sql)])
    log.info(
        "speed-up on the same %d queries: p50 %.0fx, mean %.0fx",
        sql_queries,
        np.percentile(sql, 50) / np.percentile(fast_same, 50),
        sql.mean() / fast_same.mean(),
    )
    slowest = np.argsort(-fast)[:3]
    for i in slowest:
        log.info("slowest on memory: %.1f ms  %s", fast[i], mix[i])
    engine.dispose()


def older_ivf(index: Any, data: np.ndarray, ids: np.ndarray) -> Any:
    """An IVF index laid out as files written before 2026-11-28, on the same trained lists:
    float32 vectors (IndexIVFFlat), positions in the lists and image ids in an IndexIDMap2
    around them. Also what tests/test_search_service.py checks older files against."""
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.clone_index(ivf.quantizer)
    inner = faiss.IndexIVFFlat(quantizer, ivf.d, ivf.nlist, faiss.METRIC_INNER_PRODUCT)
    inner.is_trained = True  # the coarse centroids are the new index's: nothing else to train
    wrapped = faiss.IndexIDMap2(inner)
    wrapped.add_with_ids(data, ids)
    return wrapped


def older_layout(
    index: vectors.FaissIndex, data: np.ndarray, ids: np.ndarray
) -> vectors.FaissIndex:
    """The same-run baseline of --baseline: :func:`older_ivf` of the index just loaded."""
    started = time.perf_counter()
    wrapped = older_ivf(index.index, data, ids)
    log.info("older layout built in %.0fs", time.perf_counter() - started)
    return vectors.FaissIndex(wrapped, index.meta)


def knn(url: str, data_dir: Path, queries: int, baseline: bool = False, cold: bool = False) -> None:
    engine = create_db_engine(url)
    started = time.perf_counter()
    index = vectors.load_fresh(engine, data_dir, 1)
    log.info(
        "FAISS %s index ready in %.0fs: %s",
        index.meta.kind,
        time.perf_counter() - started,
        index.meta.params,
    )
    ids, data = vectors.load_embeddings(engine, 1, index.meta.dim)
    engine.dispose()
    if index.meta.kind == "ivf" and "calibrated_recall" not in index.meta.params:
        # A file built before calibration: calibrate it as 'rebuild' now does.
        started = time.perf_counter()
        params = {**index.meta.params, **vectors.calibrate(index.index, index.matrix)}
        index = vectors.FaissIndex(index.index, replace(index.meta, params=params))
        log.info("calibrated in %.0fs: %s", time.perf_counter() - started, params)
    live = BitMap(ids.tolist())
    older = older_layout(index, data, ids) if baseline and index.meta.kind == "ivf" else None
    rng = np.random.default_rng(0)
    log.info(
        "| selectivity | matching | plan | recall@10 | p50 ms | QPS "
        "| numpy score-all+mask QPS | numpy gathered QPS | speed-up vs score-all "
        "| older layout p50 ms | older recall@10 |"
    )
    log.info("|---|---|---|---|---|---|---|---|---|---|---|")
    mask = np.zeros(len(ids), dtype=bool)
    for share in SELECTIVITIES:
        size = max(10, int(share * len(ids)))
        chosen = np.sort(rng.choice(len(ids), size, replace=False))
        allowed = BitMap(ids[chosen].tolist()) if share < 1 else None
        picks = rng.choice(len(ids), queries, replace=False)
        mask[:] = False
        mask[chosen] = True
        recall, times, exact_times, naive_times, strategy = [], [], [], [], ""
        older_times, older_found, older_recall = [], [], []
        found_all: list[list[tuple[int, float]]] = []
        # The planner's queries run back to back, as a server answers them; the numpy
        # baselines run after, since each sweeps 4 GB at 1M images and would leave every
        # planner query a cold cache (runs before 2026-11-28 interleaved them).
        for turn, q in enumerate(picks):
            # The two layouts take turns going first, so neither gets the other's warm caches.
            for layout in (index, older) if turn % 2 else (older, index):
                if layout is None:
                    continue
                if cold:  # sweep every vector first, as the interleaved baselines once did
                    data @ data[q]
                started = time.perf_counter()
                hits, plan = similar.nearest(layout, data[q], 10, allowed, live)
                if layout is index:
                    times.append(time.perf_counter() - started)
                    found_all.append(hits)
                    strategy = plan.strategy
                else:
                    older_times.append(time.perf_counter() - started)
                    older_found.append(hits)
        for turn, q in enumerate(picks):
            query = data[q]
            started = time.perf_counter()
            members = data[chosen] if allowed is not None else data
            scores = members @ query
            top = np.argpartition(-scores, 9)[:10]
            exact_times.append(time.perf_counter() - started)
            exact = set((ids[chosen] if allowed is not None else ids)[top].tolist())
            started = time.perf_counter()
            every = np.where(mask, data @ query, -np.inf)
            np.argpartition(-every, 9)[:10]
            naive_times.append(time.perf_counter() - started)
            recall.append(len(exact & {i for i, _ in found_all[turn]}) / 10)
            if older_found:
                older_recall.append(len(exact & {i for i, _ in older_found[turn]}) / 10)
        t, e, n = np.array(times), np.array(exact_times), np.array(naive_times)
        log.info(
            "| %s%% | %d | %s | %.3f | %.2f | %.0f | %.0f | %.0f | %.1fx | %s | %s |",
            f"{share * 100:g}",
            size if allowed is not None else len(ids),
            strategy,
            float(np.mean(recall)),
            np.percentile(t, 50) * 1000,
            1 / t.mean(),
            1 / n.mean(),
            1 / e.mean(),
            n.mean() / t.mean(),
            f"{np.percentile(older_times, 50) * 1000:.2f}" if older_times else "-",
            f"{np.mean(older_recall):.3f}" if older_recall else "-",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500, help="tag queries on memory")
    parser.add_argument("--sql-queries", type=int, default=100, help="of those, run on SQL")
    parser.add_argument("--knn-queries", type=int, default=100, help="per selectivity")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument("--only", choices=["tags", "knn"], default=None, help="one part only")
    parser.add_argument(
        "--baseline", action="store_true", help="kNN: also time the older IVF layout, same run"
    )
    parser.add_argument(
        "--cold", action="store_true", help="kNN: sweep every vector before each timed query"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    log.info("machine: %s", machine())
    url = prepared_database(args.work, args.images)
    data_dir = args.work / f"data-{args.images}"  # FAISS files: one folder per database
    if args.only in (None, "tags"):
        tag_queries(url, data_dir, args.queries, min(args.sql_queries, args.queries))
    if args.only in (None, "knn"):
        knn(url, data_dir, args.knn_queries, args.baseline, args.cold)


if __name__ == "__main__":
    main()

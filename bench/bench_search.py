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
   and queries per second of both. Where the planner gathers (small filters), the gather
   as the code before 2026-12-04 ran it (FAISS rebuilding each vector from its list) is
   timed on the same queries: the same-run baseline of the gather matrix. ``--fresh``
   runs each selectivity's planner queries (and that baseline's) in a fresh process right
   after it opens the index, instead of in this warm one; ``--baseline`` also times the
   IVF layout from before 2026-11-28.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from app.store.matrix import Matrix
from app.store.models import Embedding, Tag
from app.tagger.vocab import load_pixai_vocabulary
from bench.bench_import import dataset
from bench.common import latency_table, machine
from indexer.importer import Importer, ImportOptions

log = logging.getLogger("bench.search")
SELECTIVITIES = (0.0001, 0.001, 0.002, 0.004, 0.005, 0.01, 0.1, 1.0)


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


def latencies(service: SearchService, queries: list[str], passes: int = 1) -> np.ndarray:
    """Each query's latency in ms: the least of ``passes`` passes over the whole mix.

    More than one pass is for a shared machine: another process's burst lands on some
    query of some pass, and the least of each query's passes drops it, where one pass
    would count it in the p99."""
    times = np.full(len(queries), np.inf)
    for _pass in range(passes):
        for i, text in enumerate(queries):
            started = time.perf_counter()
            service.search(SearchRequest(text, 40))
            times[i] = min(times[i], time.perf_counter() - started)
    return times * 1000


def tag_queries(
    url: str, data_dir: Path, queries: int, sql_queries: int, warm: int = 0, passes: int = 1
) -> None:
    """The same query mix on the segment engine (opened from its files, written first when
    missing), the memory engine (the posting engine read from the database: the baseline of
    the segments) and, for the first ``sql_queries``, the SQL engine. Each engine first runs
    the first ``warm`` queries of the mix (0: the whole mix) unmeasured; the two posting
    engines are then timed over ``passes`` passes, each query's least time counted."""
    engine = create_db_engine(url)
    mix = query_mix(ranked_tags(engine), queries)
    measured = []
    for kind in ("segments", "memory"):
        service = SearchService(engine, data_dir, load_aliases(), kind, refresh_seconds=1.0)
        started = time.perf_counter()
        service.current()
        log.info(
            "%s engine opened in %.1fs; process peak RSS %.2f GB",
            kind,
            time.perf_counter() - started,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        )
        # A server's steady state: every tag of the mix touched once (mapped pages faulted in,
        # prebuilt bitmaps deserialised, query caches filled) before the measured pass.
        latencies(service, mix[:warm] if warm else mix)
        measured.append((f"{kind} engine", latencies(service, mix, passes)))
        del service
    fast = measured[0][1]
    sql = latencies(SearchService(engine, data_dir, load_aliases(), "sql"), mix[:sql_queries])
    latency_table(log, "engine", [*measured, ("SQL on SQLite", sql)])
    log.info(
        "segments against SQL on the same %d queries: p50 %.0fx, mean %.0fx",
        sql_queries,
        np.percentile(sql, 50) / np.percentile(fast[:sql_queries], 50),
        sql.mean() / fast[:sql_queries].mean(),
    )
    for i in np.argsort(-fast)[:3]:
        log.info("slowest on segments: %.1f ms  %s", fast[i], mix[i])
    engine.dispose()


def older_ivf(index: Any, data: np.ndarray, ids: np.ndarray) -> Any:
    """An IVF index laid out as files written before 2026-11-28, on the same trained lists:
    float32 vectors (IndexIVFFlat), positions in the lists and image ids in an IndexIDMap2
    around them. Also what tests/app/search/test_search_service.py checks older files against."""
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


@dataclass(frozen=True)
class Workload:
    """One selectivity's filter (row positions; every row at 100%) and query rows."""

    share: float
    chosen: np.ndarray
    picks: np.ndarray


def workloads(count: int, queries: int, shares: Sequence[float]) -> list[Workload]:
    """The seeded filters and queries of each selectivity: the same in the parent and in a
    fresh child process, which both draw them from the row count alone."""
    rng = np.random.default_rng(0)
    found = []
    for share in shares:
        size = max(10, int(share * count))
        chosen = np.sort(rng.choice(count, size, replace=False))
        found.append(Workload(share, chosen, rng.choice(count, queries, replace=False)))
    return found


def older_gathered(
    index: vectors.FaissIndex, query: np.ndarray, k: int, candidates: BitMap
) -> list[tuple[int, float]]:
    """The gather plan as it was before 2026-12-04, the same-run baseline: FAISS rebuilds
    each candidate's vector from its IVF list through a hash table of ids, then one matrix
    product in numpy."""
    ivf = faiss.extract_index_ivf(index.index)
    if ivf.direct_map.type != faiss.DirectMap.Hashtable:  # type: ignore[attr-defined]
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    ids = np.frombuffer(candidates.to_array(), np.uint32).astype(np.int64)
    ids = ids[index.contains(ids)]
    scores = index.index.reconstruct_batch(ids) @ query
    top = np.argpartition(-scores, k - 1)[:k] if len(ids) > k else np.arange(len(ids))
    found = [(int(ids[i]), float(scores[i])) for i in top]
    found.sort(key=lambda pair: (-pair[1], pair[0]))
    return found


@dataclass
class Timed:
    """The planner's (or a baseline's) timed queries of one workload."""

    times: list[float] = field(default_factory=list)
    found: list[list[int]] = field(default_factory=list)
    strategy: str = ""

    def p50_ms(self) -> str:
        return f"{np.percentile(self.times, 50) * 1000:.2f}" if self.times else "-"


def timed_run(
    index: vectors.FaissIndex, work: Workload, search: Any = None, sweep: np.ndarray | None = None
) -> Timed:
    """Time ``search`` (the planner by default) on the workload's queries, back to back as a
    server answers them; with ``sweep``, every vector is scored first (a cold CPU cache)."""
    ids = index.matrix.ids.astype(np.int64)
    allowed = BitMap(ids[work.chosen].tolist()) if work.share < 1 else None
    live = BitMap(ids.tolist())
    result = Timed()
    for q in work.picks:
        query = index.matrix.rows[q].astype(np.float32)
        if sweep is not None:
            sweep @ query
        started = time.perf_counter()
        if search is None:
            hits, plan = similar.nearest(index, query, 10, allowed, live)
            result.strategy = plan.strategy
        else:
            hits = search(index, query, 10, allowed)
        result.times.append(time.perf_counter() - started)
        result.found.append([i for i, _ in hits])
    return result


def fresh_child(data_dir: Path, position: int, queries: int, previous: bool) -> dict[str, Any]:
    """One workload's queries in this fresh process, right after it opens the index: the
    current code (mapped files), or with ``previous`` the gather as the code before
    2026-12-04 ran it (the index read into memory, FAISS reconstructing each vector)."""
    meta = vectors.read_meta(data_dir, 1)
    assert meta is not None, "build the index first"
    started = time.perf_counter()
    if previous:
        index_path, _ = vectors.index_paths(data_dir, 1)
        matrix = Matrix.open(vectors.matrix_path(data_dir, 1), meta.dim, meta.count)
        index = vectors.FaissIndex(faiss.read_index(str(index_path)), meta, matrix)
    else:
        opened = vectors.open_written(data_dir, 1, meta.version)
        assert opened is not None, "the written index did not open"
        index = opened
    seconds = time.perf_counter() - started
    work = workloads(meta.count, queries, SELECTIVITIES)[position]
    result = timed_run(index, work, older_gathered if previous else None)
    return {
        "open_s": seconds,
        "times": result.times,
        "found": result.found,
        "plan": result.strategy,
    }


def fresh_run(data_dir: Path, position: int, queries: int, previous: bool = False) -> Timed:
    command = [sys.executable, "-m", "bench.bench_search", "--fresh-child", str(position)]
    command += ["--data-dir", str(data_dir), "--knn-queries", str(queries)]
    output = subprocess.run(
        [*command, *(["--previous"] if previous else [])],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    measured = json.loads(output.strip().splitlines()[-1])
    log.info("fresh process: index open in %.2f s", measured["open_s"])
    return Timed(measured["times"], measured["found"], measured["plan"])


def knn(
    url: str,
    data_dir: Path,
    queries: int,
    baseline: bool = False,
    cold: bool = False,
    fresh: bool = False,
) -> None:
    engine = create_db_engine(url)
    started = time.perf_counter()
    index = vectors.load_fresh(engine, data_dir, 1)
    log.info(
        "FAISS %s index ready in %.1fs: %s",
        index.meta.kind,
        time.perf_counter() - started,
        index.meta.params,
    )
    ids, data = vectors.load_embeddings(engine, 1, index.meta.dim)
    engine.dispose()
    older = older_layout(index, data, ids) if baseline and index.meta.kind == "ivf" else None
    log.info(
        "| selectivity | matching | plan | recall@10 | p50 ms | QPS "
        "| numpy score-all+mask QPS | numpy gathered QPS | speed-up vs score-all "
        "| previous gather p50 ms | older layout p50 ms | older recall@10 |"
    )
    log.info("|---|---|---|---|---|---|---|---|---|---|---|---|")
    mask = np.zeros(len(ids), dtype=bool)
    sweep = data if cold else None
    for position, work in enumerate(workloads(len(ids), queries, SELECTIVITIES)):
        # The planner's queries run back to back, as a server answers them; the numpy
        # baselines run after, since each sweeps 4 GB at 1M images and would leave every
        # planner query a cold cache (runs before 2026-11-28 interleaved them).
        if fresh:
            current = fresh_run(data_dir, position, queries)
        else:
            current = timed_run(index, work, sweep=sweep)
        previous = Timed()
        if current.strategy == "gather" and index.meta.kind == "ivf":
            run = fresh_run if fresh else None
            previous = (
                run(data_dir, position, queries, previous=True)
                if run is not None
                else timed_run(index, work, older_gathered, sweep)
            )
        layout = timed_run(older, work, sweep=sweep) if older is not None else Timed()
        mask[:] = False
        mask[work.chosen] = True
        members = work.chosen if work.share < 1 else np.arange(len(ids))
        exact_times, naive_times, recall, older_recall = [], [], [], []
        for turn, q in enumerate(work.picks):
            started = time.perf_counter()
            top = np.argpartition(-(data[members] @ data[q]), 9)[:10]
            exact_times.append(time.perf_counter() - started)
            exact = set(ids[members][top].tolist())
            started = time.perf_counter()
            np.argpartition(-np.where(mask, data @ data[q], -np.inf), 9)[:10]
            naive_times.append(time.perf_counter() - started)
            recall.append(len(exact & set(current.found[turn])) / 10)
            if layout.found:
                older_recall.append(len(exact & set(layout.found[turn])) / 10)
        t, e, n = np.array(current.times), np.array(exact_times), np.array(naive_times)
        log.info(
            "| %s%% | %d | %s | %.3f | %.2f | %.0f | %.0f | %.0f | %.1fx | %s | %s | %s |",
            f"{work.share * 100:g}",
            len(members),
            current.strategy,
            float(np.mean(recall)),
            np.percentile(t, 50) * 1000,
            1 / t.mean(),
            1 / n.mean(),
            1 / e.mean(),
            n.mean() / t.mean(),
            previous.p50_ms(),
            layout.p50_ms(),
            f"{np.mean(older_recall):.3f}" if older_recall else "-",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500, help="tag queries on memory")
    parser.add_argument("--sql-queries", type=int, default=100, help="of those, run on SQL")
    parser.add_argument("--knn-queries", type=int, default=100, help="per selectivity")
    parser.add_argument("--warm", type=int, default=0, help="tag queries run first (0: all)")
    parser.add_argument(
        "--passes", type=int, default=1, help="tag queries: each query's least time of N passes"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument("--only", choices=["tags", "knn"], default=None, help="one part only")
    parser.add_argument(
        "--baseline", action="store_true", help="kNN: also time the older IVF layout, same run"
    )
    parser.add_argument(
        "--cold", action="store_true", help="kNN: sweep every vector before each timed query"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="kNN: each selectivity's queries in a fresh process, right after it opens the index",
    )
    parser.add_argument("--fresh-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--previous", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fresh_child is not None:
        found = fresh_child(args.data_dir, args.fresh_child, args.knn_queries, args.previous)
        print(json.dumps(found))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    log.info("machine: %s", machine())
    url = prepared_database(args.work, args.images)
    data_dir = args.work / f"data-{args.images}"  # FAISS files: one folder per database
    if args.only in (None, "tags"):
        sql = min(args.sql_queries, args.queries)
        tag_queries(url, data_dir, args.queries, sql, args.warm, args.passes)
    if args.only in (None, "knn"):
        knn(url, data_dir, args.knn_queries, args.baseline, args.cold, args.fresh)


if __name__ == "__main__":
    main()

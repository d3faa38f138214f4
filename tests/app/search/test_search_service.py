"""The search service on both databases and both engines: pages in every order equal a
brute-force sort, cursors cover every match exactly once, and filtered similarity search
returns only matching images, with recall against an exact filtered scan."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pyroaring import BitMap

from app.query import QueryError
from app.search import similar
from app.search.catalog import Catalog
from app.search.paging import CursorError
from app.search.service import EngineKind, NotFound, SearchRequest, SearchService
from app.store import repository as repo
from app.store import vectors
from app.store.db import create_db_engine, session_factory
from app.store.matrix import Matrix
from app.tagger.vocab import GROUP_CODE
from bench.bench_search import older_ivf
from tests.support.postgres import postgres_schema_url
from tests.support.search_helpers import (
    GROUPS,
    FixtureAttributes,
    FixtureImages,
    build_index,
    random_images,
)

# An order's sort key from an image's properties and its tag facts (count, score of b).
OrderKey = Callable[[FixtureAttributes, dict[str, float]], float | tuple[float, ...]]
ORDERS: list[tuple[str, OrderKey]] = [
    ("", lambda a, t: -a["id"]),
    ("order:id", lambda a, t: a["id"]),
    ("order:filesize", lambda a, t: (-a["size_bytes"], -a["id"])),
    ("order:filesize_asc", lambda a, t: (a["size_bytes"], a["id"])),
    ("order:mpixels", lambda a, t: (-a["mpixels"], -a["id"])),
    ("order:date_asc", lambda a, t: (a["indexed_us"], a["id"])),
    ("order:tagcount", lambda a, t: (-t["count"], -a["id"])),
    ("order:score:b", lambda a, t: (-t["b"], -a["id"])),
]


def _service(url: str, tmp_path: Path, kind: EngineKind) -> SearchService:
    engine = create_db_engine(url)
    return SearchService(engine, tmp_path, {}, kind, refresh_seconds=0)


def _all_pages(service: SearchService, query: str, limit: int) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(1000):
        result = service.search(SearchRequest(query, limit, cursor))
        seen += [hit.id for hit in result.hits]
        cursor = result.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("kind", ["memory", "segments", "sql"])
def test_every_order_pages_like_a_brute_force_sort(
    migrated_url: str, tmp_path: Path, kind: EngineKind
) -> None:
    rng = random.Random(3)
    images = random_images(rng, 60)
    engine = create_db_engine(migrated_url)
    _generation, data, catalog = build_index(engine, images, GROUPS)
    b = catalog.tags["b"].id
    counted = {name: info for name, info in catalog.tags.items() if info.group != "rating"}
    thresholds = {"general": 0.3, "character": 0.75, "copyright": 0.75}
    facts = {
        image_id: {
            "count": sum(
                1
                for info in counted.values()
                if info.id in tags and tags[info.id] >= thresholds[info.group]
            ),
            "b": float(np.float32(tags.get(b, 0.0))),
        }
        for image_id, tags in data.items()
    }
    service = _service(migrated_url, tmp_path, kind)
    for query, order in ORDERS:
        expected = sorted(data, key=lambda i: order(data.attributes[i], facts[i]))
        for limit in (1, 7, 100):
            assert _all_pages(service, query, limit) == expected, (query, limit)
    # random: a fixed shuffle across the pages of one cursor chain
    shuffled = _all_pages(service, "order:random", 9)
    assert sorted(shuffled) == sorted(data) and shuffled != sorted(data)
    filtered = _all_pages(service, "a order:filesize", 5)
    assert filtered == [i for i in expected_by(data, "size_bytes") if _has(data[i], catalog, "a")]
    engine.dispose()


def expected_by(data: FixtureImages, column: Literal["size_bytes"]) -> list[int]:
    return sorted(data, key=lambda i: (-data.attributes[i][column], -i))


def _has(tags: dict[int, float], catalog: Catalog, name: str) -> bool:
    info = catalog.tags[name]
    return info.id in tags and tags[info.id] >= 0.3


def test_pages_stay_consistent_while_images_are_added(migrated_url: str, tmp_path: Path) -> None:
    engine = create_db_engine(migrated_url)
    build_index(engine, [{"a": 0.9}] * 10)
    service = _service(migrated_url, tmp_path, "memory")
    first = service.search(SearchRequest("a", 4))
    with session_factory(engine)() as session:
        generation = repo.active_generation(session)
        assert generation is not None
        ids = repo.ensure_tags(session, {"a": GROUP_CODE["general"]})
        prediction = repo.StoredPrediction(
            np.array([ids["a"]]), np.array([0.9], np.float32), np.ones(4, np.float32) / 2
        )
        facts = repo.FileFacts("/new.png", "e" * 64, 1, 1, 10, 10, "png")
        repo.write_images(session, generation.id, [(facts, prediction, None)])
        session.commit()
    second = service.search(SearchRequest("a", 4, first.next_cursor))
    assert second.count == 11  # the new image counts, and belongs before the cursor
    assert [h.id for h in second.hits] == [h.id - 4 for h in first.hits]
    engine.dispose()


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (SearchRequest("", 5, "garbage!"), CursorError),
        (SearchRequest("similar:12345"), NotFound),
        (SearchRequest("a order:similarity"), QueryError),
        (SearchRequest("", embedding=np.zeros(4)), ValueError),
        (SearchRequest("", embedding=np.ones(7)), ValueError),
        (SearchRequest("", embedding=np.array([np.nan, 1, 1, 1])), ValueError),
    ],
)
def test_bad_requests_raise_typed_errors(
    migrated_url: str, tmp_path: Path, request_: SearchRequest, error: type[Exception]
) -> None:
    engine = create_db_engine(migrated_url)
    build_index(engine, [{"a": 0.9}] * 3)
    with pytest.raises(error):
        _service(migrated_url, tmp_path, "memory").search(request_)
    engine.dispose()


def _clustered_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """Vectors around 50 centres, as real embeddings cluster by content."""
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    vectors_ = centres[rng.integers(0, 50, count)] + 0.6 * rng.standard_normal((count, dim))
    vectors_ = vectors_.astype(np.float32)
    unit: np.ndarray = vectors_ / np.linalg.norm(vectors_, axis=1, keepdims=True)
    return unit


@pytest.mark.parametrize(
    ("kind", "nlist", "older"),
    [("flat", 0, False), ("ivf", 200, False), ("ivf", 20, False), ("ivf", 200, True)],
    ids=["flat", "ivf-200", "ivf-20", "ivf-200-older-file"],
)
def test_filtered_knn_returns_only_matches_with_high_recall(
    kind: str, nlist: int, older: bool
) -> None:
    rng = np.random.default_rng(0)
    count, dim = 20_000, 32
    data = _clustered_vectors(rng, count, dim)
    ids = np.arange(1, count + 1, dtype=np.int64)
    params = {} if kind == "flat" else {"nlist": nlist, "nprobe": 8}
    built = vectors.build_index(data, ids, kind, params)
    if older:
        built = older_ivf(built, data, ids)  # as files written before 2026-11-28
    assert sorted(vectors.stored_ids(built).tolist()) == ids.tolist()
    index = vectors.FaissIndex(built, vectors.IndexMeta(1, 0, count, dim, kind, params))
    live = BitMap(ids.tolist())
    recalls = {}
    strategies: list[str] = []
    for share in (0.0005, 0.005, 0.05, 0.3, 1.0):
        allowed = BitMap(rng.choice(ids, max(1, int(share * count)), replace=False).tolist())
        hits_total, recall_total = 0, 0.0
        for q in rng.choice(count, 20, replace=False):
            query = data[q]
            found, plan = similar.nearest(index, query, 10, allowed, live, gather_limit=2000)
            assert all(i in allowed for i, _ in found)
            member = np.frombuffer(allowed.to_array(), np.uint32).astype(np.int64)
            exact = member[np.argsort(-(data[member - 1] @ query), kind="stable")[:10]]
            recall_total += len({i for i, _ in found} & set(exact.tolist())) / len(exact)
            hits_total += len(found)
            scores = [s for _, s in found]
            assert scores == sorted(scores, reverse=True)
        recalls[share] = recall_total / 20
        strategies.append(plan.strategy)
        assert hits_total == 20 * min(10, len(allowed))
        assert plan == similar.plan_knn(index, len(allowed), gather_limit=2000)
        if len(allowed) <= 2000:
            assert plan.strategy == "gather"
        if plan.strategy == "exhaustive":
            assert recall_total / 20 == 1.0  # every list probed: exact
    assert min(recalls.values()) >= 0.95, recalls
    if nlist == 20:  # few lists: a 30% filter asks for all of them
        assert "exhaustive" in strategies, strategies


def test_gathering_continues_above_the_limit_while_it_is_cheaper() -> None:
    """Above the gather limit the planner still gathers while reading the candidates costs
    less than the ids the filtered IVF plan would scan (at 1M images: 0.5% gathered, 1%
    through the index)."""
    meta = vectors.IndexMeta(1, 0, 1_000_000, 1024, "ivf", {"nlist": 4000, "nprobe": 16})
    meta = replace(meta, params={**meta.params, "calibrated_recall": 0.98})
    index = vectors.FaissIndex(None, meta, Matrix.of(np.zeros(0, np.int64), np.zeros((0, 4))))
    assert similar.plan_knn(index, 4_000).strategy == "gather"
    assert similar.plan_knn(index, 5_000).strategy == "gather"
    assert similar.plan_knn(index, 10_000) == similar.KnnPlan("filtered", 911)
    assert similar.plan_knn(index, None) == similar.KnnPlan("index", 16)
    flat = vectors.FaissIndex(None, replace(meta, count=90_000, kind="flat", params={}))
    assert similar.plan_knn(flat, 5_000) == similar.KnnPlan("exact")
    assert similar.plan_knn(flat, 2_000, gather_limit=1_000).strategy == "gather"


def test_ivf_holds_the_stored_float16_vectors_exactly_in_half_the_bytes() -> None:
    rng = np.random.default_rng(2)
    stored = _clustered_vectors(rng, 5_000, 64).astype(np.float16)  # as the database holds
    data = stored.astype(np.float32)
    ids = np.arange(10, 5_010, dtype=np.int64)
    built = vectors.build_index(data, ids, "ivf", {"nlist": 50, "nprobe": 50})
    index = vectors.FaissIndex(built, vectors.IndexMeta(1, 0, 5_000, 64, "ivf", {}))
    picks = np.array([10, 11, 2_500, 5_009])
    np.testing.assert_array_equal(index.reconstruct(picks), data[picks - 10])
    assert built.code_size == 64 * 2
    scores, found = built.search(data[:1], 1)
    assert found[0, 0] == 10 and scores[0, 0] == pytest.approx(float(data[0] @ data[0]), abs=1e-5)


def test_deleted_images_never_come_back_from_a_stale_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = _clustered_vectors(rng, 500, 8)
    ids = np.arange(1, 501, dtype=np.int64)
    index = vectors.FaissIndex(
        vectors.build_index(data, ids, "flat", {}), vectors.IndexMeta(1, 0, 500, 8, "flat", {})
    )
    live = BitMap(range(1, 501)) - BitMap(range(1, 501, 2))  # odd ids deleted since
    found, _plan = similar.nearest(index, data[0], 10, None, live)
    assert len(found) == 10 and all(i % 2 == 0 for i, _ in found)


@pytest.mark.parametrize("kind", ["memory", "segments", "sql"])
def test_similarity_by_embedding_with_a_filter_and_duplicates(
    migrated_url: str, tmp_path: Path, kind: EngineKind
) -> None:
    engine = create_db_engine(migrated_url)
    _generation, data, _catalog = build_index(
        engine, [{"a": 0.9}, {"a": 0.9}, {"b": 0.9}, {"a": 0.9}]
    )
    directions: dict[int, list[float]] = {
        1: [1, 0, 0, 0],
        2: [0.999, 0.04, 0, 0],
        3: [0.9, 0.3, 0, 0],
        4: [0, 1, 0, 0],
    }
    with session_factory(engine)() as session:  # give the fixture images distinct embeddings
        from sqlalchemy import update

        from app.store.models import Embedding

        for position, vector in directions.items():
            unit = np.array(vector, np.float32) / np.linalg.norm(vector)
            session.execute(
                update(Embedding)
                .where(Embedding.image_id == sorted(data.attributes)[position - 1])
                .values(vector=repo.encode_vector(unit))
            )
            repo.bump_version(session, 1)
        session.commit()
    ids = sorted(data.attributes)
    service = _service(migrated_url, tmp_path, kind)
    query = np.array([1, 0, 0, 0], np.float32)
    everything = service.search(SearchRequest("", 10, embedding=query))
    assert [h.id for h in everything.hits] == [ids[0], ids[1], ids[2], ids[3]]
    assert everything.hits[0].similarity == pytest.approx(1.0, abs=1e-3)
    only_a = service.search(SearchRequest("a", 10, embedding=query, hide_duplicates=True))
    assert [h.id for h in only_a.hits] == [ids[3]]  # 1 and 2 are duplicates, 3 lacks a
    assert only_a.count == 3
    by_id = service.search(SearchRequest(f"similar:{ids[0]}", 1))
    assert [h.id for h in by_id.hits] == [ids[1]] and by_id.next_cursor
    rest = service.search(SearchRequest(f"similar:{ids[0]}", 5, by_id.next_cursor))
    assert [h.id for h in rest.hits] == [ids[2], ids[3]] and rest.next_cursor is None
    engine.dispose()


def test_concurrent_searches_while_the_index_changes(migrated_url: str, tmp_path: Path) -> None:
    """Four threads search one service while images are added and deleted: no error, every
    page holds only matching live images, and counts never go backwards past a deletion."""
    import threading

    rng = random.Random(9)
    engine = create_db_engine(migrated_url)
    build_index(engine, random_images(rng, 80), GROUPS)
    service = _service(migrated_url, tmp_path, "memory")
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher(seed: int) -> None:
        local = random.Random(seed)
        try:
            while not stop.is_set():
                query = local.choice(["a", "a -b", "b order:filesize", "~c ~d", "", "e*"])
                result = service.search(SearchRequest(query, 7))
                assert len(result.hits) <= 7 and result.count >= len(result.hits)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    with session_factory(engine)() as session:
        generation = repo.active_generation(session)
        assert generation is not None
        ids = repo.ensure_tags(session, {"a": GROUP_CODE["general"]})
        for i in range(20):
            prediction = repo.StoredPrediction(
                np.array([ids["a"]]), np.array([0.9], np.float32), np.ones(4, np.float32) / 2
            )
            facts = repo.FileFacts(f"/c/{i}.png", f"{i + 500:064x}", 1, 1, 10, 10, "png")
            new = repo.write_images(session, generation.id, [(facts, prediction, None)])
            if i % 3 == 0:
                repo.mark_deleted(session, new)
            session.commit()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    final = service.search(SearchRequest("a", 100))
    assert sum(1 for hit in final.hits if hit.path.startswith("/c/")) == 13
    engine.dispose()


def test_ivf_nprobe_is_calibrated_to_the_target_recall() -> None:
    rng = np.random.default_rng(4)
    count, dim = 20_000, 32
    data = _clustered_vectors(rng, count, dim)
    ids = np.arange(1, count + 1, dtype=np.int64)
    built = vectors.build_index(data, ids, "ivf", {"nlist": 200, "nprobe": 8})
    found = vectors.calibrate(built, Matrix.of(ids, data))
    assert 8 <= found["nprobe"] < 200 and found["calibrated_recall"] >= vectors.TARGET_RECALL
    # Fresh queries (not the calibration sample) reach about the same recall.
    index = vectors.FaissIndex(
        built, vectors.IndexMeta(1, 0, count, dim, "ivf", {"nlist": 200, **found})
    )
    live = BitMap(ids.tolist())
    recall = []
    for q in rng.choice(count, 30, replace=False):
        hits, plan = similar.nearest(index, data[q], 10, None, live)
        assert plan == similar.KnnPlan("index", found["nprobe"])
        exact = ids[np.argsort(-(data @ data[q]))[:10]]
        recall.append(len({i for i, _ in hits} & set(exact.tolist())) / 10)
    assert np.mean(recall) >= 0.93


@pytest.fixture
def pg_migrated_url() -> Iterator[str]:
    from app.store.migrate import upgrade

    for url in postgres_schema_url():
        upgrade(url)
        yield url


@pytest.mark.parametrize("kind", ["memory", "segments"])
def test_searches_go_on_while_another_thread_refreshes(
    pg_migrated_url: str, tmp_path: Path, kind: EngineKind
) -> None:
    """One thread's refresh waits on the database (here a table lock held by another
    connection; at scale, a large delta or a swap to a new generation); searches in other
    threads answer from the state they have instead of queueing behind it. PostgreSQL only:
    SQLite's WAL readers cannot be made to wait."""
    from sqlalchemy import text

    engine = create_db_engine(pg_migrated_url)
    _generation, data, _catalog = build_index(engine, [{"a": 0.9}] * 20, GROUPS)
    service = _service(pg_migrated_url, tmp_path, kind)
    before = service.search(SearchRequest("a", 100)).count
    gone = min(data)
    with session_factory(engine)() as session:
        repo.mark_deleted(session, [gone])
        session.commit()
    blocker = engine.connect()
    blocker.execute(text("LOCK TABLE image_changes IN ACCESS EXCLUSIVE MODE"))
    pool = ThreadPoolExecutor(2)
    try:
        refreshing = pool.submit(service.search, SearchRequest("a", 100))
        with engine.connect() as watcher:  # until the refresh waits on the lock
            for _ in range(200):
                waiting = watcher.execute(
                    text("select count(*) from pg_stat_activity where wait_event_type = 'Lock'")
                ).scalar()
                if waiting:
                    break
                time.sleep(0.05)
        assert waiting and not refreshing.done()
        meanwhile = pool.submit(service.search, SearchRequest("a", 100)).result(timeout=30)
        assert meanwhile.count == before  # the state it had, without waiting
        assert not refreshing.done()
    finally:
        blocker.rollback()
        blocker.close()
    assert refreshing.result(timeout=60).count == before - 1
    assert service.search(SearchRequest("a", 100)).count == before - 1
    pool.shutdown()
    engine.dispose()

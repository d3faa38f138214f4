"""The posting engine stays current through the change log: new, re-tagged, moved and
deleted images are applied as small segments, and the answers equal a fresh load's."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.query import parse
from app.search import postings as postings_module
from app.search.binder import bind
from app.search.catalog import Catalog
from app.search.postings import PostingEngine
from app.store import repository as repo
from app.store.db import create_db_engine, session_factory
from app.store.models import Image, ImageChange, Tag
from tests.support.search_helpers import (
    GROUPS,
    FixtureImages,
    bound,
    brute,
    build_index,
    random_images,
    random_query,
    write_fixture_images,
)


def _catalog(session: Session) -> Catalog:
    rows = session.execute(select(Tag.id, Tag.name, Tag.group, Tag.image_count)).all()
    return Catalog.from_rows([(r[0], r[1], r[2], r[3]) for r in rows], {})


def test_refresh_applies_changes_and_equals_a_fresh_load(migrated_url: str) -> None:
    rng = random.Random(5)
    engine = create_db_engine(migrated_url)
    generation, data, _catalog0 = build_index(engine, random_images(rng, 120), GROUPS)
    with session_factory(engine)() as session:
        current = PostingEngine.load(session, generation)
        for round_ in range(4):
            image_ids = sorted(current.live)
            write_fixture_images(session, generation, random_images(rng, 15), 1000 + 100 * round_)
            retag = rng.sample(image_ids, 5)
            write_fixture_images(
                session, generation, random_images(rng, 5), 2000 + 10 * round_, retag
            )
            repo.mark_deleted(session, rng.sample(sorted(set(image_ids) - set(retag)), 4))
            moved = rng.choice(image_ids)
            repo.move_image(session, moved, f"/moved/{round_}.png", 1, 1)
            session.commit()
            assert not current.is_current(session)
            refreshed = current.refresh(session)
            assert len(refreshed.segments) == len(current.segments) + 1
            assert refreshed.is_current(session)
            fresh = PostingEngine.load(session, generation)
            catalog = _catalog(session)
            assert refreshed.live == fresh.live
            checked = 0
            for _ in range(300):
                plan = bound(random_query(rng), catalog)
                if plan is None:
                    continue
                assert refreshed.search(plan) == fresh.search(plan)
                checked += 1
            assert checked > 250
            path_plan = bind(parse(f"path:/moved/{round_}.png").root, catalog)
            expected = [] if moved not in refreshed.live else [moved]
            assert refreshed.search(path_plan) == expected
            current = refreshed
        assert current.refresh(session) is current  # nothing new: the same engine
    engine.dispose()
    assert data


def test_many_segments_fold_and_a_large_delta_reloads_in_full(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_db_engine(migrated_url)
    generation, _data, _catalog = build_index(engine, [{"a": 0.9}] * 10)
    monkeypatch.setattr(postings_module, "MAX_SEGMENTS", 3)
    with session_factory(engine)() as session:
        current = PostingEngine.load(session, generation)
        bulk = current.segments[0]
        sizes = []
        for round_ in range(4):
            write_fixture_images(session, generation, [{"a": 0.8}], 3000 + round_)
            session.commit()
            current = current.refresh(session)
            sizes.append([len(s.live) for s in current.segments])
        # At the limit the newest deltas are read again as one; the bulk one never is.
        assert sizes == [[10, 1], [10, 1, 1], [10, 3], [10, 3, 1]]
        assert current.segments[0].postings is bulk.postings
        assert len(current.live) == 14
        monkeypatch.setattr(postings_module, "MIN_DELTA_LIMIT", 2)
        write_fixture_images(session, generation, [{"a": 0.8}] * 3, 4000)
        session.commit()
        current = current.refresh(session)
        assert len(current.segments) == 1 and len(current.live) == 17
    engine.dispose()


def test_an_engine_behind_a_pruned_log_reloads(migrated_url: str) -> None:
    engine = create_db_engine(migrated_url)
    generation, _data, _catalog = build_index(engine, [{"a": 0.9}] * 3)
    with session_factory(engine)() as session:
        current = PostingEngine.load(session, generation)
        for round_ in range(3):
            write_fixture_images(session, generation, [{"b": 0.8}], 5000 + round_)
        repo.prune_changes(session, keep=1)
        session.commit()
        assert len(session.scalars(select(ImageChange.seq)).all()) == 1
        refreshed = current.refresh(session)
        assert len(refreshed.segments) == 1 and len(refreshed.live) == 6
        new_ids = session.scalars(select(Image.id).where(Image.path.like("/more/%"))).all()
        assert set(new_ids) <= set(refreshed.live)
    engine.dispose()


@pytest.mark.parametrize("ratio", [0, 10**9])
def test_scans_within_candidates_equal_full_scans(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch, ratio: int
) -> None:
    """Metatags on image values are evaluated either over every image or only over the
    candidates left by the indexed terms; both must give the brute-force answer."""
    monkeypatch.setattr(postings_module, "RESTRICT_RATIO", ratio)
    rng = random.Random(23)
    engine = create_db_engine(migrated_url)
    generation, data, catalog = build_index(engine, random_images(rng), GROUPS)
    with session_factory(engine)() as session:
        current = PostingEngine.load(session, generation)
        assert _agrees_with_brute_force(current, catalog, data, rng, 600) > 500
    engine.dispose()


def test_prebuilt_default_threshold_bitmaps_agree(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tag gets a prebuilt bitmap here; answers stay equal to the brute force, also
    after a refresh has dropped images from the prebuilt segment."""
    monkeypatch.setattr(postings_module, "PREBUILD_MIN", 1)
    rng = random.Random(31)
    engine = create_db_engine(migrated_url)
    generation, data, catalog = build_index(engine, random_images(rng), GROUPS)
    with session_factory(engine)() as session:
        current = PostingEngine.load(session, generation)
        assert current.segments[0]._prebuilt
        gone = rng.sample(sorted(data), 20)
        repo.mark_deleted(session, gone)
        session.commit()
        current = current.refresh(session)
        for image_id in gone:
            del data[image_id]
        assert _agrees_with_brute_force(current, catalog, data, rng, 500) > 400
    engine.dispose()


def _agrees_with_brute_force(
    current: PostingEngine,
    catalog: Catalog,
    data: FixtureImages,
    rng: random.Random,
    queries: int,
) -> int:
    """Assert the engine's answer to random queries equals the brute force's; how many ran."""
    checked = 0
    for _ in range(queries):
        plan = bound(random_query(rng), catalog)
        if plan is None:
            continue
        assert current.search(plan) == brute(plan, data)
        checked += 1
    return checked


@pytest.mark.parametrize("block_rows", [1, 2, 3, 7, 50, 10_000])
def test_postings_grouped_as_blocks_arrive_equal_one_grouping_of_all_rows(
    block_rows: int,
) -> None:
    # A load reads rows in the key's ascending (tag, score, image) order and groups each
    # block as it comes; a tag may run across many blocks (the frequent ones always do), and
    # many images share a score. Every split must give each tag's postings by descending
    # score, ties by ascending image.
    rng = np.random.default_rng(block_rows)
    tags = rng.choice([3, 5, 6, 40, 41, 900], size=300, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    scores = rng.choice([0.05, 0.25, 0.5, 0.75, 0.9, *rng.random(20)], size=300)
    scores = scores.astype(np.float32).astype(np.float64)
    images = rng.permutation(300).astype(np.float64)
    rows = np.column_stack((tags.astype(np.float64), scores, images))
    rows = rows[np.lexsort((images, scores, tags))]
    blocks = [rows[i : i + block_rows] for i in range(0, len(rows), block_rows)]

    grouped = postings_module._grouped(blocks)

    assert sorted(grouped) == [3, 5, 6, 40, 41, 900]
    for tag, found in grouped.items():
        mine = rows[rows[:, 0] == tag]
        expected = mine[np.lexsort((mine[:, 2], -mine[:, 1]))]
        assert found.ids.dtype == np.uint32 and found.neg_scores.dtype == np.float32
        assert found.ids.tolist() == expected[:, 2].astype(int).tolist()
        assert found.neg_scores.tolist() == (-expected[:, 1].astype(np.float32)).tolist()
        assert found.ids.base is None  # owns its memory: no block is kept alive by a view


def test_postings_with_distinct_scores_are_the_rows_reversed() -> None:
    rows = np.array([[7, 0.1, 4], [7, 0.2, 1], [7, 0.3, 9]], dtype=np.float64)
    found = postings_module._grouped([rows])[7]
    assert found.ids.tolist() == [9, 1, 4]
    assert found.neg_scores.tolist() == [-np.float32(s) for s in (0.3, 0.2, 0.1)]
    assert found.ids.base is None


def test_no_blocks_group_to_no_postings() -> None:
    assert postings_module._grouped([]) == {}

"""The tag-engine interface: every engine in the registry, opened by name as the service
opens it, answers the same as the SQL engine and a brute force, through every method the
service uses (evaluate, live, describe, keys, presorted, refreshed), on SQLite and
PostgreSQL; the segment engine also when opened with delta segments on disk."""

from __future__ import annotations

import random
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.query import Order, QueryError, parse
from app.search.binder import bind
from app.search.catalog import Catalog
from app.search.engine import TagEngine, engines, open_engine
from app.search.service import EngineKind
from app.settings import Settings
from app.store import repository as repo
from app.store.db import create_db_engine, session_factory
from app.store.models import Tag
from app.tagger.vocab import GROUPS
from tests.support.search_helpers import GROUPS as FIXTURE_GROUPS
from tests.support.search_helpers import (
    brute,
    build_index,
    random_images,
    random_query,
    write_fixture_images,
)

KINDS = sorted(engines())


def test_the_registry_is_what_settings_and_the_service_accept() -> None:
    assert set(get_args(EngineKind)) == set(KINDS)
    allowed = Settings.model_fields["search_engine"].annotation
    assert set(get_args(allowed)) == set(KINDS)
    with pytest.raises(ValueError, match="unknown search engine 'nosql'"):
        open_engine("nosql", None, 1, Path())  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_every_engine_answers_as_the_brute_force(
    migrated_url: str, kind: str, tmp_path: Path
) -> None:
    rng = random.Random(23)
    images = random_images(rng, 120)
    engine = create_db_engine(migrated_url)
    generation, data, catalog = build_index(engine, images, FIXTURE_GROUPS)
    with session_factory(engine)() as session:
        tags: TagEngine = open_engine(kind, session, generation, tmp_path)
        assert tags.name == kind and tags.generation_id == generation
        assert list(tags.live(session)) == sorted(data)
        checked = 0
        for _ in range(300):
            try:
                plan = bind(parse(random_query(rng)).root, catalog)
            except QueryError:
                continue
            assert list(tags.evaluate(session, plan)) == brute(plan, data)
            checked += 1
        assert checked > 250
        ids = sorted(data)[:5]
        described = tags.describe(session, [*ids, 10**9])
        assert sorted(described) == ids and all(len(v) == 3 for v in described.values())
        counted = tuple((GROUPS.index(g), 0.5) for g in ("general", "character"))
        keys = tags.keys(session, counted, None)(Order("filesize", True), np.array(ids))
        assert len(keys) == len(ids) and (keys > 0).all()
    engine.dispose()


@pytest.mark.parametrize("kind", KINDS)
def test_refreshed_engines_follow_the_database(
    migrated_url: str, kind: str, tmp_path: Path
) -> None:
    engine = create_db_engine(migrated_url)
    generation, data, catalog = build_index(engine, [{"a": 0.9}, {"a": 0.8}, {"b": 0.7}])
    plan = bind(parse("a").root, catalog)
    with session_factory(engine)() as session:
        tags = open_engine(kind, session, generation, tmp_path)
        assert tags.refreshed(session) is tags  # nothing changed
        gone = min(data)
        repo.mark_deleted(session, [gone])
        session.commit()
        current = tags.refreshed(session)
        assert gone not in current.live(session)
        assert gone not in current.evaluate(session, plan)
    engine.dispose()


def test_segment_engines_opened_with_delta_segments_answer_as_sql(
    migrated_url: str, tmp_path: Path
) -> None:
    """The segment engine opened from a set with delta segments on disk (new, re-tagged,
    moved and deleted images written by the end of a run), then with more changes replayed
    on top of them, answers as the SQL engine through every method the service uses."""
    from app.search.segment_engine import SegmentEngine, store_for, write_segments

    rng = random.Random(29)
    engine = create_db_engine(migrated_url)
    generation, _data, _catalog = build_index(engine, random_images(rng, 150), FIXTURE_GROUPS)
    with session_factory(engine)() as session:
        open_engine("segments", session, generation, tmp_path)  # writes the set
        for round_ in range(3):
            ids = sorted(open_engine("sql", session, generation, tmp_path).live(session))
            write_fixture_images(session, generation, random_images(rng, 12), 1000 + 100 * round_)
            retag = rng.sample(ids, 6)
            write_fixture_images(
                session, generation, random_images(rng, 6), 2000 + 10 * round_, retag
            )
            repo.mark_deleted(session, rng.sample(sorted(set(ids) - set(retag)), 5))
            repo.move_image(session, rng.choice(ids), f"/moved/{round_}.png", 1, 1)
            repo.refresh_tag_counts(session, generation)
            session.commit()
            flushed = round_ < 2  # the last round's changes are replayed from SQL
            if flushed:
                write_segments(session, tmp_path, generation)  # what a run's end does
            tags = open_engine("segments", session, generation, tmp_path)
            assert isinstance(tags, SegmentEngine)
            info = store_for(tmp_path, generation).current()
            assert info is not None and len(info.deltas) >= 1
            in_memory = len(tags.postings.segments) - tags.postings.flushed
            assert in_memory == (0 if flushed else 1)
            _assert_as_sql(session, tags, generation, tmp_path, rng)
    engine.dispose()


def _assert_as_sql(
    session: Session, tags: TagEngine, generation: int, data_dir: Path, rng: random.Random
) -> None:
    sql = open_engine("sql", session, generation, data_dir)
    catalog = Catalog.from_rows(
        list(session.execute(select(Tag.id, Tag.name, Tag.group, Tag.image_count)).tuples()),
        {},
    )
    assert tags.live(session) == sql.live(session)
    checked = 0
    for _ in range(300):
        try:
            plan = bind(parse(random_query(rng)).root, catalog)
        except QueryError:
            continue
        assert list(tags.evaluate(session, plan)) == list(sql.evaluate(session, plan))
        checked += 1
    assert checked > 250
    ids = sorted(sql.live(session))
    assert tags.describe(session, [*ids, 10**9]) == sql.describe(session, ids)
    counted = tuple((GROUPS.index(g), 0.5) for g in ("general", "character"))
    for order in (Order("filesize", True), Order("tagcount", False), Order("width", True)):
        want = sql.keys(session, counted, None)(order, np.array(ids))
        np.testing.assert_array_equal(tags.keys(session, counted, None)(order, np.array(ids)), want)

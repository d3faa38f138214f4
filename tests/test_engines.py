"""The tag-engine interface: every engine in the registry, opened by name as the service
opens it, answers the same as the SQL engine and a brute force, through every method the
service uses (evaluate, live, describe, keys, presorted, refreshed), on SQLite and
PostgreSQL."""

from __future__ import annotations

import random
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from app.query import Order, QueryError, parse
from app.search.binder import bind
from app.search.engine import TagEngine, engines, open_engine
from app.search.service import EngineKind
from app.settings import Settings
from app.store import repository as repo
from app.store.db import create_db_engine, session_factory
from app.tagger.vocab import GROUPS
from tests.search_helpers import brute, build_index
from tests.test_search_sql import GROUPS as FIXTURE_GROUPS
from tests.test_search_sql import random_images, random_query

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

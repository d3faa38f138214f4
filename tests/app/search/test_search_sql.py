"""Binding and the SQL engine, on SQLite and PostgreSQL, against the grammar doc's worked
examples and against a brute-force evaluator on random data and random queries."""

from __future__ import annotations

import random

import pytest

from app.query import QueryError, parse
from app.search.binder import bind
from app.search.catalog import Catalog
from app.search.sql_engine import execute
from app.store.db import create_db_engine, session_factory
from tests.support.search_helpers import (
    GROUPS,
    RATING_GROUPS,
    bound,
    brute,
    build_index,
    random_images,
    random_query,
)


def search(
    url: str,
    images: list[dict[str, float]],
    queries: list[str],
    aliases: dict[str, str] | None = None,
    groups: dict[str, str] | None = None,
) -> list[list[int]]:
    """1-based positions of the matching images, per query."""
    engine = create_db_engine(url)
    generation, _data, catalog = build_index(engine, images, groups)
    catalog = Catalog(catalog.tags, aliases or {})
    results = []
    with session_factory(engine)() as session:
        ids = sorted(_data)
        for text in queries:
            found = execute(session, bind(parse(text).root, catalog), generation)
            results.append([ids.index(i) + 1 for i in found])
    engine.dispose()
    return results


def test_worked_examples_of_the_grammar_doc(migrated_url: str) -> None:
    images = [{"aaa": 0.9}, {"aaab": 0.9, "bbb": 0.9}, {"bbb": 0.9, "ccc": 0.9}]
    queries = ["a*", "-a*", "a* -*b", "~aaa ~ccc", "aaa -bbb"]
    assert search(migrated_url, images, queries) == [[1, 2], [3], [1], [1, 3], [1]]


def test_grouping_examples(migrated_url: str) -> None:
    images = [{"a": 0.9, "c": 0.9}, {"b": 0.9, "d": 0.9}, {"a": 0.9}, {"d": 0.9}]
    queries = ["(a or b) (c or d)", "(~a ~b) (~c ~d)", "a c or b d"]
    assert search(migrated_url, images, queries) == [[1, 2]] * 3


def test_aliases_apply_at_query_time(migrated_url: str) -> None:
    images = [{"cat": 0.9}, {"dog": 0.9}]
    result = search(
        migrated_url, images, ["kitten", "-kitten", "doughnut"], aliases={"kitten": "cat"}
    )
    assert result == [[1], [2], []]


def test_thresholds_and_group_defaults(migrated_url: str) -> None:
    images = [{"solo": 0.95}, {"solo": 0.6}, {"solo": 0.31}, {"solo": 0.2}, {"blush": 0.9}]
    queries = [
        "solo",
        "solo,>=0.9",
        "solo,0.5..0.8",
        "solo,0.3",
        "-solo,>=0.5",
        "solo,>=90",
        "solo,<0.3",
        "-blush,>=0.2",
    ]
    assert search(migrated_url, images, queries) == [
        [1, 2, 3],  # general default 0.30
        [1],
        [2],
        [1, 2, 3],
        [3, 4, 5],
        [1],
        [4],
        [1, 2, 3, 4],
    ]


@pytest.mark.parametrize(
    ("query", "position", "words"),
    [
        ("a rating:g", 2, "predicts none"),
        ("(b or rating:s,q)", 6, "ratings"),
    ],
)
def test_filters_the_index_cannot_answer_are_refused(
    migrated_url: str, query: str, position: int, words: str
) -> None:
    engine = create_db_engine(migrated_url)
    _generation, _data, catalog = build_index(engine, [{"a": 0.9}])  # no rating tags
    with pytest.raises(QueryError) as info:
        bind(parse(query).root, catalog)
    assert (info.value.code, info.value.position) == ("unsupported", position)
    assert words in info.value.message
    engine.dispose()


def test_rating_is_the_most_likely_rating_tag(migrated_url: str) -> None:
    images = [
        {"general": 0.9, "sensitive": 0.2},
        {"general": 0.4, "sensitive": 0.4},  # a tie goes to the milder rating
        {"questionable": 0.6, "explicit": 0.61},
        {"a": 0.9},  # no rating stored
        {"sensitive": 0.07},
    ]
    queries = ["rating:g", "rating:s", "rating:explicit", "rating:q,e", "-rating:g"]
    assert search(migrated_url, images, queries, groups=RATING_GROUPS) == [
        [1, 2],
        [5],
        [3],
        [3],
        [3, 4, 5],
    ]


def test_tag_counts_use_each_groups_threshold(migrated_url: str) -> None:
    groups = {"c1": "character", "c2": "character", "ip": "copyright"}
    images = [
        {"a": 0.9, "b": 0.31, "c": 0.29},  # 2 general
        {"a": 0.9, "c1": 0.8, "c2": 0.7, "ip": 0.8},  # 1 general, 1 character, 1 copyright
        {},
        {"c1": 0.76, "c2": 0.99},
    ]
    queries = ["tagcount:2", "gentags:0", "chartags:>=1", "copytags:1", "tagcount:0", "tagcount:>2"]
    assert search(migrated_url, images, queries, groups=groups) == [
        [1, 4],
        [3, 4],
        [2, 4],
        [2],
        [3],
        [2],
    ]


def test_mpixels_and_ratio_compare_rounded_values(migrated_url: str) -> None:
    # sizes: 100x100, 113x129, 126x158, 139x187
    images = [{"a": 0.9}] * 4
    queries = [
        "ratio:1",
        "ratio:0.88",  # 113/129 = 0.8760 rounds to 0.88
        "ratio:<0.8",  # 126/158 = 0.797 rounds to 0.80: not below
        "ratio:1:1",
        "mpixels:0.01",  # 0.01 and 0.014577
        "mpixels:0.02..0.026",  # 0.019908; not 0.025993, which rounds to 0.03
        "mpixels:>0.02",
    ]
    assert search(migrated_url, images, queries) == [
        [1],
        [2],
        [4],
        [1],
        [1, 2],
        [3],
        [4],
    ]


def test_date_and_age_on_the_indexed_time(migrated_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    images = [{"a": 0.9}] * 2
    queries = [
        f"date:{today}",
        f"date:>={today}",
        f"date:<{today}",
        f"date:{today - timedelta(days=400)}..{today - timedelta(days=1)}",
        "age:<1d",
        "age:>1h",
        "age:..1w",
        "-age:<2y",
        "age:1h",  # a bare age is an upper bound: at most an hour old
    ]
    assert search(migrated_url, images, queries) == [
        [1, 2], [1, 2], [], [], [1, 2], [], [1, 2], [], [1, 2],
    ]  # fmt: skip


def test_image_property_metatags(migrated_url: str) -> None:
    images = [{"a": 0.9}] * 4  # sizes 100/113/126/139 wide, 1000/1037/1074/1111 bytes
    queries = [
        "width:>110",
        "filesize:1037..1074",
        "a -width:113",
        f"sha256:{2:064x}",
        "unaliased:a",
        "id:>0 -filesize:<1100",
        f"md5:{1:032x}",
        f"md5:{2:032X}",  # the third image has none: nothing matches
        f"-md5:{0:032x}",
    ]
    assert search(migrated_url, images, queries) == [
        [2, 3, 4],
        [2, 3],
        [1, 3, 4],
        [3],
        [1, 2, 3, 4],
        [4],
        [2],
        [],
        [2, 3, 4],
    ]


def test_sql_engine_equals_brute_force_on_random_queries(migrated_url: str) -> None:
    rng = random.Random(7)
    images = random_images(rng)
    engine = create_db_engine(migrated_url)
    generation, data, catalog = build_index(engine, images, GROUPS)
    checked = 0
    with session_factory(engine)() as session:
        for _ in range(1000):
            text = random_query(rng)
            plan = bound(text, catalog)
            if plan is None:
                continue
            assert execute(session, plan, generation) == brute(plan, data), text
            checked += 1
    engine.dispose()
    assert checked >= 900


def test_posting_engine_equals_sql_and_brute_force(migrated_url: str) -> None:
    from app.search.postings import PostingEngine

    rng = random.Random(11)
    images = random_images(rng)
    engine = create_db_engine(migrated_url)
    generation, data, catalog = build_index(engine, images, GROUPS)
    checked = 0
    with session_factory(engine)() as session:
        postings = PostingEngine.load(session, generation)
        assert postings.is_current(session)
        for _ in range(1000):
            text = random_query(rng)
            plan = bound(text, catalog)
            if plan is None:
                continue
            expected = brute(plan, data)
            assert postings.search(plan) == expected, text
            if checked < 300:  # SQL is slower; a third of the queries is plenty for it
                assert execute(session, plan, generation) == expected, text
            checked += 1
    engine.dispose()
    assert checked >= 900


def test_posting_engine_notices_a_newer_index(migrated_url: str) -> None:
    from app.search.postings import PostingEngine
    from app.store import repository as repo

    engine = create_db_engine(migrated_url)
    generation, data, _catalog = build_index(engine, [{"a": 0.9}, {"b": 0.8}])
    with session_factory(engine)() as session:
        postings = PostingEngine.load(session, generation)
        repo.mark_deleted(session, [min(data)])
        session.commit()
        assert not postings.is_current(session)
        reloaded = PostingEngine.load(session, generation)
        assert list(reloaded.live) == [max(data)]
    engine.dispose()


def test_filetype_and_path_metatags(migrated_url: str) -> None:
    images = [{"a": 0.9}] * 4
    # /fixture/art/00000.png, /fixture/Art_[1]/00001.jpg (jpeg), /fixture/photos/00002.webp,
    # /fixture/art/00003.png
    queries = [
        "filetype:jpg",
        "filetype:jpeg,webp",
        "path:*.png",
        "path:/fixture/Art_[1]/*",
        "path:*ART*",
        "-path:*/art/*",
        "path:/fixture/????/*",
    ]
    assert search(migrated_url, images, queries) == [[2], [2, 3], [1, 4], [2], [], [2, 3], []]

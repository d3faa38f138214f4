"""Implications: the table (chains, cycles, files with errors), the shipped subset, and
query-time implication on every engine against a brute force, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import pytest

from app.query import parse
from app.search.binder import bind
from app.search.catalog import Catalog
from app.search.engine import engines, open_engine
from app.search.plan import PlanNode
from app.store.db import create_db_engine, session_factory
from app.tagrules.implications import (
    PACKAGED,
    Edge,
    Implications,
    RulesError,
    load_implications,
    parse_implications,
    read_implications,
)
from indexer.build_implications import subset
from tests.support.paths import shared_path
from tests.support.search_helpers import GROUPS, brute, build_index, random_images, random_query

# A chain (abc -> ab -> a), a fork (abc -> bc -> b), a cycle (d <-> dd), a self-loop,
# a character implying a copyright, and edges through and to tags the index lacks.
EDGES = [
    Edge("ab", "a"),
    Edge("abc", "ab"),
    Edge("abc", "bc"),
    Edge("bc", "b"),
    Edge("d", "dd"),
    Edge("dd", "d"),
    Edge("char_a", "copy_b"),
    Edge("e", "missing_x"),
    Edge("missing_x", "c"),
    Edge("f_(x)", "nowhere"),
]


def naive_implying(edges: list[Edge], name: str) -> set[str]:
    """Tags from which ``name`` is reachable, by depth-first search: the oracle's own."""
    found: set[str] = set()
    stack = [name]
    while stack:
        node = stack.pop()
        for edge in edges:
            if edge.consequent == node and edge.antecedent not in found:
                found.add(edge.antecedent)
                stack.append(edge.antecedent)
    found.discard(name)
    return found


@pytest.mark.parametrize(
    ("name", "implying", "implied"),
    [
        ("a", {"ab", "abc"}, set()),  # a chain, two steps up
        ("ab", {"abc"}, {"a"}),
        ("abc", set(), {"ab", "a", "bc", "b"}),
        ("b", {"bc", "abc"}, set()),
        ("d", {"dd"}, {"dd"}),  # a cycle: each implies the other, neither itself
        ("dd", {"d"}, {"d"}),
        ("c", {"e", "missing_x"}, set()),  # through a tag nobody has
        ("copy_b", {"char_a"}, set()),
        ("zzz", set(), set()),
    ],
)
def test_the_table_follows_chains_and_cycles(
    name: str, implying: set[str], implied: set[str]
) -> None:
    table = Implications.of(EDGES)
    assert table.implying(name) == implying == naive_implying(EDGES, name)
    if name != "c":
        assert table.implied(name) == implied


def test_a_long_cycle_and_aliases() -> None:
    ring = [Edge(f"t{i}", f"t{(i + 1) % 50}") for i in range(50)]
    table = Implications.of(ring)
    assert table.implying("t0") == {f"t{i}" for i in range(1, 50)}
    aliased = Implications.of(
        [Edge("doughnut", "food"), Edge("donut", "donut")], {"doughnut": "donut"}
    )
    assert aliased.implying("food") == {"donut"} and aliased.edges == (Edge("donut", "food"),)


@pytest.mark.parametrize(
    ("text", "edges"),
    [
        ("antecedent_name,consequent_name\nA ,b\n\nb,b\n", (Edge("a", "b"),)),
        (
            "id,antecedent_name,consequent_name,status\n1,a,b,active\n2,c,d,deleted\n3,e,f,retired\n",
            (Edge("a", "b"),),
        ),
        ("consequent_name,antecedent_name\nb,a\nb,a\n", (Edge("a", "b"),)),
    ],
)
def test_files_parse(text: str, edges: tuple[Edge, ...]) -> None:
    assert parse_implications(text) == edges


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "x.csv, line 1: needs the columns antecedent_name,consequent_name"),
        ("a,b\nc,d\n", "x.csv, line 1: needs the columns"),
        ("antecedent_name,consequent_name\na,b\nc\n", "x.csv, line 3: 1 fields, the header has 2"),
        ("antecedent_name,consequent_name\na,b\n\nc,d e\n", "x.csv, line 4: 'd e' is not a tag"),
        ("antecedent_name,consequent_name\n,b\n", "x.csv, line 2: '' is not a tag name"),
        ('antecedent_name,consequent_name\na,"b\n', "x.csv, line 2"),
    ],
)
def test_files_with_errors_say_the_line(text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_implications(text, "x.csv")
    assert str(caught.value).startswith(message)


def test_an_extra_file_adds_to_the_shipped_table(tmp_path: Path) -> None:
    extra = tmp_path / "mine.csv"
    extra.write_text("antecedent_name,consequent_name\nmy_skirt,skirt\n")
    table = load_implications(extra)
    assert {"plaid_skirt", "my_skirt"} <= table.implying("skirt")
    assert "my_skirt" not in load_implications().implying("skirt")
    with pytest.raises(RulesError, match="unreadable implication file"):
        load_implications(tmp_path / "nope.csv")


def test_the_shipped_table() -> None:
    table = load_implications()
    assert {"plaid_skirt", "pleated_skirt", "miniskirt"} <= table.implying("skirt")
    assert table.implying("long_hair") >= {"very_long_hair", "absurdly_long_hair"}  # a chain
    assert table.implied("2girls") == {"multiple_girls"}
    assert len(table) == len(read_implications(PACKAGED)) > 5000


def test_the_shipped_subset_is_what_the_build_keeps() -> None:
    implications = shared_path("aliases", "danbooru_tag_implications_2025-05-01.csv")
    aliases_file = shared_path("aliases", "danbooru_tag_aliases_2025-05-01.csv")
    pixai = shared_path("tags", "pixai_v0.9_tags_v0.9_13k.json")
    wd = shared_path("tags", "wd_v3_selected_tags.csv")
    from indexer.build_aliases import vocabulary

    with aliases_file.open(newline="", encoding="utf-8") as handle:
        aliases = {
            r["antecedent_name"]: r["consequent_name"]
            for r in csv.DictReader(handle)
            if r["status"] == "active"
        }
    names = {aliases.get(n, n) for p in (pixai, wd) for n in vocabulary(p)}
    with implications.open(newline="", encoding="utf-8") as handle:
        every = [
            (r["antecedent_name"], r["consequent_name"])
            for r in csv.DictReader(handle)
            if r["status"] == "active"
        ]
    shipped = [(e.antecedent, e.consequent) for e in read_implications(PACKAGED)]
    assert sorted(shipped) == subset(every, names)
    # For every vocabulary tag the subset answers what the whole dump answers.
    whole = Implications.of(Edge(a, b) for a, b in every)
    small = load_implications()
    for name in sorted(names)[::7]:
        assert small.implying(name) & names == whole.implying(name) & names, name


def test_the_build_keeps_chains_through_tags_outside_the_vocabulary() -> None:
    edges = [("a", "x"), ("x", "b"), ("y", "a"), ("b", "z"), ("q", "r")]
    assert subset(edges, {"a", "b"}) == [("a", "x"), ("x", "b")]  # y, z, q, r: none known


# --- query time ---------------------------------------------------------------------------


def _ids_of(catalog: Catalog) -> dict[int, set[int]]:
    """Tag id -> ids of the index's tags implying it, from the naive search."""
    implying: dict[int, set[int]] = defaultdict(set)
    for name, info in catalog.tags.items():
        for other in naive_implying(EDGES, name):
            if other in catalog.tags:
                implying[info.id].add(catalog.tags[other].id)
    return implying


def _positions(url: str, images: list[dict[str, float]], queries: list[str]) -> list[list[int]]:
    engine = create_db_engine(url)
    generation, data, plain = build_index(engine, images, GROUPS)
    catalog = Catalog(plain.tags, {}, Implications.of(EDGES))
    ids = sorted(data)
    results = []
    with session_factory(engine)() as session:
        tags = open_engine("sql", session, generation, Path())
        for text in queries:
            found = tags.evaluate(session, bind(parse(text).root, catalog))
            results.append([ids.index(i) + 1 for i in found])
    engine.dispose()
    return results


def test_tag_terms_match_the_tags_implying_them(migrated_url: str) -> None:
    images = [
        {"abc": 0.9, "a": 0.1},  # 1: a only through a two-step chain
        {"ab": 0.2, "a": 0.35},  # 2
        {"a": 0.6},  # 3
        {"d": 0.8},  # 4: the cycle d <-> dd
        {"dd": 0.5, "e": 0.9},  # 5: e -> missing_x -> c
        {"char_a": 0.8},  # 6: a character implies a copyright (both at 0.75)
        {"char_a": 0.7, "copy_b": 0.2},  # 7
    ]
    queries = {
        "a": [1, 2, 3],
        "unimplied:a": [2, 3],
        "a,>=0.5": [1, 3],
        "a,<0.4": [2],  # the highest of a, ab, abc must be below 0.4
        "a,0.3..0.7": [2, 3],
        "-a": [4, 5, 6, 7],
        "-unimplied:a": [1, 4, 5, 6, 7],
        "b": [1],
        "dd": [4, 5],
        "d": [4, 5],
        "d,>=0.6": [4],
        "c": [5],
        "copy_b": [6],
        "a*": [1, 2, 3],  # a, ab, abc
        "*b": [1, 6],  # ab, copy_b and what implies them (image 2: ab at 0.2)
        "ab -a": [],
        "~a ~d": [1, 2, 3, 4, 5],
        "unaliased:a": [1, 2, 3],  # aliases off, implications still on
    }
    assert _positions(migrated_url, images, list(queries)) == list(queries.values())


@pytest.mark.parametrize("kind", sorted(engines()))
def test_every_engine_answers_implied_queries_as_the_brute_force(
    migrated_url: str, kind: str, tmp_path: Path
) -> None:
    rng = random.Random(29)
    images = random_images(rng, 120)
    engine = create_db_engine(migrated_url)
    generation, data, plain = build_index(engine, images, GROUPS)
    implied = Catalog(plain.tags, {}, Implications.of(EDGES))
    implying = _ids_of(plain)
    assert implying  # the fixture's tags do imply each other
    with session_factory(engine)() as session:
        tags = open_engine(kind, session, generation, tmp_path)
        checked = differs = 0
        for _ in range(300):
            text = random_query(rng)
            try:
                off: PlanNode = bind(parse(text).root, plain)
                on = bind(parse(text).root, implied)
            except Exception:  # refused queries: the parser's own tests cover them
                continue
            expected = brute(off, data, implying)
            assert list(tags.evaluate(session, on)) == expected, text
            differs += expected != brute(off, data)
            checked += 1
    engine.dispose()
    assert checked > 250 and differs > 30  # implications changed many answers

"""Unknown tags and "did you mean": the trigram measure against PostgreSQL's own pg_trgm, the
ranking and bounds on the real PixAI vocabulary when present, and the API, the command line
and the empty index end to end on a real index."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from app.api import create_app
from app.query import parse
from app.search.catalog import Catalog, TagInfo
from app.search.suggest import (
    MAX_UNKNOWN,
    TrigramIndex,
    describe,
    edit_distance,
    index_for,
    trigrams,
    unknown_tags,
)
from app.store.aliases import load_aliases
from app.store.migrate import upgrade
from tests.support.api_helpers import ApiEnv, indexed_env, settings_for, wait_ready
from tests.support.cli import run_sagashi
from tests.support.paths import SHARED_DATA
from tests.support.postgres import PG_URL

VOCABULARY = SHARED_DATA / "tags/pixai_v0.9_tags_v0.9_13k.json"
PAIRS = [
    ("hatsune_mik", "hatsune_miku"),
    ("lnog_hair", "long_hair"),
    ("blue_hari", "blue_hair"),
    ("1gril", "1girl"),
    ("hu_tao", "hu_tao_(genshin_impact)"),
    ("^_^", "smile"),
    ("Cat", "cat_ears"),
    ("ミク", "ミクさん"),
]


def small_catalog() -> Catalog:
    counts = {
        "1girl": 900,
        "long_hair": 500,
        "blue_hair": 100,
        "blue_hat": 40,
        "hatsune_miku": 60,
        "hatsune_miku_(append)": 3,
        "hu_tao_(genshin_impact)": 20,
        "twintails": 80,
    }
    tags = {name: TagInfo(n, "general", count) for n, (name, count) in enumerate(counts.items())}
    return Catalog(tags, {"twin_tails": "twintails", "hutao": "hu_tao_(genshin_impact)"})


def test_trigrams_and_similarity_are_pg_trgm_s() -> None:
    engine = create_engine(PG_URL)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
            for a, b in PAIRS:
                shown = connection.execute(text("SELECT show_trgm(:a)"), {"a": a}).scalar_one()
                if a.isascii():  # pg_trgm shows a hash for a trigram of other characters
                    assert set(shown) == trigrams(a), a
                wanted = connection.execute(
                    text("SELECT similarity(:a, :b)"), {"a": a, "b": b}
                ).scalar_one()
                ours = trigrams(a) & trigrams(b)
                union = trigrams(a) | trigrams(b)
                assert abs(len(ours) / max(1, len(union)) - wanted) < 1e-6, (a, b)
    except DBAPIError as exc:  # no server, or no pg_trgm to compare with
        pytest.skip(f"PostgreSQL with pg_trgm needed: {type(exc).__name__}")
    finally:
        engine.dispose()


def test_typos_first_then_similarity_then_use() -> None:
    index = TrigramIndex(small_catalog())
    names = [s.name for s in index.suggest("blue_hari")]
    assert names[:2] == ["blue_hair", "blue_hat"]  # one edit beats more shared trigrams
    assert [s.name for s in index.suggest("1gril")] == ["1girl"]  # a transposition
    best = index.suggest("hatsune_mik")[0]
    assert (best.name, best.similarity, best.count) == ("hatsune_miku", 0.786, 60)
    alias = index.suggest("twin_tail")[0]
    assert (alias.name, alias.alias) == ("twintails", "twin_tails")
    assert index.suggest("zzzz") == []
    assert edit_distance("kitten", "sitting", 2) == 3 and edit_distance("ab", "ba", 1) == 1


def test_unknown_tags_of_a_query() -> None:
    catalog = small_catalog()
    root = parse("1girl -hatsune_mik (blue_hari or hutao) twin_tails,>=0.5 hatsune_mik").root
    found = unknown_tags(root, catalog)
    # aliases are known tags; each unknown one once, in query order
    assert [u.tag for u in found] == ["hatsune_mik", "blue_hari"]
    assert describe(found)[0] == (
        "no tag 'hatsune_mik' in the index; did you mean hatsune_miku, hatsune_miku_(append)?"
    )
    many = parse(" ".join(f"nosuch{i}" for i in range(20))).root
    assert len(unknown_tags(many, catalog)) == MAX_UNKNOWN
    assert index_for(catalog) is index_for(catalog)  # built once per catalog


@pytest.mark.skipif(not VOCABULARY.exists(), reason=f"needs {VOCABULARY}")
def test_the_real_vocabulary_is_indexed_once_and_answers_in_milliseconds() -> None:
    names = list(json.loads(VOCABULARY.read_text())["tag_map"])
    catalog = Catalog(
        {name: TagInfo(n, "general", len(names) - n) for n, name in enumerate(names)},
        load_aliases(None),
    )
    started = time.perf_counter()
    index = TrigramIndex(catalog)
    built = time.perf_counter() - started
    assert len(index.names) > len(names) > 13_000
    assert built < 5.0  # 0.13 s on the development machine
    started = time.perf_counter()
    for word in ("hatsune_mik", "lnog_hair", "1gril", "smlie", "x" * 10_000, "a_b_c_d_e_f_g"):
        index.suggest(word)
    assert (time.perf_counter() - started) / 6 < 0.1  # about 1 ms each
    assert index.suggest("lnog_hair")[0].name == "long_hair"
    assert index.suggest("smlie")[0].name == "smile"


@pytest.fixture(scope="module", params=["sqlite"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    yield from indexed_env(request, tmp_path_factory.mktemp("suggest"), tiny_pixai_dir, images=4)


def test_the_api_says_which_tags_it_does_not_know(env: ApiEnv) -> None:
    body = env.client.get("/api/search", params={"q": "solo -hatsune_mik"}).json()
    assert [u["tag"] for u in body["suggestions"]] == ["hatsune_mik"]
    first = body["suggestions"][0]["suggestions"][0]
    assert first["name"] == "hatsune_miku" and first["group"] == "character"
    assert set(first) == {"name", "group", "count", "similarity", "alias"}
    assert body["notice"] is None
    known = env.client.get("/api/search", params={"q": "solo 1girl"}).json()
    assert known["suggestions"] == []
    listed = env.client.get("/api/search", params={"q": ""}).json()
    similar = env.client.post(
        "/api/similar", json={"image_id": listed["items"][0]["id"], "q": "1gril"}
    ).json()
    assert similar["suggestions"][0]["suggestions"][0]["name"] == "1girl"


def test_the_command_line_says_it_too(env: ApiEnv) -> None:
    environment = {
        "SAGASHI_DATABASE_URL": str(env.settings.database_url),
        "SAGASHI_DATA_DIR": str(env.settings.data_dir),
    }
    result = run_sagashi("search", "hatsune_mik", env=environment)
    assert result.returncode == 0, result.stderr
    assert "no tag 'hatsune_mik' in the index; did you mean hatsune_miku" in result.stderr
    assert result.stdout == ""
    quiet = run_sagashi("search", "hatsune_miku", env=environment)
    assert "no tag" not in quiet.stderr


def test_an_empty_index_says_how_to_fill_it(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagashi.db'}"
    upgrade(url)
    settings = settings_for(tmp_path, url, tiny_pixai_dir)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        body = client.get("/api/search", params={"q": "1girl"}).json()
    assert body["count"] == 0 and "sagashi index" in body["notice"]
    result = run_sagashi(
        "search", "1girl", env={"SAGASHI_DATABASE_URL": url, "SAGASHI_DATA_DIR": str(tmp_path)}
    )
    assert result.returncode == 2 and "run 'sagashi index'" in result.stderr

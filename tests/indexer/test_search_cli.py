"""``sagashi search`` as a user runs it, on a real index built by ``sagashi index``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.search.build import search_service
from app.search.service import SearchRequest
from app.settings import Settings
from indexer.cli import query_embedding
from indexer.cli_common import open_store
from tests.support.cli import run_sagashi
from tests.support.index_helpers import make_image

run = run_sagashi  # every call passes the index's environment


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("search")
    for i in range(6):
        make_image(root / "art" / f"{i}.png", seed=i, size=(48 + 8 * i, 40))
    env = {"SAGASHI_DATA_DIR": str(root / "data"), "SAGASHI_MODEL_DIR": str(tiny_pixai_dir)}
    assert run("db", "upgrade", env=env).returncode == 0
    assert run("index", str(root / "art"), env=env).returncode == 0
    return env


def test_search_prints_paths_and_json(indexed: dict[str, str]) -> None:
    everything = run("search", "", env=indexed)
    assert everything.returncode == 0, everything.stderr
    paths = everything.stdout.splitlines()
    assert len(paths) == 6 and all(p.endswith(".png") for p in paths)
    wide = run("search", "width:>=80", "--json", env=indexed)
    hits = [json.loads(line) for line in wide.stdout.splitlines()]
    assert sorted(h["width"] for h in hits) == [80, 88]
    assert all(set(h) == {"id", "path", "width", "height"} for h in hits)
    limited = run("search", "limit:2", env=indexed)
    assert len(limited.stdout.splitlines()) == 2


def test_tag_queries_agree_with_negation(indexed: dict[str, str]) -> None:
    with_tag = set(run("search", "1girl,>=0.5", env=indexed).stdout.splitlines())
    # A query starting with "-" follows "--", or the shell's argument parser takes it for an
    # option.
    without = set(run("search", "--", "-1girl,>=0.5", env=indexed).stdout.splitlines())
    everything = set(run("search", "", env=indexed).stdout.splitlines())
    assert with_tag | without == everything and not with_tag & without


def test_a_query_may_start_with_a_dash(indexed: dict[str, str]) -> None:
    after_dashes = run("search", "--", "-1girl,>=0.5", env=indexed)
    assert after_dashes.returncode == 0, after_dashes.stderr
    expected = after_dashes.stdout.splitlines()
    assert expected  # some images lack the tag at that threshold
    bare = run("search", "-1girl,>=0.5", env=indexed)
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.splitlines() == expected
    # options keep working on either side of it, flags and options with values alike
    limited = run("search", "-1girl,>=0.5", "--limit", "1", "--json", env=indexed)
    assert limited.returncode == 0, limited.stderr
    assert [json.loads(line)["path"] for line in limited.stdout.splitlines()] == expected[:1]
    before = run("search", "--limit", "1", "-1girl,>=0.5", env=indexed)
    assert before.stdout.splitlines() == expected[:1]
    # a mistyped long option is still reported as one, not searched for
    typo = run("search", "-1girl", "--limt", "1", env=indexed)
    assert typo.returncode == 2
    assert typo.stderr.splitlines()[-1] == (
        "Error: No such option: --limt (Possible options: --like, --limit)"
    )


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        (["search"], "Usage: sagashi search [OPTIONS] QUERY"),
        (["index"], "Usage: sagashi index [OPTIONS] PATHS..."),
        (["tag"], "Usage: sagashi tag [OPTIONS] PATHS..."),
        (["jobs", "show"], "Usage: sagashi jobs show [OPTIONS] JOB_ID"),
    ],
)
def test_usage_lines_name_the_arguments(command: list[str], usage: str) -> None:
    missing = run(*command)
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == usage
    assert run(*command, "--help").stdout.splitlines()[0] == usage


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("1girl (solo", "bad query at character 6 (unbalanced_parens)"),
        ("a --solo", "bad query at character 3 (syntax): only one prefix per term"),
        ("md5:" + "0" * 31, "bad query at character 4 (bad_value): expected 32 hexadecimal"),
        ("rating:g", "(unsupported): rating: needs a model that predicts ratings"),
        ("ratng:s", "bad query at character 0 (unknown_metatag)"),
        ("1girl order:similarity", "bad query at character 6 (bad_value): order:similarity needs"),
        ("similar:3 order:id", "character 10 (conflicting_singleton): a similarity search is"),
        ("path:/a\x01b", "character 7 (bad_character): the query holds the control character"),
    ],
)
def test_bad_queries_exit_2_with_the_position(
    indexed: dict[str, str], query: str, message: str
) -> None:
    result = run("search", query, env=indexed)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("sagashi: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_order_and_cursor_pages_cover_every_image_once(indexed: dict[str, str]) -> None:
    for order in ("", "order:id", "order:filesize", "order:mpixels_asc", "order:random"):
        seen: list[str] = []
        cursor: list[str] = []
        for _ in range(10):
            result = run("search", order, "--limit", "4", *cursor, env=indexed)
            assert result.returncode == 0, result.stderr
            seen += result.stdout.splitlines()
            nexts = [
                line.split("--cursor ")[1]
                for line in result.stderr.splitlines()
                if "--cursor" in line
            ]
            if not nexts:
                break
            cursor = ["--cursor", nexts[0]]
        assert len(seen) == 6 and len(set(seen)) == 6, order
    by_pixels = [
        json.loads(line)
        for line in run("search", "order:mpixels", "--json", env=indexed).stdout.splitlines()
    ]
    pixels = [h["width"] * h["height"] for h in by_pixels]
    assert pixels == sorted(pixels, reverse=True)


def test_similar_by_id_ranks_by_cosine_and_excludes_the_image(indexed: dict[str, str]) -> None:
    first = json.loads(run("search", "limit:1", "--json", env=indexed).stdout.splitlines()[0])
    result = run("search", f"similar:{first['id']}", "--json", env=indexed)
    assert result.returncode == 0, result.stderr
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 5 and first["id"] not in {h["id"] for h in hits}
    scores = [h["similarity"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    filtered = run("search", f"similar:{first['id']} width:>=80", "--json", env=indexed)
    widths = sorted(json.loads(line)["width"] for line in filtered.stdout.splitlines())
    assert widths == [w for w in (80, 88) if w != first["width"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["similar:999999"], "no image 999999 in the index"),
        (["", "--cursor", "not-a-cursor"], "the cursor is malformed"),
        (
            ["order:filesize", "--cursor", "eyJvIjoiaWRfZGVzYyIsImsiOjUsImkiOjUsInMiOjB9"],
            "belongs to order 'id_desc'",
        ),
        (["", "--engine", "nosql"], "--engine must be memory, segments, sql"),
    ],
)
def test_bad_similar_ids_and_cursors_exit_2(
    indexed: dict[str, str], args: list[str], message: str
) -> None:
    result = run("search", *args, env=indexed)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_sql_engine_gives_the_same_pages(indexed: dict[str, str]) -> None:
    for query in ("", "order:filesize", "order:score:1girl", "width:>50 order:tagcount"):
        memory = run("search", query, "--json", env=indexed).stdout
        sql = run("search", query, "--json", "--engine", "sql", env=indexed).stdout
        assert memory == sql and memory, query


def test_reindex_where_selects_with_a_query(indexed: dict[str, str]) -> None:
    good = run("reindex", "--where", "width:>=80", "--json", env=indexed)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["retagged"] == 2
    bad = run("reindex", "--where", "width:>=80 (", env=indexed)
    assert bad.returncode == 2
    assert "bad --where query at character 11 (unbalanced_parens)" in bad.stderr


def test_like_an_image_file(indexed: dict[str, str], tmp_path: Path, tiny_wd_dir: Path) -> None:
    art = Path(indexed["SAGASHI_DATA_DIR"]).parent / "art"
    result = run("search", "", "--like", str(art / "2.png"), "--json", env=indexed)
    assert result.returncode == 0, result.stderr
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    # The same file is in the index: it comes first, as itself (IQDB-style exact match).
    assert hits[0]["path"].endswith("2.png") and hits[0]["similarity"] > 0.999
    hidden = run("search", "", "--like", str(art / "2.png"), "--hide-duplicates", env=indexed)
    assert not any(p.endswith("2.png") for p in hidden.stdout.splitlines())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = run("search", "", "--like", str(broken), env=indexed)
    assert bad.returncode == 2 and "broken.png: not_an_image" in bad.stderr, bad.stderr
    other = run(
        "search", "", "--like", str(art / "2.png"), "--model-dir", str(tiny_wd_dir), env=indexed
    )
    assert other.returncode == 2 and "--like needs the model that built the index" in other.stderr


@pytest.mark.parametrize(
    "where",
    [
        "1girl,>=0.5 or width:>=80",
        "-(1girl,>=0.5 or width:<50)",
        "(width:>=80 or path:*1.png) -width:88",
    ],
)
def test_like_takes_any_filter_shape(indexed: dict[str, str], where: str) -> None:
    art = Path(indexed["SAGASHI_DATA_DIR"]).parent / "art"
    matching = {
        json.loads(x)["id"]
        for x in run("search", "--json", "--", where, env=indexed).stdout.splitlines()
    }
    result = run("search", "--like", str(art / "2.png"), "--json", "--", where, env=indexed)
    assert result.returncode == 0, result.stderr
    assert {json.loads(line)["id"] for line in result.stdout.splitlines()} == matching


def test_search_settings_term_limit_and_engine(indexed: dict[str, str]) -> None:
    limited = run("search", "a b c", env={**indexed, "SAGASHI_MAX_QUERY_TERMS": "2"})
    assert limited.returncode == 2 and "(too_many_terms)" in limited.stderr, limited.stderr
    memory = run("search", "order:filesize", env=indexed)
    sql = run("search", "order:filesize", env={**indexed, "SAGASHI_SEARCH_ENGINE": "sql"})
    assert sql.returncode == 0 and sql.stdout == memory.stdout and memory.stdout
    bad = run("search", "", env={**indexed, "SAGASHI_SEARCH_ENGINE": "elastic"})
    assert bad.returncode == 2 and "SAGASHI_SEARCH_ENGINE" in bad.stderr, bad.stderr


@pytest.mark.parametrize("query", ["", "width:>=40"])  # the flat index, and the gather plan
def test_an_exact_copy_is_at_similarity_one_and_nothing_above(
    indexed: dict[str, str], query: str
) -> None:
    # In this process, through the functions 'sagashi search --like' calls (the CLI itself is
    # test_like_an_image_file's): a run per image would load the model once per image.
    settings = Settings(
        data_dir=Path(indexed["SAGASHI_DATA_DIR"]), model_dir=Path(indexed["SAGASHI_MODEL_DIR"])
    )
    engine = open_store(settings)
    service = search_service(engine, settings)
    paths = [hit.path for hit in service.search(SearchRequest("", 100)).hits]
    assert len(paths) == 6
    for path in paths:
        embedding = query_embedding(engine, settings, Path(path))
        hits = service.search(SearchRequest(query, 100, embedding=embedding)).hits
        assert hits[0].path == path and hits[0].similarity == 1.0, hits[0]
        assert all(h.similarity is not None and -1.0 <= h.similarity < 1.0 for h in hits[1:]), hits
    engine.dispose()

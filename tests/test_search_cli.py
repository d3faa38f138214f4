"""``sagashi search`` as a user runs it, on a real index built by ``sagashi index``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_sagashi
from tests.index_helpers import make_image

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


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("1girl (solo", "bad query at character 6 (unbalanced_parens)"),
        ("a --solo", "bad query at character 3 (syntax): only one prefix per term"),
        ("date:2024-01-01", "bad query at character 0 (unsupported): the metatag 'date:'"),
        ("ratng:s", "bad query at character 0 (unknown_metatag)"),
        ("1girl order:id", "bad query at character 6 (unsupported): the metatag 'order:'"),
        ("similar:3", "bad query at character 0 (unsupported): the metatag 'similar:'"),
    ],
)
def test_bad_queries_exit_2_with_the_position(
    indexed: dict[str, str], query: str, message: str
) -> None:
    result = run("search", query, env=indexed)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("sagashi: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr

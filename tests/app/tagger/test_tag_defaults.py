"""One table of default thresholds, read from settings by every consumer.

Each test sets SAGASHI_THRESHOLD_* (or SAGASHI_TOP_K) away from the card's values and checks
one consumer against the scores the index stored: ``sagashi search``, ``sagashi tag``,
``sagashi export``, the search API with its top tags, the gallery's ``/api/defaults`` and the
drop-in tagging endpoints. Before, search kept the card's 0.30/0.75 whatever the settings.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api import create_app
from app.store.db import create_db_engine, session_factory
from app.store.models import Image, ImageTag, Tag
from app.tagger.defaults import CARD
from app.tagger.vocab import GROUPS
from tests.support.api_helpers import make_library, settings_for, wait_ready
from tests.support.cli import run_sagashi

Scores = dict[str, dict[str, tuple[float, str]]]  # path -> tag -> (score, group)


@dataclass(frozen=True)
class Indexed:
    root: Path
    env: dict[str, str]
    scores: Scores
    tag: str  # a general tag whose matches change between 0.30 and ``general``
    general: float  # a general threshold other than the card's
    character: float  # a character threshold other than the card's

    def expected(self, tag: str, threshold: float) -> set[str]:
        return {p for p, tags in self.scores.items() if tags.get(tag, (0.0, ""))[0] >= threshold}

    def settings_env(self, **extra: str) -> dict[str, str]:
        return {
            **self.env,
            "SAGASHI_THRESHOLD_GENERAL": str(self.general),
            "SAGASHI_THRESHOLD_CHARACTER": str(self.character),
            **extra,
        }


def stored_scores(url: str) -> Scores:
    engine = create_db_engine(url)
    with session_factory(engine)() as session:
        rows = session.execute(
            select(Image.path, Tag.name, ImageTag.score, Tag.group)
            .join(ImageTag, ImageTag.image_id == Image.id)
            .join(Tag, Tag.id == ImageTag.tag_id)
        ).all()
    engine.dispose()
    found: Scores = {}
    for path, name, score, group in rows:
        found.setdefault(path, {})[name] = (float(score), GROUPS[group])
    return found


def pick_general(scores: Scores) -> tuple[str, float]:
    """A tag and a threshold above 0.30 under which some, not all, of its matches stay."""
    by_tag: dict[str, list[float]] = {}
    for tags in scores.values():
        for name, (score, group) in tags.items():
            if group == "general" and score >= CARD.general:
                by_tag.setdefault(name, []).append(score)
    for name, values in sorted(by_tag.items(), key=lambda item: -len(item[1])):
        values.sort()
        if len(values) >= 3 and values[0] < values[-1]:
            middle = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
            return name, round(max(middle, CARD.general + 0.01), 4)
    raise AssertionError("the fixture needs a general tag with spread scores")


def pick_character(scores: Scores) -> float:
    """A character threshold below the card's 0.75 that some stored character score passes."""
    values = sorted(
        s for tags in scores.values() for s, g in tags.values() if g == "character" and s < 0.75
    )
    assert values, "the fixture needs character scores under 0.75"
    return round(max(values[len(values) // 2], 0.06), 4)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path) -> Indexed:
    root = tmp_path_factory.mktemp("defaults")
    make_library(root / "library", 14)
    env = {"SAGASHI_DATA_DIR": str(root / "data"), "SAGASHI_MODEL_DIR": str(tiny_pixai_dir)}
    assert run_sagashi("db", "upgrade", env=env).returncode == 0
    assert run_sagashi("index", str(root / "library"), env=env).returncode == 0
    scores = stored_scores(f"sqlite:///{root / 'data' / 'sagashi.db'}")
    tag, general = pick_general(scores)
    return Indexed(root, env, scores, tag, general, pick_character(scores))


def test_cli_search_uses_the_threshold_settings(indexed: Indexed) -> None:
    default = run_sagashi("search", indexed.tag, "--limit", "100", env=indexed.env)
    assert set(default.stdout.split()) == indexed.expected(indexed.tag, CARD.general)
    tuned = run_sagashi("search", indexed.tag, "--limit", "100", env=indexed.settings_env())
    assert tuned.returncode == 0, tuned.stderr
    assert set(tuned.stdout.split()) == indexed.expected(indexed.tag, indexed.general)
    assert indexed.expected(indexed.tag, indexed.general) < indexed.expected(
        indexed.tag, CARD.general
    )


@pytest.fixture(scope="module")
def client(indexed: Indexed, tiny_pixai_dir: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{indexed.root / 'data' / 'sagashi.db'}"
    settings = settings_for(
        indexed.root,
        url,
        tiny_pixai_dir,
        threshold_general=indexed.general,
        threshold_character=indexed.character,
        threshold_copyright=0.2,
        threshold_rating=0.9,
        top_k=5,
    )
    with TestClient(create_app(settings)) as api:
        wait_ready(api)
        yield api


def test_api_search_and_its_top_tags_use_the_threshold_settings(
    indexed: Indexed, client: TestClient
) -> None:
    body = client.get("/api/search", params={"q": indexed.tag, "limit": 100, "tags": 100}).json()
    assert {item["path"] for item in body["items"]} == indexed.expected(
        indexed.tag, indexed.general
    )
    everything = client.get("/api/search", params={"limit": 100, "tags": 100}).json()["items"]
    levels = {"general": indexed.general, "character": indexed.character, "copyright": 0.2}
    for item in everything:
        stored = indexed.scores[item["path"]]
        listed = {t["name"] for t in item["tags"]}
        wanted = {n for n, (s, g) in stored.items() if g in levels and s >= levels[g]}
        assert {n for n in listed if stored[n][1] in levels} == wanted
    # A request's own threshold still wins over the settings.
    loose = client.get("/api/search", params={"q": indexed.tag, "threshold_general": 0.3})
    assert loose.json()["count"] == len(indexed.expected(indexed.tag, CARD.general))


def test_the_gallery_reads_the_defaults_from_the_server(
    indexed: Indexed, client: TestClient
) -> None:
    assert client.get("/api/defaults").json() == {
        "thresholds": {
            "general": indexed.general,
            "character": indexed.character,
            "copyright": 0.2,
            "rating": 0.9,
        },
        "top_k": 5,
        "url_fetch": False,
    }


def test_drop_in_tagging_endpoints_use_the_settings(indexed: Indexed, client: TestClient) -> None:
    image = Path(sorted(indexed.scores)[0]).read_bytes()
    body = {"inputs": {"image": base64.b64encode(image).decode()}}
    tags = client.post("/api/tag", json=body).json()
    ranked = [t for t in tags if t["group"] in ("general", "character")]
    assert 0 < len(ranked) <= 5  # SAGASHI_TOP_K
    for t in ranked:
        assert t["score"] >= (indexed.general if t["group"] == "general" else indexed.character)
    given = {**body, "parameters": {"top_k": 50, "threshold_general": 0.05}}
    loose = client.post("/", json=given).json()  # a request's own parameters still win
    assert len([t for t in loose if t["group"] == "general"]) > len(ranked)
    labels = client.post("/", content=image, headers={"content-type": "image/png"}).json()
    assert [x["label"] for x in labels] == [t["tag"] for t in tags]


def test_cli_tag_uses_the_threshold_and_top_k_settings(indexed: Indexed) -> None:
    image = sorted(indexed.scores)[0]
    env = indexed.settings_env(SAGASHI_TOP_K="4")
    result = run_sagashi("tag", image, "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    tags = json.loads(result.stdout.splitlines()[0])["results"]
    ranked = [t for t in tags if t["group"] in ("general", "character")]
    assert len(ranked) <= 4
    for t in ranked:
        assert t["score"] >= (indexed.general if t["group"] == "general" else indexed.character)
    loose = run_sagashi("tag", image, "--format", "json", env=indexed.env)
    default = json.loads(loose.stdout.splitlines()[0])["results"]
    assert len([t for t in default if t["group"] in ("general", "character")]) > len(ranked)


def test_export_uses_the_threshold_and_top_k_settings(indexed: Indexed, tmp_path: Path) -> None:
    out = tmp_path / "captions"
    env = indexed.settings_env(SAGASHI_THRESHOLD_COPYRIGHT="0.9", SAGASHI_TOP_K="6")
    args = ("--captions", str(out), "--underscores", "--order", "character,copyright,general")
    result = run_sagashi("export", *args, env=env)
    assert result.returncode == 0, result.stderr
    library = indexed.root / "library"
    levels = {"general": indexed.general, "character": indexed.character, "copyright": 0.9}
    for path, stored in indexed.scores.items():
        caption = (out / Path(path).relative_to(library)).with_suffix(".txt").read_text()
        names = [n for n in caption.strip().split(", ") if n]
        for name in names:
            score, group = stored[name]
            assert score >= levels[group], (name, score, group)
        assert len([n for n in names if stored[n][1] != "copyright"]) <= 6
        above = [n for n, (s, g) in stored.items() if g != "copyright" and s >= levels[g]]
        assert len([n for n in names if stored[n][1] != "copyright"]) == min(6, len(above))


def test_tag_counts_are_taken_at_the_threshold_settings(
    indexed: Indexed, tiny_pixai_dir: Path
) -> None:
    # Run last in this module: it changes the stored counts (autocomplete, wildcard order).
    result = run_sagashi("index", str(indexed.root / "library"), env=indexed.settings_env())
    assert result.returncode == 0, result.stderr
    url = f"sqlite:///{indexed.root / 'data' / 'sagashi.db'}"
    settings = settings_for(indexed.root, url, tiny_pixai_dir, threshold_general=indexed.general)
    with TestClient(create_app(settings)) as api:
        wait_ready(api)
        found = api.get("/api/tags", params={"prefix": indexed.tag, "limit": 100}).json()
    count = next(t["count"] for t in found if t["name"] == indexed.tag)
    assert count == len(indexed.expected(indexed.tag, indexed.general))


def test_top_k_bounds_the_whole_pixai_answer(indexed: Indexed, client: TestClient) -> None:
    image = Path(sorted(indexed.scores)[0]).read_bytes()
    inputs = {"image": base64.b64encode(image).decode()}
    loose = {"threshold_general": 0.0, "threshold_character": 0.0}
    parameters = {**loose, "top_k": 100}
    everything = client.post("/api/tag", json={"inputs": inputs, "parameters": parameters}).json()
    assert len(everything) > 5 and {"copyright", "character"} <= {t["group"] for t in everything}
    for top_k in (1, 5):
        parameters = {**loose, "top_k": top_k}
        tags = client.post("/api/tag", json={"inputs": inputs, "parameters": parameters}).json()
        assert tags == everything[:top_k]

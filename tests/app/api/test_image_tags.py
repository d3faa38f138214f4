"""The image page's tags (GET /api/images/{id}): every stored tag with its image count and
whether it reaches the thresholds in force, so that each tag listed as the image's own finds
the image when searched at those thresholds, and each other one is below them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api_helpers import ApiEnv, QueryParams, indexed_env


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    yield from indexed_env(request, tmp_path_factory.mktemp("tags"), tiny_pixai_dir, images=6)


def ids_for(env: ApiEnv, q: str, **thresholds: float) -> set[int]:
    params: QueryParams = {"q": q, "limit": 1000, "tags": 0, **thresholds}
    body = env.client.get("/api/search", params=params).json()
    return {item["id"] for item in body["items"]}


@pytest.mark.parametrize(
    "thresholds",
    [{}, {"threshold_general": 0.6, "threshold_character": 0.2, "threshold_copyright": 0.2}],
)
def test_confident_tags_find_the_image_and_the_others_do_not(
    env: ApiEnv, thresholds: dict[str, float]
) -> None:
    checked = confident = 0
    for image_id in sorted(ids_for(env, ""))[:3]:
        detail = env.client.get(f"/api/images/{image_id}", params=thresholds).json()
        defaults = env.client.get("/api/defaults").json()["thresholds"]
        assert detail["thresholds"] == {**defaults, **{k[10:]: v for k, v in thresholds.items()}}
        scores = [t["score"] for t in detail["tags"]]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.05
        for tag in detail["tags"]:
            assert tag["confident"] == (tag["score"] >= detail["thresholds"][tag["group"]])
            completed = env.client.get("/api/tags", params={"prefix": tag["name"], "limit": 50})
            counts = {t["name"]: t["count"] for t in completed.json()}
            assert tag["count"] == counts[tag["name"]]  # as autocomplete counts it
            if tag["group"] == "rating":
                continue  # rating: is the likeliest rating, not a score threshold
            found = image_id in ids_for(env, tag["name"], **thresholds)
            assert found == tag["confident"], (image_id, tag, detail["thresholds"])
            checked += 1
            confident += tag["confident"]
    assert checked > 10 and 0 < confident < checked  # both kinds were seen


def test_thresholds_are_checked(env: ApiEnv) -> None:
    image_id = min(ids_for(env, ""))
    bad = env.client.get(f"/api/images/{image_id}", params={"threshold_general": 2})
    assert bad.status_code == 422 and bad.json()["error"]["code"]

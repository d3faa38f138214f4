"""The HTTP API on a real index (SQLite and PostgreSQL): every endpoint, checked against
the database and the search service, and every error path in the one JSON error shape."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select, update

from app.query import QueryError, parse
from app.search.details import tags_of
from app.store.db import session_factory
from app.store.models import Image, ImageTag, Tag
from app.store.repository import now
from app.store.thumbs import ThumbnailCache
from app.tagger.batching import predict_stacked, prepare
from app.tagger.defaults import CARD
from app.tagger.policy import OutputPolicy
from app.tagger.vocab import GROUPS
from tests.support.api_helpers import (
    ADMIN_TOKEN,
    ApiEnv,
    ErrorBody,
    JsonResponse,
    QueryParams,
    hf_error_of,
    indexed_env,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    yield from indexed_env(request, tmp_path_factory.mktemp("api"), tiny_pixai_dir)


def error_of(response: JsonResponse, status: int) -> ErrorBody:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"])
    assert body["error"]["message"]
    error: ErrorBody = body["error"]
    return error


def live_ids(env: ApiEnv) -> list[int]:
    with session_factory(env.engine)() as session:
        return sorted(
            session.scalars(select(Image.id).where(Image.deleted_at.is_(None))).all(), reverse=True
        )


def stored_tags(env: ApiEnv) -> dict[int, dict[str, tuple[float, str]]]:
    with session_factory(env.engine)() as session:
        rows = session.execute(
            select(ImageTag.image_id, Tag.name, ImageTag.score, Tag.group).join(
                Tag, Tag.id == ImageTag.tag_id
            )
        ).all()
    found: dict[int, dict[str, tuple[float, str]]] = {}
    for image_id, name, score, group in rows:
        found.setdefault(image_id, {})[name] = (score, GROUPS[group])
    return found


def common_tag(env: ApiEnv) -> str:
    """A general tag about half the images carry at the default threshold."""
    counts: dict[str, int] = {}
    for tags in stored_tags(env).values():
        for name, (score, group) in tags.items():
            if group == "general" and score >= CARD.thresholds()["general"]:
                counts[name] = counts.get(name, 0) + 1
    total = len(live_ids(env))
    partial = [(abs(c - total / 2), n) for n, c in counts.items() if 1 < c < total]
    assert partial, "the fixture needs a tag on some images only"
    return min(partial)[1]


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


# --- operations -------------------------------------------------------------------------


def test_health_ready_and_metrics(env: ApiEnv) -> None:
    assert env.client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = env.client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["checks"]["index"] == f"{len(live_ids(env))} images"
    env.client.get("/api/search", params={"q": "1girl"})
    text = env.client.get("/metrics").text
    assert f"sagashi_index_images {float(len(live_ids(env)))}" in text
    assert 'sagashi_http_request_duration_seconds_count{method="GET",route="/api/search"' in text
    assert "sagashi_jobs" in text


def test_unknown_route_and_method_use_the_error_shape(env: ApiEnv) -> None:
    assert error_of(env.client.get("/api/nope"), 404)["code"] == "not_found"
    assert error_of(env.client.delete("/api/search"), 405)["code"] == "method_not_allowed"


# --- search -----------------------------------------------------------------------------


def test_search_pages_cover_every_image_once_newest_first(env: ApiEnv) -> None:
    seen: list[int] = []
    cursor = None
    for _ in range(20):
        params: dict[str, str | int] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        body = env.client.get("/api/search", params=params).json()
        assert body["count"] == len(live_ids(env))
        assert body["estimated"] is False
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == live_ids(env)


def test_search_items_carry_top_tags_at_the_thresholds(env: ApiEnv) -> None:
    stored = stored_tags(env)
    body = env.client.get("/api/search", params={"limit": 100, "tags": 3}).json()
    for item in body["items"]:
        expected = sorted(
            (
                (score, name)
                for name, (score, group) in stored[item["id"]].items()
                if score >= CARD.thresholds()[group]
            ),
            key=lambda t: (-t[0], t[1]),
        )[:3]
        assert [(t["name"]) for t in item["tags"]] == [name for _, name in expected]
        assert [t["score"] for t in item["tags"]] == sorted(
            (t["score"] for t in item["tags"]), reverse=True
        )
        with session_factory(env.engine)() as session:
            image = session.get(Image, item["id"])
            assert image is not None
            assert (item["path"], item["width"], item["height"]) == (
                image.path,
                image.width,
                image.height,
            )


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.6, 0.9])
def test_tag_query_and_threshold_parameter_match_the_stored_scores(
    env: ApiEnv, threshold: float
) -> None:
    tag = common_tag(env)
    stored = stored_tags(env)
    expected = sorted(
        (i for i, tags in stored.items() if tags.get(tag, (0.0, ""))[0] >= threshold),
        reverse=True,
    )
    by_param = env.client.get(
        "/api/search", params={"q": tag, "limit": 100, "threshold_general": threshold}
    ).json()
    by_term = env.client.get("/api/search", params={"q": f"{tag},>={threshold}", "limit": 100})
    assert [i["id"] for i in by_param["items"]] == expected
    assert [i["id"] for i in by_term.json()["items"]] == expected
    assert by_param["count"] == len(expected)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("1girl (solo", "query_unbalanced_parens"),
        ("order:bogus", "query_bad_value"),
        ("ordr:id", "query_unknown_metatag"),
        ('path:"/art', "query_unterminated_quote"),
        ("1girl id:>abc", "query_bad_value"),
        ("md5:0123456789abcdef0123456789abcde", "query_bad_value"),
        ("path:/art/a\x00b.png", "query_bad_character"),  # a 500 on PostgreSQL before
        ('path:"a\x00"', "query_bad_character"),
        ("1girl solo\x1b", "query_bad_character"),
        ("-(a or b\x7f)", "query_bad_character"),
        ("smile,\x00.5", "query_bad_character"),
    ],
)
def test_bad_queries_are_400_with_the_parser_position(env: ApiEnv, query: str, code: str) -> None:
    error = error_of(env.client.get("/api/search", params={"q": query}), 400)
    assert error["code"] == code
    try:
        parse(query)
    except QueryError as exc:
        assert error["position"] == exc.position
    else:  # valid syntax the engine refuses: the position still points into the query
        assert 0 <= error["position"] < len(query)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 5000},
        {"limit": "ten"},
        {"q": "a" * 10_001},
        {"threshold_general": 1.5},
        {"threshold_character": -0.1},
        {"tags": 101},
    ],
)
def test_bad_search_parameters_are_422(env: ApiEnv, params: QueryParams) -> None:
    error = error_of(env.client.get("/api/search", params=params), 422)
    assert error["code"] == "invalid_request"
    assert "query." in error["message"]


def test_bad_cursors_are_400(env: ApiEnv) -> None:
    assert error_of(env.client.get("/api/search?cursor=garbage"), 400)["code"] == "bad_cursor"
    first = env.client.get("/api/search", params={"limit": 2, "q": "order:filesize"}).json()
    other = env.client.get("/api/search", params={"cursor": first["next_cursor"]})
    assert error_of(other, 400)["code"] == "bad_cursor"


# --- images -----------------------------------------------------------------------------


def test_image_detail_lists_every_stored_tag(env: ApiEnv) -> None:
    image_id = live_ids(env)[0]
    body = env.client.get(f"/api/images/{image_id}").json()
    stored = stored_tags(env)[image_id]
    assert {t["name"]: (t["score"], t["group"]) for t in body["tags"]} == {
        name: (round(score, 6), group) for name, (score, group) in stored.items()
    }
    assert body["id"] == image_id
    assert len(body["sha256"]) == 64
    assert [t["score"] for t in body["tags"]] == sorted(
        (t["score"] for t in body["tags"]), reverse=True
    )


@pytest.mark.parametrize("suffix", ["", "/file", "/thumb"])
def test_unknown_and_invalid_image_ids(env: ApiEnv, suffix: str) -> None:
    assert error_of(env.client.get(f"/api/images/999999{suffix}"), 404)["code"] == "not_found"
    assert error_of(env.client.get(f"/api/images/0{suffix}"), 422)["code"] == "invalid_request"
    assert error_of(env.client.get(f"/api/images/abc{suffix}"), 422)["code"] == "invalid_request"
    huge = env.client.get(f"/api/images/{2**40}{suffix}")
    assert error_of(huge, 422)["code"] == "invalid_request"


def test_file_is_served_with_type_etag_and_304(env: ApiEnv) -> None:
    with session_factory(env.engine)() as session:
        jpeg = session.scalars(select(Image).where(Image.format == "jpeg")).first()
        png = session.scalars(select(Image).where(Image.format == "png")).first()
    assert jpeg is not None and png is not None
    for image, media in ((jpeg, "image/jpeg"), (png, "image/png")):
        response = env.client.get(f"/api/images/{image.id}/file")
        assert response.status_code == 200
        assert response.headers["content-type"] == media
        assert response.content == Path(image.path).read_bytes()
        assert response.headers["etag"] == f'"{image.sha256}"'
        again = env.client.get(
            f"/api/images/{image.id}/file", headers={"If-None-Match": response.headers["etag"]}
        )
        assert again.status_code == 304
        assert again.content == b""


def test_thumbnail_is_a_small_webp_cached_with_etag(env: ApiEnv) -> None:
    image_id = live_ids(env)[0]
    response = env.client.get(f"/api/images/{image_id}/thumb")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/webp"
    thumb = PILImage.open(io.BytesIO(response.content))
    assert thumb.format == "WEBP"
    assert max(thumb.size) <= env.settings.thumb_size
    etag = response.headers["etag"]
    assert (
        env.client.get(f"/api/images/{image_id}/thumb", headers={"If-None-Match": etag}).status_code
        == 304
    )
    assert list((env.settings.data_dir / "thumbs").rglob("*.webp"))


def test_files_outside_the_library_roots_are_never_served(env: ApiEnv) -> None:
    secret = env.root / "outside" / "secret.png"
    secret.parent.mkdir(exist_ok=True)
    PILImage.new("RGB", (8, 8)).save(secret)
    image_id = live_ids(env)[-1]
    with session_factory(env.engine)() as session:
        original = session.get(Image, image_id)
        assert original is not None
        original_path = original.path
    tricks = [str(secret), f"{env.library}/../outside/secret.png"]
    link = env.library / "link.png"
    link.symlink_to(secret)
    tricks.append(str(link))
    try:
        for path in tricks:
            with session_factory(env.engine)() as session:
                session.execute(update(Image).where(Image.id == image_id).values(path=path))
                session.commit()
            for suffix in ("/file", "/thumb"):
                error = error_of(env.client.get(f"/api/images/{image_id}{suffix}"), 404)
                assert error["code"] == "outside_roots"
        with session_factory(env.engine)() as session:
            missing = str(env.library / "gone.png")
            session.execute(update(Image).where(Image.id == image_id).values(path=missing))
            session.commit()
        error = error_of(env.client.get(f"/api/images/{image_id}/file"), 404)
        assert error["code"] == "file_missing"
    finally:
        link.unlink()
        with session_factory(env.engine)() as session:
            session.execute(update(Image).where(Image.id == image_id).values(path=original_path))
            session.commit()


# --- similar ----------------------------------------------------------------------------


def image_path(env: ApiEnv, image_id: int) -> Path:
    with session_factory(env.engine)() as session:
        image = session.get(Image, image_id)
        assert image is not None
        return Path(image.path)


def test_similar_by_id_excludes_the_image_and_sorts_by_similarity(env: ApiEnv) -> None:
    image_id = live_ids(env)[3]
    body = env.client.post("/api/similar", json={"image_id": image_id, "k": 5}).json()
    ids = [item["id"] for item in body["items"]]
    scores = [item["similarity"] for item in body["items"]]
    assert image_id not in ids
    assert len(ids) == 5
    assert scores == sorted(scores, reverse=True)
    assert body["count"] == len(live_ids(env)) - 1


def test_similar_by_upload_and_base64_find_the_same_image_first(env: ApiEnv) -> None:
    image_id = live_ids(env)[2]
    data = image_path(env, image_id).read_bytes()
    uploaded = env.client.post(
        "/api/similar", files={"file": ("q.png", data, "image/png")}, data={"k": "3"}
    ).json()
    encoded = env.client.post(
        "/api/similar", json={"image": base64.b64encode(data).decode(), "k": 3}
    ).json()
    data_url = env.client.post(
        "/api/similar",
        json={"image": "data:image/png;base64," + base64.b64encode(data).decode(), "k": 3},
    ).json()
    for body in (uploaded, encoded, data_url):
        assert body["items"][0]["id"] == image_id
        assert body["items"][0]["similarity"] == pytest.approx(1.0, abs=2e-3)
    hidden = env.client.post(
        "/api/similar",
        files={"file": ("q.png", data, "image/png")},
        data={"k": "3", "hide_duplicates": "true"},
    ).json()
    assert image_id not in [item["id"] for item in hidden["items"]]


def test_similar_keeps_the_filter(env: ApiEnv) -> None:
    tag = common_tag(env)
    matching = {
        item["id"]
        for item in env.client.get("/api/search", params={"q": tag, "limit": 100}).json()["items"]
    }
    image_id = live_ids(env)[0]
    for q in (tag, f"-{tag}"):
        body = env.client.post("/api/similar", json={"image_id": image_id, "q": q, "k": 50}).json()
        ids = {item["id"] for item in body["items"]}
        assert ids
        assert ids <= (matching if q == tag else set(live_ids(env)) - matching)


SIMILAR_FILTERS = [
    "{t} or width:>=100",  # "or" at the top: a 400 (singleton misuse) when glued to similar:
    "({t} or width:>=100) filetype:png",
    "-({t} or width:>=100)",
    "~{t} ~width:<70",
    "(({t} or filetype:jpg) -width:<60) or path:*img1*",
    "-{t} or -filetype:png",
    "width:50..100 or height:>1000",
]


@pytest.mark.parametrize("shape", SIMILAR_FILTERS)
def test_similar_takes_any_filter_shape(env: ApiEnv, shape: str) -> None:
    q = shape.format(t=common_tag(env))
    listed = env.client.get("/api/search", params={"q": q, "limit": 1000}).json()["items"]
    matching = {item["id"] for item in listed}
    image_id = live_ids(env)[0]
    response = env.client.post("/api/similar", json={"image_id": image_id, "q": q, "k": 100})
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [item["id"] for item in body["items"]]
    assert set(ids) == matching - {image_id} and body["count"] == len(ids)
    scores = [item["similarity"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    upload = env.client.post(
        "/api/similar",
        files={"file": ("q.png", image_path(env, image_id).read_bytes(), "image/png")},
        data={"q": q, "k": "100"},
    ).json()
    assert {item["id"] for item in upload["items"]} == matching


def test_similar_by_id_with_a_similar_term_in_the_filter(env: ApiEnv) -> None:
    first, second = live_ids(env)[:2]
    same = env.client.post("/api/similar", json={"image_id": first, "q": f"similar:{first}"})
    assert same.status_code == 200 and first not in {i["id"] for i in same.json()["items"]}
    other = env.client.post("/api/similar", json={"image_id": first, "q": f"similar:{second}"})
    assert error_of(other, 400)["code"] == "query_conflicting_singleton"
    ored = env.client.post("/api/similar", json={"image_id": first, "q": f"a or similar:{second}"})
    assert error_of(ored, 400)["code"] == "query_singleton_misuse"
    nul = env.client.post("/api/similar", json={"image_id": first, "q": "path:a\x00"})
    assert error_of(nul, 400)["code"] == "query_bad_character"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"image_id": 999999}}, 404, "not_found"),
        ({"json": {}}, 422, "invalid_request"),
        ({"json": {"image_id": 1, "image": "AAAA"}}, 422, "invalid_request"),
        ({"json": {"image_id": 1, "k": 0}}, 422, "invalid_request"),
        ({"json": {"image_id": 1, "bogus": 1}}, 422, "invalid_request"),
        ({"json": {"image_id": 1, "q": "(("}}, 400, "query_unbalanced_parens"),
        ({"json": {"image_id": 1, "q": "order:id"}}, 400, "query_conflicting_singleton"),
        ({"json": {"image": "not base64!!"}}, 400, "bad_base64"),
        ({"json": {"image": base64.b64encode(b"hello, not an image").decode()}}, 415, "bad_image"),
        ({"json": {"image": ""}}, 415, "bad_image"),
        ({"json": {"url": "https://example.com/a.png"}}, 400, "url_fetch_disabled"),
        ({"json": [1, 2]}, 422, "invalid_request"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "bad_json",
        ),
        (
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"files": {"file": ("a.txt", b"plain text", "text/plain")}}, 415, "bad_image"),
        ({"files": {"file": ("a.png", b"", "image/png")}}, 415, "bad_image"),
        ({"files": {"other": ("a.png", b"x", "image/png")}}, 422, "invalid_request"),
        (
            {"files": {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png")}},
            415,
            "bad_image",
        ),
    ],
)
def test_similar_errors(env: ApiEnv, kwargs: dict, status: int, code: str) -> None:  # type: ignore[type-arg]
    assert error_of(env.client.post("/api/similar", **kwargs), status)["code"] == code


# --- tags -------------------------------------------------------------------------------


def test_autocomplete_by_prefix_most_used_first(env: ApiEnv) -> None:
    with session_factory(env.engine)() as session:
        tags = session.execute(select(Tag.name, Tag.image_count, Tag.group)).all()
    for prefix in ("h", "s", "1", "amiya", "zz"):
        expected = sorted(
            ((n, c) for n, c, _ in tags if n.startswith(prefix)), key=lambda t: (-t[1], t[0])
        )[:5]
        body = env.client.get("/api/tags", params={"prefix": prefix, "limit": 5}).json()
        assert [(t["name"], t["count"]) for t in body] == expected
    typed = env.client.get("/api/tags", params={"prefix": "Hu Tao", "limit": 5}).json()
    assert [t["name"] for t in typed] == ["hu_tao_(genshin_impact)"]
    assert typed[0]["group"] == "character"
    negated = env.client.get("/api/tags", params={"prefix": "-hu_t"}).json()
    assert [t["name"] for t in negated] == ["hu_tao_(genshin_impact)"]


def test_autocomplete_errors(env: ApiEnv) -> None:
    assert error_of(env.client.get("/api/tags?limit=0"), 422)["code"] == "invalid_request"
    assert error_of(env.client.get("/api/tags?limit=101"), 422)["code"] == "invalid_request"
    assert env.client.get("/api/tags", params={"prefix": "\u2603*()"}).json() == []


@pytest.mark.parametrize("order", ["frequency", "cosine"])
def test_related_tags_count_co_occurrence(env: ApiEnv, order: str) -> None:
    tag = common_tag(env)
    stored = stored_tags(env)

    def kept(tags: dict[str, tuple[float, str]]) -> set[str]:
        return {n for n, (s, g) in tags.items() if s >= CARD.thresholds()[g]}

    with_tag = [kept(t) for t in stored.values() if tag in kept(t)]
    body = env.client.get(f"/api/tags/{tag}/related", params={"order": order, "limit": 500}).json()
    assert body["tag"] == tag
    assert body["count"] == body["sampled"] == len(with_tag)
    for row in body["related"]:
        together = sum(1 for tags in with_tag if row["name"] in tags)
        assert row["frequency"] == pytest.approx(together / len(with_tag), abs=1e-6)
        assert 0 < row["cosine"] <= 1
    assert tag not in [row["name"] for row in body["related"]]
    keys = [row[order] for row in body["related"]]
    assert keys == sorted(keys, reverse=True)


def test_related_tag_errors(env: ApiEnv) -> None:
    assert error_of(env.client.get("/api/tags/no_such_tag/related"), 404)["code"] == "not_found"
    assert error_of(env.client.get("/api/tags/1girl/related?order=best"), 422)
    assert error_of(env.client.get("/api/tags/1girl/related?sample=1"), 422)


# --- tagging ----------------------------------------------------------------------------


def direct_tags(env: ApiEnv, data: bytes, policy: OutputPolicy) -> list[tuple[str, float, str]]:
    prepared = prepare(data, env.tagger.preprocess, env.settings.max_image_pixels, True)
    assert prepared.pixels is not None
    prediction = predict_stacked(env.tagger, [prepared.pixels])
    return [
        (t.tag, round(t.score, 6), t.group)
        for t in policy.select(prediction.probs[0], env.tagger.vocab)
    ]


class TagParameters(TypedDict):
    """A tagging request's parameters, named as OutputPolicy's fields."""

    top_k: int
    threshold_general: float
    threshold_character: float


def test_pixai_tag_endpoint_matches_the_tagger(env: ApiEnv) -> None:
    data = image_path(env, live_ids(env)[1]).read_bytes()
    parameters: TagParameters = {"top_k": 5, "threshold_general": 0.1, "threshold_character": 0.5}
    body = env.client.post(
        "/api/tag",
        json={"inputs": {"image": base64.b64encode(data).decode()}, "parameters": parameters},
    ).json()
    # top_k bounds the whole answer, copyrights included
    expected = direct_tags(env, data, OutputPolicy(**parameters))[:5]
    assert len(body) == 5
    assert [(t["tag"], t["score"], t["group"]) for t in body] == [
        (n, pytest.approx(s, abs=1e-4), g) for n, s, g in expected
    ]
    defaults = env.client.post(
        "/api/tag", json={"inputs": {"image": base64.b64encode(data).decode()}}
    ).json()
    assert [t["tag"] for t in defaults] == [n for n, _, _ in direct_tags(env, data, OutputPolicy())]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"inputs": {}}, 422, "invalid_request"),
        ({"inputs": {"image": "AAAA", "url": "https://x/y.png"}}, 422, "invalid_request"),
        ({"inputs": {"image": "AAAA"}, "parameters": {"top_k": 0}}, 422, "invalid_request"),
        (
            {"inputs": {"image": "AAAA"}, "parameters": {"threshold_general": 2}},
            422,
            "invalid_request",
        ),
        ({"inputs": {"image": "%%%"}}, 400, "bad_base64"),
        ({"inputs": {"image": "AAAA"}}, 415, "bad_image"),
        ({"inputs": {"url": "http://127.0.0.1/a.png"}}, 400, "url_fetch_disabled"),
        ({"parameters": {}}, 422, "invalid_request"),
    ],
)
def test_pixai_tag_errors(env: ApiEnv, body: dict, status: int, code: str) -> None:  # type: ignore[type-arg]
    assert hf_error_of(env.client.post("/api/tag", json=body), status) == code


def test_danbooru_evaluate_endpoint(env: ApiEnv) -> None:
    paths = [image_path(env, i) for i in live_ids(env)[:2]]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    body = env.client.post(
        "/evaluate", files=files, data={"threshold": "0.2", "limit": "4", "format": "json"}
    ).json()
    assert [item["filename"] for item in body] == [p.name for p in paths]
    for item, path in zip(body, paths, strict=True):
        expected = direct_tags(
            env,
            path.read_bytes(),
            OutputPolicy(top_k=4, threshold_general=0.2, threshold_character=0.2),
        )
        assert list(item["tags"]) == [n for n, _, _ in expected][:4]
        assert all(score >= 0.2 for score in item["tags"].values())


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        (None, {"format": "json"}, 422, "invalid_request"),
        ([("file", ("a.png", b"junk", "image/png"))], {"format": "json"}, 415, "bad_image"),
        ([("file", ("a.png", b"junk", "image/png"))], {"format": "xml"}, 400, "bad_format"),
        ([("file", ("a.png", b"junk", "image/png"))], {"threshold": "x"}, 422, "invalid_request"),
        ([("file", ("a.png", b"junk", "image/png"))], {"limit": "0"}, 422, "invalid_request"),
    ],
)
def test_evaluate_errors(env: ApiEnv, files, data, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    response = env.client.post("/evaluate", files=files, data=data)
    assert error_of(response, status)["code"] == code


# --- admin ------------------------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/admin/reindex"),
        ("get", "/api/admin/jobs/1"),
        ("get", "/api/admin/jobs"),
        ("post", "/api/admin/index/reload"),
    ],
)
def test_admin_needs_the_token(env: ApiEnv, method: str, path: str) -> None:
    call = getattr(env.client, method)
    missing = call(path)
    assert error_of(missing, 401)["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (
        error_of(call(path, headers={"Authorization": "Bearer wrong"}), 403)["code"] == "forbidden"
    )
    assert error_of(call(path, headers={"Authorization": f"Basic {ADMIN_TOKEN}"}), 401)


def test_admin_reload_and_jobs(env: ApiEnv) -> None:
    body = env.client.post("/api/admin/index/reload", headers=AUTH).json()
    assert body["images"] == len(live_ids(env))
    queued = env.client.post("/api/admin/reindex", headers=AUTH, json={"action": "rebuild_faiss"})
    assert queued.status_code == 202
    job = queued.json()
    assert job["state"] == "queued" and job["kind"] == "rebuild_faiss"
    shown = env.client.get(f"/api/admin/jobs/{job['id']}", headers=AUTH).json()
    assert shown["id"] == job["id"] and shown["failures"] == []
    listed = env.client.get("/api/admin/jobs", headers=AUTH).json()
    assert job["id"] in [j["id"] for j in listed]
    assert (
        error_of(env.client.get("/api/admin/jobs/99999", headers=AUTH), 404)["code"] == "not_found"
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"action": "index"}, 422, "invalid_request"),
        ({"action": "index", "paths": ["relative/dir"]}, 422, "invalid_request"),
        ({"action": "rebuild_faiss", "paths": ["/x"]}, 422, "invalid_request"),
        ({"action": "reindex", "where": "tag (("}, 400, "query_unbalanced_parens"),
        ({"action": "explode"}, 422, "invalid_request"),
        ({"action": "index", "paths": ["/x"], "extra": 1}, 422, "invalid_request"),
    ],
)
def test_admin_job_errors(env: ApiEnv, body: dict, status: int, code: str) -> None:  # type: ignore[type-arg]
    response = env.client.post("/api/admin/reindex", headers=AUTH, json=body)
    assert error_of(response, status)["code"] == code


def test_top_tags_helper_agrees_with_detail(env: ApiEnv) -> None:
    image_id = live_ids(env)[0]
    with session_factory(env.engine)() as session:
        generation = session.scalar(select(ImageTag.generation_id).limit(1))
        assert generation is not None
        everything = tags_of(session, generation, [image_id])[image_id]
    detail = env.client.get(f"/api/images/{image_id}").json()["tags"]
    assert [t.name for t in everything] == [t["name"] for t in detail]
    assert np.all(np.diff([t.score for t in everything]) <= 0)


def test_a_file_that_no_longer_decodes_is_415_and_deleted_images_404(env: ApiEnv) -> None:
    image_id = live_ids(env)[-2]
    broken = env.library / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with session_factory(env.engine)() as session:
        image = session.get(Image, image_id)
        assert image is not None
        original = (image.path, image.sha256)
        session.execute(
            update(Image).where(Image.id == image_id).values(path=str(broken), sha256="0" * 64)
        )
        session.commit()
    try:
        error = error_of(env.client.get(f"/api/images/{image_id}/thumb"), 415)
        assert error["code"] == "bad_image"
        with session_factory(env.engine)() as session:
            session.execute(update(Image).where(Image.id == image_id).values(deleted_at=now()))
            session.commit()
        for suffix in ("", "/file", "/thumb"):
            assert error_of(env.client.get(f"/api/images/{image_id}{suffix}"), 404)
    finally:
        broken.unlink()
        with session_factory(env.engine)() as session:
            session.execute(
                update(Image)
                .where(Image.id == image_id)
                .values(path=original[0], sha256=original[1], deleted_at=None)
            )
            session.commit()


def test_thumbnail_paths_are_never_shaped_by_stored_values(tmp_path: Path) -> None:
    cache = ThumbnailCache(tmp_path / "thumbs", 64, 10_000_000)
    good = "ab" * 32
    assert cache.path_for(good) == tmp_path / "thumbs" / "64" / "ab" / f"{good}.webp"
    for hostile in ("../../../etc/passwd", "/abs", "AB" * 32, ""):
        path = cache.path_for(hostile)
        assert path.parent.parent.parent == tmp_path / "thumbs"
        assert path.name != hostile and ".." not in path.parts

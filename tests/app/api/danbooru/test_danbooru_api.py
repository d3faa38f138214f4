"""The Danbooru-compatible API over a real index (the tiny PixAI model tagging real image
files, on SQLite and PostgreSQL), held against our own API for the same question: posts
and their fields, Danbooru's pages (numbers, b<id>, a<id>, the page limit and its 410),
limits clamped as Danbooru clamps them, only=, md5, random, counts, tags, autocomplete,
related tags, IQDB by post id and by upload, and Danbooru's error shape."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.api.danbooru.contract import PAGE_LIMIT, POSTS_MAX_LIMIT
from tests.support.api_helpers import IMAGES, ApiEnv, indexed_env


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    yield from indexed_env(request, tmp_path_factory.mktemp("danbooru"), tiny_pixai_dir)


def ids_of(env: ApiEnv, **params: Any) -> list[int]:
    response = env.client.get("/posts.json", params=params)
    assert response.status_code == 200, response.text
    return [post["id"] for post in response.json()]


def our_ids(env: ApiEnv, q: str = "", limit: int = 1000, **params: Any) -> list[int]:
    body = env.client.get("/api/search", params={"q": q, "limit": limit, **params}).json()
    return [item["id"] for item in body["items"]]


def danbooru_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False and isinstance(body["message"], str) and body["message"]
    return body


def test_posts_are_our_search_newest_first_twenty_by_default(env: ApiEnv) -> None:
    everything = our_ids(env)
    assert len(everything) == IMAGES
    assert ids_of(env) == everything[:20]
    tag = _common_tag(env)
    assert ids_of(env, tags=tag) == our_ids(env, tag)
    assert ids_of(env, tags=f"-{tag}") == our_ids(env, f"-{tag}")
    assert ids_of(env, tags="order:id", limit=5) == our_ids(env, "order:id")[:5]


def test_a_post_carries_the_fields_clients_read(env: ApiEnv) -> None:
    image_id = our_ids(env)[0]
    post = env.client.get(f"/posts/{image_id}.json").json()
    ours = env.client.get(f"/api/images/{image_id}").json()
    confident = {t["name"]: t["group"] for t in ours["tags"] if t["confident"]}
    by_group = {
        group: sorted(n for n, g in confident.items() if g == group)
        for group in ("general", "character", "copyright")
    }
    assert post["id"] == image_id
    assert (post["image_width"], post["image_height"]) == (ours["width"], ours["height"])
    assert post["file_size"] == Path(ours["path"]).stat().st_size
    assert post["md5"] == hashlib.md5(Path(ours["path"]).read_bytes()).hexdigest()
    assert post["file_ext"] == {"jpeg": "jpg"}.get(ours["format"], ours["format"])
    assert post["tag_string"] == " ".join(sorted(confident))
    for group, names in by_group.items():
        assert post[f"tag_string_{group}"] == " ".join(names)
        assert post[f"tag_count_{group}"] == len(names)
    assert post["tag_count"] == len(confident)
    assert post["tag_string_artist"] == post["tag_string_meta"] == ""
    assert post["rating"] is None  # PixAI v0.9 predicts no ratings
    assert post["source"] == "" and post["score"] == post["fav_count"] == 0
    assert post["is_deleted"] is False
    assert post["created_at"].startswith(ours["indexed_at"][:19])
    assert post["file_url"].endswith(f"/data/original/{image_id}/{post['md5']}.{post['file_ext']}")
    original = env.client.get(post["file_url"])
    assert original.status_code == 200
    assert original.content == Path(ours["path"]).read_bytes()
    preview = env.client.get(post["preview_file_url"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/webp"
    assert post["large_file_url"] == post["file_url"]


def test_tag_strings_follow_the_thresholds_in_force(env: ApiEnv) -> None:
    image_id = our_ids(env)[0]
    strict = env.client.get(f"/posts/{image_id}.json", params={"threshold_general": 0.9})
    loose = env.client.get(f"/posts/{image_id}.json", params={"threshold_general": 0.05})
    ours = env.client.get(f"/api/images/{image_id}", params={"threshold_general": 0.9}).json()
    wanted = sorted(t["name"] for t in ours["tags"] if t["confident"] and t["group"] == "general")
    assert strict.json()["tag_string_general"] == " ".join(wanted)
    assert strict.json()["tag_count_general"] <= loose.json()["tag_count_general"]


def test_numbered_and_sequential_pages_walk_the_whole_search(env: ApiEnv) -> None:
    everything = our_ids(env)
    numbered = [ids_of(env, limit=4, page=page) for page in range(1, 6)]
    assert [i for page in numbered for i in page] == everything  # then a short, an empty page
    assert numbered[-1] == []
    walked, page = [], None
    while True:  # gallery-dl's walk: b<last id> until an empty page
        found = ids_of(env, limit=4, **({"page": page} if page else {}))
        if not found:
            break
        walked += found
        page = f"b{found[-1]}"
    assert walked == everything
    oldest = everything[::-1]
    after = ids_of(env, limit=4, page=f"a{oldest[2]}")
    assert after == oldest[3:7][::-1]  # the lowest ids above, newest first, as Danbooru
    tag = _common_tag(env)
    # a b<id> page runs by id whatever the query orders by, as Danbooru's does
    below = [i for i in our_ids(env, tag) if i < everything[1]]
    assert ids_of(env, tags=f"{tag} order:filesize", page=f"b{everything[1]}") == below


# (parameters, expected ids as a slice of the whole search newest first, or an error status)
PAGE_CASES: list[tuple[dict[str, Any], slice | int]] = [
    ({"limit": 3}, slice(0, 3)),
    ({"limit": 3, "page": 2}, slice(3, 6)),
    ({"limit": 3, "page": "2"}, slice(3, 6)),
    ({"limit": 3, "page": 0}, slice(0, 3)),  # below 1 is the first page
    ({"limit": 3, "page": -4}, slice(0, 3)),
    ({"limit": 3, "page": "abc"}, slice(0, 3)),  # Ruby's to_i: 0, so the first page
    ({"limit": 3, "page": "2x"}, slice(3, 6)),
    ({"limit": 0}, slice(0, 1)),  # clamped to [1, 200], never refused
    ({"limit": -5}, slice(0, 1)),
    ({"limit": "abc"}, slice(0, 1)),
    ({"limit": 10_000}, slice(0, POSTS_MAX_LIMIT)),
    ({"tags": "limit:2"}, slice(0, 2)),  # the metatag when no limit is given
    ({"tags": "limit:2", "limit": 5}, slice(0, 5)),  # Danbooru's limit parameter wins
    ({"limit": 3, "page": PAGE_LIMIT}, slice(0, 0)),
    ({"limit": 3, "page": PAGE_LIMIT + 1}, 410),
    ({"page": "999999999"}, 410),
    ({"limit": 3, "page": "b0"}, slice(0, 0)),
    ({"limit": 3, "page": f"a{2**40}"}, slice(0, 0)),
    ({"limit": 3, "page": f"B{2**40}"}, slice(0, 3)),  # before any id: from the newest
    ({"limit": 3, "unknown": "x", "search[foo]": "y"}, slice(0, 3)),  # unknown: ignored
    ({"tags": "(unbalanced"}, 422),
    ({"tags": "source:pixiv"}, 422),  # a Danbooru metatag Sagashi lacks, said so
    ({"tags": "no_such_tag_anywhere"}, slice(0, 0)),
    ({"threshold_general": 1.5}, 422),
]


@pytest.mark.parametrize(("params", "expected"), PAGE_CASES)
def test_danbooru_requests_and_their_answers(
    env: ApiEnv, params: dict[str, Any], expected: slice | int
) -> None:
    response = env.client.get("/posts.json", params=params)
    if isinstance(expected, int):
        body = danbooru_error(response, expected)
        if expected == 410:
            assert body == {
                "success": False,
                "error": "PaginationExtension::PaginationError",
                "message": f"You cannot go beyond page {PAGE_LIMIT}.",
            }
        return
    assert response.status_code == 200, response.text
    assert [post["id"] for post in response.json()] == our_ids(env)[expected]


def test_errors_are_in_danbooru_shape(env: ApiEnv) -> None:
    missing = env.client.get("/posts/999999.json")
    assert danbooru_error(missing, 404) == {
        "success": False,
        "error": "ActiveRecord::RecordNotFound",
        "message": "That record was not found.",
    }
    danbooru_error(env.client.get("/posts/abc.json"), 404)
    danbooru_error(env.client.get("/posts/random.json", params={"tags": "no_such_tag"}), 404)
    danbooru_error(env.client.get("/posts.json", params={"md5": "0" * 32}), 404)
    bad = danbooru_error(env.client.get("/counts/posts.json", params={"tags": "a (b"}), 422)
    assert bad["error"] == "query_unbalanced_parens"
    danbooru_error(env.client.get("/data/original/999999/x.png"), 404)
    # our own routes keep our shape
    assert "code" in env.client.get("/api/images/999999").json()["error"]


def test_only_selects_fields(env: ApiEnv) -> None:
    posts = env.client.get("/posts.json", params={"limit": 2, "only": "id,md5,nope"}).json()
    assert [set(post) for post in posts] == [{"id", "md5"}, {"id", "md5"}]
    image_id = posts[0]["id"]
    one = env.client.get(f"/posts/{image_id}.json", params={"only": "tag_string,id"}).json()
    assert set(one) == {"tag_string", "id"}
    gallery_dl_includes = "artist_commentary,children,notes,parent,uploader,id"
    assert env.client.get("/posts.json", params={"only": gallery_dl_includes}).json()[0] == {
        "id": our_ids(env)[0]
    }


def test_md5_random_and_counts(env: ApiEnv) -> None:
    post = env.client.get("/posts.json", params={"limit": 1}).json()[0]
    assert env.client.get("/posts.json", params={"md5": post["md5"].upper()}).json() == post
    assert ids_of(env, tags=f"md5:{post['md5']}") == [post["id"]]
    tag = _common_tag(env)
    matching = set(our_ids(env, tag))
    for _ in range(5):
        assert env.client.get("/posts/random.json", params={"tags": tag}).json()["id"] in matching
    assert len(set(ids_of(env, random="true", limit=IMAGES))) == IMAGES
    for q in ("", tag, f"-{tag}", "no_such_tag"):
        count = env.client.get("/counts/posts.json", params={"tags": q}).json()
        assert count == {"counts": {"posts": len(our_ids(env, q))}}


def test_tags_list_as_danbooru_searches_it(env: ApiEnv) -> None:
    catalog = env.client.get("/api/tags", params={"limit": 100}).json()
    by_count = env.client.get("/tags.json", params={"search[order]": "count", "limit": 100}).json()
    assert sorted(t["name"] for t in by_count) == sorted(
        t["name"]
        for t in catalog
        if t["count"] > 0  # empty tags hidden, as on Danbooru
    )
    assert [(-t["post_count"], -t["id"]) for t in by_count] == sorted(
        (-t["post_count"], -t["id"]) for t in by_count
    )  # by count, then newest
    for tag in by_count:
        mine = next(t for t in catalog if t["name"] == tag["name"])
        assert tag["post_count"] == mine["count"]
        assert tag["category"] == {"general": 0, "character": 4, "copyright": 3}[mine["group"]]
    names = env.client.get("/tags.json", params={"search[order]": "name", "limit": 1000}).json()
    assert [t["name"] for t in names] == sorted(t["name"] for t in by_count)
    newest = env.client.get("/tags.json", params={"limit": 1000}).json()
    assert [t["id"] for t in newest] == sorted((t["id"] for t in by_count), reverse=True)
    long = env.client.get("/tags.json", params={"search[name_matches]": "LONG*"}).json()
    assert [t["name"] for t in long] == [t["name"] for t in newest if t["name"].startswith("long")]
    characters = env.client.get("/tags.json", params={"search[category]": "4"}).json()
    assert characters and all(t["category"] == 4 for t in characters)
    named = env.client.get("/tags.json", params={"search[category]": "character"}).json()
    assert named == characters
    exact = env.client.get("/tags.json", params={"search[name]": f"{long[0]['name']},nope"})
    assert [t["name"] for t in exact.json()] == [long[0]["name"]]
    first, second = (
        env.client.get("/tags.json", params={"limit": 2, "page": page}).json() for page in (1, 2)
    )
    assert [t["id"] for t in first + second] == [t["id"] for t in newest[:4]]
    before = env.client.get("/tags.json", params={"limit": 2, "page": f"b{first[-1]['id']}"})
    assert before.json() == second
    danbooru_error(env.client.get("/tags.json", params={"page": PAGE_LIMIT + 1}), 410)


def test_autocomplete_answers_as_our_tag_completion(env: ApiEnv) -> None:
    for text in ("lo", "Hu Tao", "doughnut", "h"):
        ours = env.client.get("/api/tags", params={"prefix": text, "limit": 10}).json()
        theirs = env.client.get(
            "/autocomplete.json",
            params={"search[query]": text, "search[type]": "tag_query", "limit": 10},
        ).json()
        # ours names the alias typed and the tag it stands for (alias_of); Danbooru's
        # value is the tag, its antecedent the alias
        assert [t["value"] for t in theirs] == [t["alias_of"] or t["name"] for t in ours]
        for mine, item in zip(ours, theirs, strict=True):
            assert item["post_count"] == mine["count"]
            assert item["label"] == item["value"].replace("_", " ")
            assert item.get("antecedent") == (mine["name"] if mine["alias_of"] else None)


def test_related_tags_are_our_related_tags(env: ApiEnv) -> None:
    tag = _common_tag(env)
    ours = env.client.get(f"/api/tags/{tag}/related", params={"order": "cosine"}).json()
    theirs = env.client.get("/related_tag.json", params={"query": tag}).json()
    assert theirs["query"] == tag and theirs["tag"]["name"] == tag
    assert theirs["post_count"] == ours["count"]
    related = theirs["related_tags"]
    pairs = [(r["tag"]["name"], r["cosine_similarity"], r["frequency"]) for r in related]
    assert pairs == [(r["name"], r["cosine"], r["frequency"]) for r in ours["related"]]
    general = env.client.get("/related_tag.json", params={"query": tag, "category": "general"})
    assert general.json()["related_tags"]
    assert all(r["tag"]["category"] == 0 for r in general.json()["related_tags"])
    frequencies = [r["frequency"] for r in general.json()["related_tags"]]
    assert frequencies == sorted(frequencies, reverse=True)


def test_iqdb_by_post_id_and_by_upload(env: ApiEnv) -> None:
    image_id = our_ids(env)[3]
    theirs = env.client.get("/iqdb_queries.json", params={"post_id": image_id, "limit": 5})
    assert theirs.status_code == 200, theirs.text
    matches = theirs.json()
    assert matches[0]["post_id"] == image_id and matches[0]["score"] == 100.0
    ours = env.client.post("/api/similar", json={"image_id": image_id, "k": 4}).json()
    assert [(m["post_id"], m["score"]) for m in matches[1:]] == [
        (item["id"], round(100 * max(item["similarity"], 0.0), 2)) for item in ours["items"]
    ]
    assert all(m["post"]["id"] == m["post_id"] for m in matches)
    path = env.client.get(f"/api/images/{image_id}").json()["path"]
    with open(path, "rb") as handle:
        uploaded = env.client.post(
            "/iqdb_queries.json", files={"search[file]": ("q.png", handle)}, data={"limit": "3"}
        )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()[0]["post_id"] == image_id  # the file itself, at 100
    assert uploaded.json()[0]["score"] == pytest.approx(100.0, abs=0.01)
    danbooru_error(env.client.get("/iqdb_queries.json"), 422)
    danbooru_error(env.client.get("/iqdb_queries.json", params={"post_id": 999999}), 404)
    refused = env.client.get("/iqdb_queries.json", params={"url": "http://127.0.0.1/a.png"})
    assert refused.status_code in (400, 403) and refused.json()["success"] is False


def _common_tag(env: ApiEnv) -> str:
    """A tag on some images but not all."""
    for tag in env.client.get("/api/tags", params={"limit": 100}).json():
        if 1 < tag["count"] < IMAGES and tag["group"] == "general":
            return str(tag["name"])
    raise AssertionError("the fixture needs a general tag on some images only")


READ_TOKEN = "danbooru-read-token-42"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path) -> Iterator[ApiEnv]:
    class Sqlite:
        param = "sqlite"

    root = tmp_path_factory.mktemp("danbooru-token")
    yield from indexed_env(Sqlite(), root, tiny_pixai_dir, images=2, read_token=READ_TOKEN)  # type: ignore[arg-type]


def test_the_read_token_as_danbooru_clients_send_it(guarded: ApiEnv) -> None:
    client = guarded.client
    refused = client.get("/posts.json")
    body = danbooru_error(refused, 401)
    assert body["error"] == "SessionLoader::AuthenticationFailure"
    assert refused.headers["www-authenticate"] == 'Basic realm="Sagashi"'
    basic = client.get("/posts.json", auth=("anyone", READ_TOKEN))  # Pybooru, gallery-dl
    assert basic.status_code == 200 and len(basic.json()) == 2
    assert client.get(basic.json()[0]["file_url"], auth=("anyone", READ_TOKEN)).status_code == 200
    keyed = client.get("/posts.json", params={"login": "me", "api_key": READ_TOKEN})
    assert keyed.json() == basic.json()
    bearer = client.get("/posts.json", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert bearer.json() == basic.json()
    danbooru_error(client.get("/posts.json", auth=("anyone", "wrong")), 401)
    danbooru_error(client.get("/posts.json", params={"api_key": "wrong"}), 401)
    danbooru_error(client.get("/posts.json", headers={"Authorization": "Basic !!"}), 401)
    # the same credentials open our own routes; their refusals keep our shape
    assert client.get("/api/search", auth=("x", READ_TOKEN)).status_code == 200
    assert client.get("/api/search").json()["error"]["code"] == "unauthorized"

"""Real Danbooru clients against a real ``sagashi serve`` (with a read token) over real
image files: gallery-dl configured as a Danbooru instance downloads a tag search of more
than one page (its pages are 200 posts) and a single post, byte for byte the API's
matches, with our tags in its metadata; Pybooru's post_list, post_show, tag_list and
tag_related return what our own API returns for the same question.

The index is imported (``sagashi import``) from predictions for 230 real PNG files, with a
WD-style vocabulary that gives characters and ratings, so no model is needed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cli import run_sagashi
from tests.support.index_helpers import make_image
from tests.support.serve_helpers import sagashi_serve

IMAGES = 230
TOKEN = "danbooru-client-token-7"
GALLERY_DL = str(Path(sys.executable).with_name("gallery-dl"))


def _tags(i: int) -> dict[str, float]:
    tags = {"solo": 0.95 if i < 215 else 0.1, "smile": 0.4 + (i % 5) / 10}
    if i % 3 == 0:
        tags["hatsune_miku"] = 0.9
    tags["general"] = 0.7 if i % 4 else 0.2  # the WD rating tags
    tags["sensitive"] = 0.3 if i % 4 else 0.6
    return tags


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("danbooru-clients")
    library = root / "library"
    vocabulary = root / "selected_tags.csv"
    vocabulary.write_text(
        "tag_id,name,category,count\n1,general,9,0\n2,sensitive,9,0\n3,questionable,9,0\n"
        "4,explicit,9,0\n5,solo,0,0\n6,smile,0,0\n7,hatsune_miku,4,0\n"
    )
    lines = []
    for i in range(IMAGES):
        path = make_image(library / f"{i:03d}.png", seed=1000 + i, size=(16 + i % 7, 12))
        vector = [float((i * 7 + k) % 11) + 1.0 for k in range(8)]
        row = {"path": str(path), "width": 16 + i % 7, "height": 12, "tags": _tags(i)}
        lines.append(json.dumps({**row, "embedding": vector}))
    predictions = root / "predictions.jsonl"
    predictions.write_text("\n".join(lines) + "\n")
    settings = {
        "SAGASHI_MEDIA_ROOTS": str(library),
        "SAGASHI_READ_TOKEN": TOKEN,
        "SAGASHI_THUMB_SIZE": "64",
    }
    environment = {"SAGASHI_DATA_DIR": str(root / "data"), **settings}
    assert run_sagashi("db", "upgrade", env=environment).returncode == 0
    imported = run_sagashi(
        "import", str(predictions), "--vocabulary", str(vocabulary), "--model-name", "cluster",
        env=environment,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    with sagashi_serve(root, settings) as base:
        yield base, root


def api(base: str, path: str, **params: Any) -> Any:
    response = httpx.get(f"{base}{path}", params=params, auth=("me", TOKEN), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def gallery_dl(base: str, root: Path, url: str, target: Path) -> None:
    config = {
        "extractor": {
            "Danbooru": {"sagashi": {"root": base}},
            "sagashi": {"username": "me", "password": TOKEN},
            "sleep-request": 0,
            "base-directory": str(target),
        }
    }
    path = root / "gallery-dl.json"
    path.write_text(json.dumps(config))
    done = subprocess.run(
        [GALLERY_DL, "--config-ignore", "--config", str(path), "--write-metadata", url],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def downloads(target: Path) -> dict[int, Path]:
    """Downloaded files by post id (gallery-dl names them sagashi_<id>_<md5>.<ext>)."""
    found = {}
    for path in target.rglob("sagashi_*"):
        if path.suffix != ".json":
            found[int(path.name.split("_")[1])] = path
    return found


def test_gallery_dl_downloads_a_search_of_several_pages(served: tuple[str, Path]) -> None:
    base, root = served
    count = api(base, "/counts/posts.json", tags="solo")["counts"]["posts"]
    assert count == 215 > 200  # more than one of gallery-dl's 200-post pages
    target = root / "downloads-search"
    gallery_dl(base, root, f"{base}/posts?tags=solo", target)
    got = downloads(target)
    ours = api(base, "/api/search", q="solo", limit=1000)["items"]
    assert sorted(got) == sorted(item["id"] for item in ours)
    for item in ours:
        assert got[item["id"]].read_bytes() == Path(item["path"]).read_bytes()
        post = api(base, f"/posts/{item['id']}.json")
        assert got[item["id"]].name == f"sagashi_{item['id']}_{post['md5']}.png"
        metadata = json.loads(Path(f"{got[item['id']]}.json").read_text())
        assert metadata["tag_string"] == post["tag_string"]
        assert metadata["tags_character"] == post["tag_string_character"].split()
        assert metadata["rating"] == post["rating"]
        image = api(base, f"/api/images/{item['id']}")
        confident = sorted(t["name"] for t in image["tags"] if t["confident"])
        assert sorted(metadata["tags"]) == [t for t in confident if t not in RATINGS]


RATINGS = {"general", "sensitive", "questionable", "explicit"}


def test_gallery_dl_downloads_one_post(served: tuple[str, Path]) -> None:
    base, root = served
    post = api(base, "/posts.json", tags="hatsune_miku", limit=1)[0]
    target = root / "downloads-post"
    gallery_dl(base, root, f"{base}/posts/{post['id']}", target)
    got = downloads(target)
    assert list(got) == [post["id"]]
    image = api(base, f"/api/images/{post['id']}")
    assert got[post["id"]].read_bytes() == Path(image["path"]).read_bytes()
    assert hashlib.md5(got[post["id"]].read_bytes()).hexdigest() == post["md5"]
    metadata = json.loads(Path(f"{got[post['id']]}.json").read_text())
    assert "hatsune_miku" in metadata["tags_character"]


def test_pybooru_returns_what_our_api_returns(served: tuple[str, Path]) -> None:
    from pybooru import Danbooru

    base, _root = served
    client = Danbooru(site_url=base, username="me", api_key=TOKEN)
    listed = client.post_list(tags="hatsune_miku smile,>=0.6", limit=50)
    ours = api(base, "/api/search", q="hatsune_miku smile,>=0.6", limit=50)["items"]
    assert [post["id"] for post in listed] == [item["id"] for item in ours]
    assert listed == api(base, "/posts.json", tags="hatsune_miku smile,>=0.6", limit=50)
    second = client.post_list(tags="solo", limit=20, page=2)
    assert [p["id"] for p in second] == [
        i["id"] for i in api(base, "/api/search", q="solo", limit=40)["items"][20:]
    ]
    shown = client.post_show(ours[0]["id"])
    image = api(base, f"/api/images/{ours[0]['id']}")
    assert (shown["id"], shown["image_width"], shown["image_height"]) == (
        image["id"],
        image["width"],
        image["height"],
    )
    assert shown["rating"] in ("g", "s")
    tags = client.tag_list(order="count")
    catalog = api(base, "/api/tags", limit=100)
    counts = {t["name"]: t["count"] for t in catalog if t["group"] != "rating" and t["count"]}
    assert {t["name"]: t["post_count"] for t in tags} == counts
    assert [t["name"] for t in client.tag_list(name_matches="hat*")] == ["hatsune_miku"]
    related = client.tag_related("hatsune_miku")
    ours_related = api(base, "/api/tags/hatsune_miku/related", order="cosine")["related"]
    assert [r["tag"]["name"] for r in related["related_tags"]] == [
        r["name"] for r in ours_related if r["group"] != "rating"
    ]
    assert client.count_posts(tags="solo") == {"counts": {"posts": 215}}

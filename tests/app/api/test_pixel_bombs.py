"""Pixel bombs against a real 'sagashi serve': small files that claim or hold huge images.

Two hands at once: many uploads arrive together. Every answer must be a 413 (too many
pixels), a 415 (not an image) or a 503 with Retry-After (the decode slots and their queue
are full), in the JSON error shape, within a time bound, and the server's memory must stay
under the bound docs/reliability.md gives: decode slots x about 12 bytes a pixel.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.api_helpers import make_library
from tests.support.bad_images import png_bomb
from tests.support.cli import run_sagashi
from tests.support.pixel_bombs import Server, upload_all
from tests.support.serve_helpers import serving

MAX_UPLOAD_PIXELS = 20_000_000
BYTES_PER_PIXEL_BOUND = 12  # the documented bound per decoded pixel
SLACK = 150 * 1024 * 1024  # request buffers, the thread pool's stacks, allocator slack


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("bombs")
    environment = {
        "SAGASHI_DATA_DIR": str(root / "data"),
        # thumbnails decoded on request, as tested (index-time ones would all be cached)
        "SAGASHI_INDEX_THUMBS": "false",
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_DEVICE": "cpu",
        "SAGASHI_TORCH_THREADS": "1",
        "SAGASHI_DECODE_WORKERS": "1",
        "SAGASHI_MODEL_LOAD": "startup",
        "SAGASHI_MAX_UPLOAD_PIXELS": str(MAX_UPLOAD_PIXELS),
        "SAGASHI_DECODE_SLOTS": "1",
        "SAGASHI_DECODE_QUEUE": "1",
        "SAGASHI_DECODE_WAIT": "5",
        "SAGASHI_WORKERS": "1",  # the bounds and the memory measured are one process's
    }
    assert run_sagashi("db", "upgrade", env=environment).returncode == 0
    make_library(root / "library", 4)
    for i in range(4):  # large library files: their first thumbnails cost a decode each
        (root / "library" / f"large{i}.png").write_bytes(png_bomb(4_000 + i, 4_000))
    assert run_sagashi("index", str(root / "library"), env=environment).returncode == 0
    with serving(root, environment) as served:
        client = httpx.Client(base_url=served.base, timeout=60)
        with client:
            yield Server(client, served.process)


def test_bombs_over_the_upload_limit_are_refused_from_the_header(server: Server) -> None:
    bomb = png_bomb(13_000, 13_000)  # the 169-megapixel bomb
    assert len(bomb) < 300_000
    before = server.peak_rss()
    answers = upload_all(server, bomb, 8)
    for response, seconds in answers:
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "too_many_pixels"
        assert "13000x13000" in error["message"] and "SAGASHI_MAX_UPLOAD_PIXELS" in error["message"]
        assert seconds < 10
    # Nothing was decoded: the requests' bytes are all they cost.
    assert server.peak_rss() - before < SLACK


def test_concurrent_decodes_are_bounded_and_the_rest_answered_503(server: Server) -> None:
    under = png_bomb(4_400, 4_400)  # 19.4 MP: under the limit, so it is decoded
    before = server.peak_rss()
    answers = upload_all(server, under, 8)
    statuses = sorted(response.status_code for response, _ in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses  # 1 slot + 1 waiting of 8 at once
    for response, seconds in answers:
        assert seconds < 30
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "busy"
            assert response.headers["Retry-After"] == "1"
    bound = 1 * MAX_UPLOAD_PIXELS * BYTES_PER_PIXEL_BOUND + SLACK  # one decode slot
    assert server.peak_rss() - before < bound
    # Once the burst is over, the same image goes through.
    again = upload_all(server, under, 1)[0][0]
    assert again.status_code == 200, again.text


def test_a_header_that_lies_about_its_size_is_still_bounded(server: Server) -> None:
    small_claim = png_bomb(100, 100)
    ok = upload_all(server, small_claim, 1)[0][0]
    assert ok.status_code == 200, ok.text
    garbage = upload_all(server, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 2)
    for response, _ in garbage:
        assert response.status_code == 415 and response.json()["error"]["code"] == "bad_image"


def test_thumbnail_decodes_share_the_same_bound(server: Server) -> None:
    items = server.client.get("/api/search", params={"q": "width:>=4000"}).json()["items"]
    assert len(items) == 4
    base = str(server.client.base_url)

    def thumb(image_id: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=60) as client:
            return client.get(f"/api/images/{image_id}/thumb")

    with ThreadPoolExecutor(max_workers=4) as pool:
        first = list(pool.map(thumb, [item["id"] for item in items]))
    statuses = sorted(response.status_code for response in first)
    assert 503 in statuses and set(statuses) <= {200, 503}, statuses  # 1 slot + 1 waiting
    for response in first:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "busy"
    for item in items:  # one at a time, each is made (or was cached) and served
        response = thumb(item["id"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/webp"

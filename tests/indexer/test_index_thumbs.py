"""SAGASHI_INDEX_THUMBS: 'sagashi index' makes the gallery's thumbnails beside the run, into
the cache the server reads, so the first view decodes nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from app.api import create_app
from app.settings import Settings
from app.store.thumbs import ThumbnailCache
from tests.support.api_helpers import make_library, wait_ready
from tests.support.cli import run_sagashi


def test_index_makes_the_thumbnails_the_server_serves(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    images = make_library(tmp_path / "library", 5)
    (tmp_path / "library" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    env = {
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_THUMB_SIZE": "64",
        "SAGASHI_DECODE_WORKERS": "1",
        "SAGASHI_TORCH_THREADS": "1",
    }
    result = run_sagashi("index", str(tmp_path / "library"), env=env)
    assert result.returncode == 1, result.stderr  # the broken file fails; the rest is indexed
    assert "made 5 gallery thumbnails in the background" in result.stderr
    made = sorted((tmp_path / "data" / "thumbs" / "64").rglob("*.webp"))
    assert len(made) == len(images)
    stamps = {p: p.stat().st_mtime_ns for p in made}
    settings = Settings(data_dir=tmp_path / "data", thumb_size=64, model_dir=tiny_pixai_dir)
    cache = ThumbnailCache(tmp_path / "data" / "thumbs", 64, settings.max_image_pixels)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        items = client.get("/api/search", params={"limit": 100}).json()["items"]
        assert len(items) == len(images)
        for item in items:
            detail = client.get(f"/api/images/{item['id']}").json()
            served = client.get(f"/api/images/{item['id']}/thumb")
            assert served.status_code == 200
            assert served.content == cache.path_for(detail["sha256"]).read_bytes()
    # served from the files the index made: none was made again
    assert {p: p.stat().st_mtime_ns for p in made} == stamps
    again = run_sagashi("index", str(tmp_path / "library"), env=env)
    assert "made 0 gallery thumbnails" in again.stderr  # nothing new to make


def test_the_setting_turns_it_off(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    make_library(tmp_path / "library", 2)
    env = {
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_INDEX_THUMBS": "false",
    }
    result = run_sagashi("index", str(tmp_path / "library"), env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "data" / "thumbs").exists() and "thumbnails" not in result.stderr


def test_a_thumbnail_made_on_request_names_the_file_in_pillows_warning(
    tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    from tests.support.bad_images import invalid_apng
    from tests.support.serve_helpers import sagashi_serve

    apng = invalid_apng(tmp_path / "library" / "odd.png")
    env = {"SAGASHI_MODEL_DIR": str(tiny_pixai_dir), "SAGASHI_INDEX_THUMBS": "false"}
    indexed = run_sagashi(
        "index", str(apng.parent), env={"SAGASHI_DATA_DIR": str(tmp_path / "data"), **env}
    )
    assert indexed.returncode == 0, indexed.stderr
    with sagashi_serve(tmp_path, env) as base:
        item = httpx.get(f"{base}/api/search").json()["items"][0]
        assert httpx.get(f"{base}/api/images/{item['id']}/thumb").status_code == 200
    log = (tmp_path / "serve.log").read_text()
    assert (
        f"WARNING sagashi: {apng}: invalid APNG animation data; the still PNG image in the "
        "file was used"
    ) in log
    assert "site-packages" not in log and "UserWarning" not in log

"""Ready means ready: /readyz answers 200 only once the FAISS index and the gather matrix
are open, so the first similarity request loads nothing; until then it says what start-up
is doing. On a real server (uvicorn on loopback), SQLite and PostgreSQL."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api import create_app
from app.settings import Settings
from app.store import vectors
from app.store.db import create_db_engine, session_factory
from app.store.migrate import upgrade
from app.store.models import Image
from app.tagger import TimmTagger
from indexer.jobs import index_options
from indexer.pipeline import Indexer
from tests.support.api_helpers import database_urls, make_library, settings_for, wait_ready
from tests.support.live_server import serving
from tests.support.network import wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def indexed(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_pixai_dir: Path
) -> Iterator[tuple[Settings, TimmTagger]]:
    """A small library indexed by the tiny model, with no FAISS files written yet (as
    after ``sagashi index`` on a fresh data folder whose files were deleted)."""
    make_library(tmp_path / "library", 8)
    for url in database_urls(request, tmp_path):
        upgrade(url)
        settings = settings_for(tmp_path, url, tiny_pixai_dir)
        tagger = TimmTagger(tiny_pixai_dir, "cpu", 1)
        tagger.load()
        engine = create_db_engine(url)
        Indexer(engine, tagger, index_options(settings)).run([tmp_path / "library"])
        engine.dispose()
        yield settings, tagger


def test_the_first_similarity_request_after_ready_loads_nothing(
    indexed: tuple[Settings, TimmTagger],
) -> None:
    settings, tagger = indexed
    app = create_app(settings, tagger)
    with serving(app) as base:
        search = app.state.resources.search
        opened = search.opened_vectors()  # open before any similarity request
        assert opened is not None and opened.count == 8 and opened.kind == "flat"
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["checks"]["vectors"] == "flat, 8 vectors"
        files = [p.stat().st_ino for p in vectors.generation_files(settings.data_dir, 1)]
        assert settings.database_url is not None  # settings_for sets it
        engine = create_db_engine(settings.database_url)
        with session_factory(engine)() as session:
            image_id = session.scalars(select(Image.id).limit(1)).one()
        engine.dispose()
        response = httpx.post(f"{base}/api/similar", json={"image_id": image_id, "k": 3})
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == 3
        # The same open index served it: nothing was loaded, built or rewritten.
        assert search.opened_vectors() is opened
        assert [p.stat().st_ino for p in vectors.generation_files(settings.data_dir, 1)] == files


def test_readyz_says_what_start_up_is_doing(indexed: tuple[Settings, TimmTagger]) -> None:
    """Start-up held while it opens the FAISS index: the sidecar is a FIFO, whose read
    waits for a writer (a slow disk, in effect). /readyz answers 503 with the stage; once
    the FIFO yields garbage, the index is rebuilt and /readyz answers 200."""
    settings, tagger = indexed
    _, sidecar = vectors.index_paths(settings.data_dir, 1)
    sidecar.parent.mkdir(parents=True)
    os.mkfifo(sidecar)
    with TestClient(create_app(settings, tagger)) as client:
        seen: list[dict[str, str]] = []

        def opening() -> bool:
            response = client.get("/readyz")
            assert response.status_code == 503, response.text
            seen.append(response.json()["error"])
            return "opening the FAISS index" in seen[-1]["message"]

        wait_for(opening, 30)
        assert seen[-1]["code"] == "starting"
        assert seen[-1]["message"] == "still starting: opening the FAISS index"
        release = threading.Thread(target=lambda: sidecar.write_text("not json"))
        release.start()
        wait_ready(client)
        release.join(10)
        ready = client.get("/readyz").json()
        assert ready["checks"]["vectors"] == "flat, 8 vectors"
    assert vectors.read_meta(settings.data_dir, 1) is not None  # rebuilt and written

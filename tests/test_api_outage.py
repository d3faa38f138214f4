"""A PostgreSQL outage while the server runs: requests during it get a 503 with the error
shape (never a hang or a 500), /readyz reports it, and the first requests after the
database is back succeed, with no restart. The outage is a TCP proxy between the server and
PostgreSQL whose connections are all cut, as a database restart cuts them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from app.api import create_app
from app.store.db import create_db_engine
from app.store.migrate import upgrade
from app.tagger import TimmTagger
from indexer.jobs import index_options
from indexer.pipeline import Indexer
from tests.api_helpers import make_library, settings_for, wait_ready
from tests.conftest import _postgres_schema_url
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _postgres_schema_url(request)


def test_the_server_rides_out_a_database_restart(
    pg_url: str, tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    upgrade(pg_url)
    library = tmp_path / "library"
    make_library(library, 6)
    tagger = TimmTagger(tiny_pixai_dir, "cpu", 1)
    tagger.load()
    direct = settings_for(tmp_path, pg_url, tiny_pixai_dir)
    Indexer(create_db_engine(pg_url), tagger, index_options(direct)).run([library])

    parsed = make_url(pg_url)
    proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    proxy.start()
    proxied = parsed.set(port=proxy.port).render_as_string(hide_password=False)
    settings = settings_for(tmp_path, proxied, tiny_pixai_dir)
    try:
        with TestClient(create_app(settings, tagger)) as client:
            wait_ready(client)
            image_id = client.get("/api/search").json()["items"][0]["id"]
            assert client.get(f"/api/images/{image_id}").status_code == 200

            proxy.stop()
            time.sleep(1.1)  # past the search service's refresh interval
            for path in ("/api/search", f"/api/images/{image_id}", "/readyz"):
                started = time.monotonic()
                response = client.get(path)
                assert time.monotonic() - started < 15, f"{path} hung"
                assert response.status_code == 503, (path, response.text)
                error = response.json()["error"]
                assert error["code"] in ("database_unavailable", "database"), error
            assert client.get("/healthz").status_code == 200

            proxy.start()
            first = client.get("/api/search")
            assert first.status_code == 200, first.text
            assert first.json()["count"] == 6
            assert client.get(f"/api/images/{image_id}").status_code == 200
            assert client.get("/readyz").status_code == 200
    finally:
        proxy.stop()

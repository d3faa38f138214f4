"""A PostgreSQL outage while the server runs: requests during it get a 503 with the error
shape (never a hang or a 500), /readyz reports it, and the first requests after the
database is back succeed, with no restart. The outage is a TCP proxy between the server and
PostgreSQL whose connections are all cut, as a database restart cuts them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from app.api import create_app
from app.settings import Settings
from app.store.db import create_db_engine
from app.store.migrate import upgrade
from app.tagger import TimmTagger
from indexer.jobs import index_options
from indexer.pipeline import Indexer
from tests.support.api_helpers import make_library, settings_for, wait_ready
from tests.support.network import free_port, wait_for
from tests.support.postgres import postgres_schema_url
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


@pytest.fixture
def proxied(
    pg_url: str, tmp_path: Path, tiny_pixai_dir: Path
) -> Iterator[tuple[Settings, TimmTagger, TcpProxy]]:
    """An indexed PostgreSQL schema, and settings that reach it through a TCP proxy."""
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
    url = parsed.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        yield settings_for(tmp_path, url, tiny_pixai_dir), tagger, proxy
    finally:
        proxy.stop()


def test_the_server_rides_out_a_database_restart(
    proxied: tuple[Settings, TimmTagger, TcpProxy],
) -> None:
    settings, tagger, proxy = proxied
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


def test_a_restart_under_load_gives_503s_then_recovers(
    proxied: tuple[Settings, TimmTagger, TcpProxy],
) -> None:
    settings, tagger, proxy = proxied
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, tagger), port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)
    phase = {"name": "before"}
    seen: dict[str, Counter[int]] = {"before": Counter(), "outage": Counter(), "after": Counter()}
    slowest = [0.0]
    stop = threading.Event()

    def hammer(seed: int) -> None:
        queries = ["", "solo", "1girl -hat", "order:filesize", f"id:>{seed}"]
        with httpx.Client(base_url=base, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                response = client.get("/api/search", params={"q": queries[seed % len(queries)]})
                slowest[0] = max(slowest[0], time.monotonic() - started)
                seen[phase["name"]][response.status_code] += 1  # the phase it ended in
                seed += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        phase["name"] = "outage"  # first: a request failing at the cut counts as outage
        proxy.stop()
        time.sleep(3)
        proxy.start()
        time.sleep(1.5)  # requests already in flight finish; then everything must succeed
        phase["name"] = "after"
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        server.should_exit = True
    assert set(seen["before"]) == {200}, seen
    assert set(seen["outage"]) <= {200, 503} and seen["outage"][503] > 0, seen
    assert set(seen["after"]) == {200} and seen["after"][200] > 10, seen
    assert slowest[0] < 15, f"a request took {slowest[0]:.1f} s"


def test_statements_past_the_timeout_are_cancelled(pg_url: str) -> None:
    engine = create_db_engine(pg_url, statement_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(OperationalError) as caught, engine.connect() as connection:
        connection.execute(text("select pg_sleep(5)"))
    assert time.monotonic() - started < 3
    assert "statement timeout" in str(caught.value)
    with engine.connect() as connection:  # the URL's own options (its schema) still apply
        search_path = connection.execute(text("show search_path")).scalar()
        options = make_url(pg_url).query["options"]
        assert isinstance(options, str), options  # one options parameter
        assert search_path == options.split("=", 1)[1]
    engine.dispose()

"""Search keeps answering, without a single error, while a reindex with another model builds
a new generation beside the served one and swaps it in; afterwards the server serves the
new generation by itself. SQLite (WAL readers beside the writer) and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.tagger import TimmTagger
from indexer.jobs import index_options
from indexer.reindex import Reindexer
from tests.support.api_helpers import ApiEnv, indexed_env
from tests.support.tiny_models import build_tiny_pixai

IMAGES = 150


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path, tiny_pixai_dir: Path) -> Iterator[ApiEnv]:
    # enough images that the reindex outlasts many rounds of requests
    yield from indexed_env(request, tmp_path, tiny_pixai_dir, images=IMAGES)


def test_search_answers_throughout_a_reindex_and_its_swap(env: ApiEnv, tmp_path: Path) -> None:
    image_id = env.client.get("/api/search").json()["items"][0]["id"]
    before = env.client.get(f"/api/images/{image_id}").json()["generation"]
    other = TimmTagger(build_tiny_pixai(tmp_path / "other-model", seed=1), "cpu", 1)
    other.load()
    done = threading.Event()
    failure: list[BaseException] = []

    def reindex() -> None:
        try:
            options = index_options(env.settings)
            Reindexer(env.engine, other, options, env.settings.data_dir).run()
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    statuses: Counter[int] = Counter()
    worker = threading.Thread(target=reindex)
    worker.start()
    requests = during = 0
    while not done.is_set() or requests < 30:
        during += not done.is_set()
        for response in (
            env.client.get("/api/search", params={"q": "solo", "limit": 5}),
            env.client.post("/api/similar", json={"image_id": image_id, "k": 3}),
            env.client.get("/api/tags", params={"prefix": "s"}),
        ):
            statuses[response.status_code] += 1
            assert response.status_code == 200, response.text
        requests += 1
    worker.join()
    assert not failure, failure
    assert statuses == Counter({200: 3 * requests})
    assert during >= 3, "the reindex ended before searches ran beside it"
    deadline = time.monotonic() + 10  # the server looks for a new generation every second
    while env.client.get(f"/api/images/{image_id}").json()["generation"] == before:
        assert time.monotonic() < deadline, "the server kept serving the old generation"
        time.sleep(0.1)
    assert env.client.get("/api/search").json()["count"] == IMAGES

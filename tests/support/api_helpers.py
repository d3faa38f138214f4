"""A real index for the API tests: generated images tagged by the tiny PixAI model into
SQLite or PostgreSQL, served by ``create_app`` through Starlette's TestClient (which runs
the app's lifespan, so the same start-up path as ``sagashi serve``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.api import create_app
from app.settings import Settings
from app.store.db import create_db_engine
from app.store.migrate import upgrade
from app.tagger import TimmTagger
from indexer.jobs import index_options
from indexer.pipeline import Indexer
from tests.support.index_helpers import make_image
from tests.support.postgres import postgres_schema_url

ADMIN_TOKEN = "s3cret-token"
IMAGES = 14

# A query string's values, as the test clients take them.
QueryParams = dict[str, str | int | float]


class JsonResponse(Protocol):
    """What the error checks read of a response: TestClient's (httpx2's, where installed)
    and httpx's alike."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self, **kwargs: Any) -> Any: ...


class ErrorBody(TypedDict):
    """The API's one error shape, ``{"error": ErrorBody}`` (app/api/errors.py)."""

    code: str
    message: str
    position: NotRequired[int]  # where in the query a query error is


@dataclass
class ApiEnv:
    client: TestClient
    settings: Settings
    engine: Engine
    library: Path
    tagger: TimmTagger
    root: Path


def make_library(library: Path, count: int = IMAGES) -> list[Path]:
    paths = []
    for i in range(count):
        suffix = ".jpg" if i % 3 == 0 else ".png"
        paths.append(make_image(library / f"img{i:02d}{suffix}", seed=i, size=(40 + i * 7, 60)))
    return paths


def settings_for(root: Path, url: str, model_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": root / "data",
        "database_url": url,
        "model_dir": model_dir,
        "admin_token": ADMIN_TOKEN,
        "batch_size": 4,
        "decode_workers": 1,
        "torch_threads": 1,
        "device": "cpu",
        **overrides,
    }
    return Settings(**values)


def wait_ready(client: TestClient, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


def hf_error_of(response: Any, status: int) -> str:
    """The code of a drop-in tagging endpoint's error, checked to be in Hugging Face's
    shape (a string message, which huggingface_hub shows): ``{"error", "code"}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"}, body
    assert isinstance(body["error"], str) and body["error"], body
    code: str = body["code"]
    return code


def database_urls(request: pytest.FixtureRequest, root: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{root / 'sagashi.db'}"
    else:
        yield from postgres_schema_url()


def indexed_env(
    request: pytest.FixtureRequest,
    root: Path,
    model_dir: Path,
    images: int = IMAGES,
    **overrides: Any,
) -> Iterator[ApiEnv]:
    library = root / "library"
    make_library(library, images)
    for url in database_urls(request, root):
        upgrade(url)
        settings = settings_for(root, url, model_dir, **overrides)
        engine = create_db_engine(url)
        tagger = TimmTagger(model_dir, "cpu", 1)
        tagger.load()
        Indexer(engine, tagger, index_options(settings)).run([library])
        with TestClient(create_app(settings, tagger)) as client:
            wait_ready(client)
            yield ApiEnv(client, settings, engine, library, tagger, root)
        engine.dispose()

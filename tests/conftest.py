"""The suite's fixtures: tiny models, and a database of each kind. Helpers live in
tests/support/."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.tagger import TimmTagger
from tests.support.export_helpers import ExportCli
from tests.support.paths import TESTS
from tests.support.postgres import postgres_schema_url
from tests.support.slow import SLOW_MODULES, SLOW_TESTS
from tests.support.tiny_models import build_tiny_pixai, build_tiny_wd


@pytest.fixture(scope="session")
def tiny_pixai_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixai(tmp_path_factory.mktemp("pixai"))


@pytest.fixture(scope="module")
def tagger(tiny_pixai_dir: Path) -> TimmTagger:
    """The tiny PixAI model loaded on the CPU, once per module."""
    loaded = TimmTagger(tiny_pixai_dir, device="cpu")
    loaded.load()
    return loaded


@pytest.fixture(scope="session")
def tiny_wd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wd(tmp_path_factory.mktemp("wd"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind; store tests run on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sagashi.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def migrated_url(db_url: str) -> str:
    from app.store.migrate import upgrade

    upgrade(db_url)
    return db_url


@pytest.fixture
def export_cli(tmp_path: Path) -> Iterator[ExportCli]:
    """'sagashi export' in this process on a migrated SQLite database under tmp_path. The
    command configures logging onto the runner's stderr; it is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield ExportCli.under(tmp_path)
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.relative_to(TESTS).as_posix()
        name = getattr(item, "originalname", item.name)
        if module in SLOW_MODULES or f"{module}::{name}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)

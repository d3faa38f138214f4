from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_pixai, build_tiny_wd

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a skip saying it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path} (../shared/data is not beside the checkout)")
    return path


@pytest.fixture(scope="session")
def tiny_pixai_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixai(tmp_path_factory.mktemp("pixai"))


@pytest.fixture(scope="session")
def tiny_wd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wd(tmp_path_factory.mktemp("wd"))


SAGASHI = str(Path(sys.executable).with_name("sagashi"))


def run_sagashi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``sagashi`` command as a user would, over this process's environment."""
    return subprocess.run(
        [SAGASHI, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


PG_URL = os.environ.get("SAGASHI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_schema_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema per test on the shared PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_URL)
    try:
        with admin.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as exc:
        admin.dispose()
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL is required in CI but unreachable: {exc}") from exc
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind; store tests run on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sagashi.db'}"
    else:
        yield from _postgres_schema_url(request)


@pytest.fixture
def migrated_url(db_url: str) -> str:
    from app.store.migrate import upgrade

    upgrade(db_url)
    return db_url

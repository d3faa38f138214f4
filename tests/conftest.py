from __future__ import annotations

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

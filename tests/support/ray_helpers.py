"""A collection, settings and the comparison with a local index, for the tests of
``sagashi index --ray`` on a local Ray and on a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from app.settings import Settings
from app.store.db import create_db_engine
from tests.support.index_helpers import snapshot, with_two_bad_files

IMAGES = 30


# Measured: a Ray run and a local run of the tiny model on the CPU (fp32) store the same
# scores and float16 embeddings to the bit on these files; the bounds leave room for a
# forward whose batch composition differs (the rows around a bad file).
SCORE_TOLERANCE = 1e-5


VECTOR_TOLERANCE = 1e-3


def collection(root: Path) -> Path:
    return with_two_bad_files(root, IMAGES)


def settings_for(url: str, data_dir: Path, model_dir: Path) -> Settings:
    return Settings(
        database_url=url,
        data_dir=data_dir,
        model_dir=model_dir,
        batch_size=8,
        device="cpu",
        search_engine="memory",
    )


def assert_same(got_url: str, want_url: str) -> tuple[float, float]:
    """The two indexes hold the same files, contents and tags, scores and embeddings
    within the tolerances; returns the largest differences seen."""
    engines = [create_db_engine(got_url), create_db_engine(want_url)]
    try:
        got, want = (snapshot(engine) for engine in engines)
    finally:
        for engine in engines:
            engine.dispose()
    assert sorted(got) == sorted(want)
    worst_score = worst_vector = 0.0
    for path, state in got.items():
        expected = want[path]
        assert (state["sha256"], state["size"]) == (expected["sha256"], expected["size"]), path
        tags, want_tags = state["tags"], expected["tags"]
        assert isinstance(tags, dict) and isinstance(want_tags, dict)
        assert sorted(tags) == sorted(want_tags), path
        for name, score in tags.items():
            worst_score = max(worst_score, abs(score - want_tags[name]))
        vector = np.frombuffer(cast(bytes, state["vector"]), dtype="<f2").astype(np.float32)
        want_vector = np.frombuffer(cast(bytes, expected["vector"]), dtype="<f2")
        want_vector = want_vector.astype(np.float32)
        worst_vector = max(worst_vector, float(np.abs(vector - want_vector).max()))
    assert worst_score <= SCORE_TOLERANCE
    assert worst_vector <= VECTOR_TOLERANCE
    return worst_score, worst_vector

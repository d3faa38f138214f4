"""Shared helpers for the indexer tests: generated images, a snapshot of index state, a local
index run, and two indexes compared (the database and the FAISS index)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, func, select

from app.settings import Settings
from app.store import vectors
from app.store.aliases import load_aliases
from app.store.db import create_db_engine, session_factory
from app.store.models import Embedding, Image, ImageTag, Tag
from app.store.repository import active_generation
from app.tagger.protocol import Tagger
from indexer import jobs
from indexer.pipeline import Indexer, IndexOptions, IndexSummary
from indexer.scan import Problem


def small_options(**overrides: object) -> IndexOptions:
    """The tests' index options: batches of 4, two readers, the bundled aliases;
    ``overrides`` replace fields."""
    base = IndexOptions(
        batch_size=4,
        workers=2,
        max_pixels=10**8,
        jpeg_draft=True,
        score_floor=0.05,
        aliases=load_aliases(),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def make_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path)
    return path


def with_two_bad_files(root: Path, count: int) -> Path:
    """``count`` PNGs in folders of ten, plus a file that is not an image (folder 0) and a
    truncated PNG (folder 1): a collection whose runs must report exactly two failures."""
    for i in range(count):
        make_image(root / f"{i // 10}" / f"{i:03d}.png", seed=i)
    (root / "0" / "not-an-image.png").write_bytes(b"this is not a picture")
    whole = make_image(root / "1" / "whole.png", seed=999).read_bytes()
    (root / "1" / "whole.png").unlink()
    (root / "1" / "cut.png").write_bytes(whole[: len(whole) // 2])
    return root


def snapshot(engine: Engine) -> dict[str, dict[str, object]]:
    """Live images by path: content hash, stored tag scores and embedding bytes."""
    with session_factory(engine)() as session:
        names = dict(session.execute(select(Tag.id, Tag.name)).all())
        images = session.execute(
            select(Image.id, Image.path, Image.sha256, Image.width, Image.height).where(
                Image.deleted_at.is_(None)
            )
        ).all()
        state: dict[str, dict[str, object]] = {}
        for image_id, path, sha, width, height in images:
            tags = {
                names[t]: round(s, 6)
                for t, s in session.execute(
                    select(ImageTag.tag_id, ImageTag.score).where(ImageTag.image_id == image_id)
                )
            }
            vector = session.scalar(select(Embedding.vector).where(Embedding.image_id == image_id))
            state[path] = {
                "sha256": sha,
                "size": (width, height),
                "tags": tags,
                "vector": vector,
                "id": image_id,
            }
        return state


def stored_vector(state: Mapping[str, object]) -> np.ndarray:
    """The embedding bytes of a snapshot entry, read as the float16 values the index stores."""
    vector = state["vector"]
    assert isinstance(vector, bytes), vector
    return np.frombuffer(vector, "<f2")


Snapshot = dict[str, dict[str, object]]


def assert_indexed_alike(first: Engine, second: Engine) -> tuple[Snapshot, Snapshot]:
    """Two indexes of the same files by different paths (a device's decode against the
    readers'): the same files, hashes and sizes, embeddings within resize noise (cosine over
    0.99). Returns both snapshots for the caller's own checks."""
    one, two = snapshot(first), snapshot(second)
    assert one.keys() == two.keys()
    for path, state in one.items():
        twin = two[path]
        assert (state["sha256"], state["size"]) == (twin["sha256"], twin["size"]), path
        a, b = stored_vector(state).astype(np.float32), stored_vector(twin).astype(np.float32)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99, path
    return one, two


def live_count(url: str) -> int:
    engine = create_db_engine(url)
    try:
        return live_images(engine)
    finally:
        engine.dispose()


def live_images(engine: Engine) -> int:
    """Images not deleted (one engine for many checks: a crash test's, every few ms)."""
    with session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).where(Image.deleted_at.is_(None))) or 0)


def faiss_state(url: str, data_dir: Path) -> dict[str, np.ndarray]:
    """Path -> vector as held by the FAISS index, which must hold exactly the live images."""
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            generation = active_generation(session)
            assert generation is not None
            paths = dict(
                session.execute(
                    select(Image.id, Image.path).where(Image.deleted_at.is_(None))
                ).all()
            )
        index = vectors.load_fresh(engine, data_dir, generation.id)
        ids = vectors.stored_ids(index.index)
        assert sorted(ids.tolist()) == sorted(paths), "FAISS ids must be exactly the live images"
        return dict(zip([paths[i] for i in ids.tolist()], index.reconstruct(ids), strict=True))
    finally:
        engine.dispose()


def assert_same_index(
    got: dict[str, dict[str, object]], expected: dict[str, dict[str, object]]
) -> None:
    """Same files, content and tags; scores and vectors equal up to the float noise of a
    forward pass whose batch composition differs after a resume."""
    assert sorted(got) == sorted(expected)
    for path, state in got.items():
        want = expected[path]
        assert (state["sha256"], state["size"]) == (want["sha256"], want["size"]), path
        tags, want_tags = state["tags"], want["tags"]
        assert isinstance(tags, dict) and isinstance(want_tags, dict)
        assert sorted(tags) == sorted(want_tags), path
        for name, score in tags.items():
            assert score == pytest.approx(want_tags[name], abs=1e-4), (path, name)
        vector = stored_vector(state)
        want_vector = stored_vector(want)
        np.testing.assert_allclose(vector, want_vector, atol=2e-3)


def index_locally(settings: Settings, tagger: Tagger, root: Path) -> IndexSummary:
    engine = create_db_engine(settings.database_url or "")
    try:
        return Indexer(engine, tagger, jobs.index_options(settings)).run([root])
    finally:
        engine.dispose()


def failed(problems: list[Problem]) -> list[tuple[str, str, str]]:
    return sorted((p.path, p.code, p.message) for p in problems)

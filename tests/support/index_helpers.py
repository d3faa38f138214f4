"""Shared helpers for the indexer tests: generated images and a snapshot of index state."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import Engine, select

from app.store.db import session_factory
from app.store.models import Embedding, Image, ImageTag, Tag


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

"""Rows in ``sagashi import``'s format, with known tags and embeddings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

DIM = 8


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def vector(seed: int) -> list[float]:
    values: list[float] = np.random.default_rng(seed).normal(size=DIM).round(4).tolist()
    return values


def record(i: int, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "path": f"/cluster/img/{i:03d}.jpg",
        "sha256": sha(str(i)),
        "width": 800,
        "height": 600,
        "tags": {"1girl": 0.97, "doughnut": 0.61, "solo": 0.02, "long_hair": 0.4},
        "embedding": vector(i),
    }
    row.update(overrides)
    return row


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

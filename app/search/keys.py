"""Sort keys for ``order:``, from the posting engine's memory or from SQL; both give the same
numbers, so a page is the same whichever engine answered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Float, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from app.query import Order
from app.search.bitmaps import bitmap_of
from app.search.epoch import micros
from app.search.paging import KeySource, Presorted
from app.search.postings import PostingEngine
from app.store.models import Image, ImageTag, Tag
from app.store.repository import chunks

# Columns of the posting engine's attributes, by order key.
ATTRIBUTE_KEYS = {"filesize": "size_bytes", "mpixels": "mpixels", "date": "indexed_us"}
ID_CHUNK = 500


def posting_keys(
    engine: PostingEngine, counted: tuple[tuple[int, float], ...], score_tag: int | None
) -> KeySource:
    def keys(order: Order, ids: np.ndarray) -> np.ndarray:
        values = np.zeros(len(ids), dtype=np.float64)
        if len(engine.segments) == 1:  # the usual case: every match is in the one segment
            parts = [(engine.segments[0], np.arange(len(ids)), ids)]
        else:
            # per_segment yields ascending ids; so does ``ids``: match them by position.
            parts = [
                (segment, np.searchsorted(ids, mine), mine)
                for segment, mine in engine.per_segment(bitmap_of(ids, presorted=True))
            ]
        for segment, where, mine in parts:
            pos, _found = segment.attributes.positions(mine)
            if order.key in ATTRIBUTE_KEYS:
                values[where] = segment.attributes.columns[ATTRIBUTE_KEYS[order.key]][pos]
            elif order.key == "tagcount":
                values[where] = segment.tag_counts(counted)[pos]
            elif order.key == "score" and score_tag is not None:
                values[where] = segment.tag_scores(score_tag, mine)
        return values

    return keys


def posting_presorted(engine: PostingEngine) -> Presorted:
    """Every image pre-sorted by an attribute order, for pages of large match sets."""

    def presorted(order: Order) -> tuple[np.ndarray, np.ndarray] | None:
        if order.key not in ATTRIBUTE_KEYS or len(engine.segments) != 1:
            return None
        return engine.segments[0].attributes.sorted_by(ATTRIBUTE_KEYS[order.key])

    return presorted


def sql_keys(
    session: Session,
    generation_id: int,
    counted: tuple[tuple[int, float], ...],
    score_tag: int | None,
) -> KeySource:
    def keys(order: Order, ids: np.ndarray) -> np.ndarray:
        found: dict[int, float] = {}
        for chunk in chunks([int(i) for i in ids], ID_CHUNK):
            statement = _statement(order, chunk, generation_id, counted, score_tag)
            if statement is not None:
                found.update(_key_value(order, row) for row in session.execute(statement))
        return np.array([found.get(int(i), 0.0) for i in ids], dtype=np.float64)

    return keys


def _statement(
    order: Order,
    chunk: Sequence[int],
    generation_id: int,
    counted: tuple[tuple[int, float], ...],
    score_tag: int | None,
) -> Any:
    if order.key == "filesize":
        return select(Image.id, Image.size_bytes).where(Image.id.in_(chunk))
    if order.key == "mpixels":
        pixels = cast(Image.width, Float(precision=53)) * Image.height / 1_000_000.0
        return select(Image.id, pixels).where(Image.id.in_(chunk))
    if order.key == "date":
        return select(Image.id, Image.indexed_at).where(Image.id.in_(chunk))
    if order.key == "tagcount":
        condition = or_(*(and_(Tag.group == g, ImageTag.score >= t) for g, t in counted))
        return (
            select(ImageTag.image_id, func.count())
            .join(Tag, Tag.id == ImageTag.tag_id)
            .where(ImageTag.generation_id == generation_id, ImageTag.image_id.in_(chunk), condition)
            .group_by(ImageTag.image_id)
        )
    if order.key == "score" and score_tag is not None:
        return select(ImageTag.image_id, ImageTag.score).where(
            ImageTag.generation_id == generation_id,
            ImageTag.tag_id == score_tag,
            ImageTag.image_id.in_(chunk),
        )
    return None


def _key_value(order: Order, row: Any) -> tuple[int, float]:
    image_id, value = row[0], row[1]
    if order.key == "date":
        return int(image_id), float(micros(value))
    if order.key == "score":
        return int(image_id), float(np.float32(value))
    return int(image_id), float(value)

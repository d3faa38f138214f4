"""Engine (b): the in-memory posting engine, the fast path.

For each tag the image ids are held sorted by score, highest first, so any threshold is a
prefix (and any range a slice) found by binary search. Slices become roaring bitmaps, and
AND, OR and NOT are bitmap operations against the live images of the generation. Bitmaps of
recent (tag, range) pairs are cached, since most terms use their group's default threshold.

The engine is loaded from the database and knows the index version it reflects; a reader
calls :meth:`PostingEngine.is_current` and reloads when the index has moved on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pyroaring import BitMap
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.search.plan import (
    PAll,
    PAnd,
    PAttr,
    PFormat,
    PlanNode,
    PNot,
    PNothing,
    POr,
    PPath,
    PSha,
    PTag,
)
from app.store.models import Embedding, Image, ImageTag
from app.store.repository import index_version

CACHE_SIZE = 4096
READ_CHUNK = 500_000


@dataclass(frozen=True)
class Postings:
    """One tag's images, by descending score (ties by ascending id)."""

    ids: np.ndarray  # uint32
    neg_scores: np.ndarray  # float32, ascending: -score, for searchsorted

    def slice(self, plan: PTag) -> np.ndarray:
        # -score ascending; score >= lo  <=>  -score <= -lo
        lo_side: Literal["left", "right"] = "right" if plan.lo_inclusive else "left"
        end = int(np.searchsorted(self.neg_scores, -np.float32(plan.lo), side=lo_side))
        start = 0
        if plan.hi is not None:
            hi_side: Literal["left", "right"] = "left" if plan.hi_inclusive else "right"
            start = int(np.searchsorted(self.neg_scores, -np.float32(plan.hi), side=hi_side))
        return self.ids[start:end] if start < end else self.ids[:0]


@dataclass(frozen=True)
class Attributes:
    """Per-image columns of the live images, aligned with ``ids`` (ascending)."""

    ids: np.ndarray
    columns: dict[str, np.ndarray]
    sha256: dict[str, list[int]]
    formats: np.ndarray  # str objects
    paths: list[str]

    def with_format(self, plan: PFormat) -> BitMap:
        return BitMap(self.ids[np.isin(self.formats, sorted(plan.formats))])

    def with_path(self, plan: PPath) -> BitMap:
        regex = plan.regex()
        return BitMap(
            int(i)
            for i, path in zip(self.ids.tolist(), self.paths, strict=True)
            if regex.fullmatch(path)
        )

    def select(self, plan: PAttr) -> BitMap:
        values = self.columns[plan.column]
        mask = np.zeros(len(values), dtype=bool)
        for part in plan.ranges.ranges:
            inside = np.ones(len(values), dtype=bool)
            if part.lo is not None:
                inside &= values >= part.lo if part.lo_inclusive else values > part.lo
            if part.hi is not None:
                inside &= values <= part.hi if part.hi_inclusive else values < part.hi
            mask |= inside
        return BitMap(self.ids[mask])


class PostingEngine:
    def __init__(
        self,
        generation_id: int,
        version: int,
        live: BitMap,
        postings: dict[int, Postings],
        attributes: Attributes,
    ) -> None:
        self.generation_id = generation_id
        self.version = version
        self.live = live
        self.postings = postings
        self.attributes = attributes
        self._cache: OrderedDict[PTag, BitMap] = OrderedDict()

    @classmethod
    def load(cls, session: Session, generation_id: int) -> PostingEngine:
        version = index_version(session, generation_id)
        live_ids = session.scalars(
            select(Embedding.image_id).where(Embedding.generation_id == generation_id)
        ).all()
        rows = session.execute(
            select(ImageTag.tag_id, ImageTag.score, ImageTag.image_id)
            .where(ImageTag.generation_id == generation_id)
            .order_by(ImageTag.tag_id, ImageTag.score.desc(), ImageTag.image_id)
            .execution_options(yield_per=READ_CHUNK)
        )
        tags, scores, images = [], [], []
        for tag_id, score, image_id in rows:
            tags.append(tag_id)
            scores.append(score)
            images.append(image_id)
        live = BitMap(live_ids)
        attributes = _attributes(session, live)
        return cls(generation_id, version, live, _group(tags, scores, images), attributes)

    def is_current(self, session: Session) -> bool:
        return index_version(session, self.generation_id) == self.version

    def evaluate(self, plan: PlanNode) -> BitMap:
        if isinstance(plan, PAll):
            return self.live
        if isinstance(plan, PNothing):
            return BitMap()
        if isinstance(plan, PTag):
            return self._tag(plan)
        if isinstance(plan, PAttr):
            return self.attributes.select(plan) & self.live
        if isinstance(plan, PSha):
            return BitMap(self.attributes.sha256.get(plan.sha256, ())) & self.live
        if isinstance(plan, PFormat):
            return self.attributes.with_format(plan) & self.live
        if isinstance(plan, PPath):
            return self.attributes.with_path(plan) & self.live
        if isinstance(plan, PNot):
            return self.live - self.evaluate(plan.child)
        if isinstance(plan, POr):
            return BitMap.union(*(self.evaluate(c) for c in plan.children))
        assert isinstance(plan, PAnd)
        positives = [self.evaluate(c) for c in plan.children if not isinstance(c, PNot)]
        result = BitMap.intersection(*positives) if positives else self.live
        for child in plan.children:
            if isinstance(child, PNot):
                result = result - self.evaluate(child.child)
        return result

    def search(self, plan: PlanNode) -> list[int]:
        """The matching image ids, ascending."""
        return list(self.evaluate(plan))

    def _tag(self, plan: PTag) -> BitMap:
        cached = self._cache.get(plan)
        if cached is not None:
            self._cache.move_to_end(plan)
            return cached
        postings = self.postings.get(plan.tag_id)
        bitmap = BitMap(postings.slice(plan)) if postings is not None else BitMap()
        bitmap &= self.live
        self._cache[plan] = bitmap
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return bitmap


def _attributes(session: Session, live: BitMap) -> Attributes:
    rows = [
        row
        for row in session.execute(
            select(
                Image.id,
                Image.width,
                Image.height,
                Image.size_bytes,
                Image.sha256,
                Image.format,
                Image.path,
            )
            .where(Image.deleted_at.is_(None))
            .order_by(Image.id)
        ).all()
        if row[0] in live
    ]
    by_sha: dict[str, list[int]] = {}
    for row in rows:
        by_sha.setdefault(row[4], []).append(row[0])
    return Attributes(
        ids=np.array([r[0] for r in rows], dtype=np.uint32),
        columns={
            "id": np.array([r[0] for r in rows], dtype=np.int64),
            "width": np.array([r[1] for r in rows], dtype=np.int64),
            "height": np.array([r[2] for r in rows], dtype=np.int64),
            "size_bytes": np.array([r[3] for r in rows], dtype=np.int64),
        },
        sha256=by_sha,
        formats=np.array([r[5] for r in rows], dtype=object),
        paths=[r[6] for r in rows],
    )


def _group(tags: list[int], scores: list[float], images: list[int]) -> dict[int, Postings]:
    if not tags:
        return {}
    tag_array = np.asarray(tags, dtype=np.int64)
    neg = -np.asarray(scores, dtype=np.float32)
    ids = np.asarray(images, dtype=np.uint32)
    bounds = np.flatnonzero(np.diff(tag_array)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(tag_array)]))
    return {
        int(tag_array[s]): Postings(ids[s:e].copy(), neg[s:e].copy())
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    }

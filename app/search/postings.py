"""Engine (b): the in-memory posting engine, the fast path.

For each tag the image ids are held sorted by score, highest first, so any threshold is a
prefix (and any range a slice) found by binary search. Slices become roaring bitmaps, and
AND, OR and NOT are bitmap operations against the live images. Bitmaps of recent (tag,
range) pairs are cached, since most terms use their group's default threshold.

The engine is a short list of *segments*, each a complete small engine over a disjoint set
of images, so a query is evaluated per segment and the answers are united (every operator,
NOT included, decides each image from that image's data alone). The first segment is the
bulk load; :meth:`PostingEngine.refresh` reads the ``image_changes`` log written in the same
transactions as the index, drops the changed images from the older segments and loads their
current state as a new, small segment. Many or large segments trigger one full reload.
Refreshing builds new objects and never mutates what a concurrent reader may hold.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal, overload

import numpy as np
from pyroaring import BitMap
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.search.bitmaps import bitmap_of
from app.search.epoch import micros
from app.search.plan import (
    PAll,
    PAnd,
    PAttr,
    PFormat,
    PlanNode,
    PMd5,
    PNot,
    PNothing,
    POr,
    PPath,
    PRating,
    PSha,
    PTag,
    PTagCount,
)
from app.store.models import Embedding, Image, ImageChange, ImageTag, Tag
from app.store.repository import chunks
from app.tagger.defaults import CARD
from app.tagger.vocab import GROUPS
from app.text import plural

log = logging.getLogger(__name__)

CACHE_SIZE = 4096
# Filters on image values scan only the images still in the running when those are fewer
# than 1 in RESTRICT_RATIO of the live ones; else they scan all (once: the result is cached).
RESTRICT_RATIO = 8
READ_CHUNK = 200_000
ID_CHUNK = 500
MAX_SEGMENTS = 8
# A refresh that would leave more than this share of the live images outside the bulk
# segment reloads everything instead.
MAX_DELTA_SHARE = 0.1
MIN_DELTA_LIMIT = 20_000


def delta_limit(images: int) -> int:
    """The most images a delta may hold over a collection of ``images`` before a merge."""
    return max(MIN_DELTA_LIMIT, int(MAX_DELTA_SHARE * images))


def fold_start(sizes: Sequence[int], tail: int, floor: int = 1) -> int:
    """Where the trailing segments (of ``sizes``) to reload as one with ``tail`` more images
    begin: every one no more than twice the size of those after it, so that sizes grow
    geometrically and a fold rereads mostly small segments, never one before ``floor`` (the
    bulk segment, and the delta segments already on disk)."""
    start = len(sizes)
    while start > floor and sizes[start - 1] <= 2 * tail:
        start -= 1
        tail += sizes[start]
    return start


def _fold_start(segments: Sequence[Segment], floor: int) -> int:
    """:func:`fold_start` of the delta segments in memory: at least the last one."""
    last = max(len(segments) - 1, floor)
    sizes = [len(s.live) for s in segments[:last]]
    return fold_start(sizes, sum(len(s.live) for s in segments[last:]), floor)


@dataclass(frozen=True)
class Postings:
    """One tag's images, by descending score (ties by ascending id)."""

    ids: np.ndarray  # uint32
    neg_scores: np.ndarray  # float32, ascending: -score, for searchsorted

    def slice(self, plan: PTag) -> np.ndarray:
        # Scores are float32 and the bounds doubles, compared as doubles (as SQL does): each
        # bound becomes the float32 on the right side of it. In -score order, "score >= c" is
        # a prefix ending after -c, "score > f" one ending before -f.
        if plan.lo_inclusive:
            end = self._find(-_f32_ceil(plan.lo), "right")
        else:
            end = self._find(-_f32_floor(plan.lo), "left")
        start = 0
        if plan.hi is not None:
            if plan.hi_inclusive:
                start = self._find(-_f32_floor(plan.hi), "left")
            else:
                start = self._find(-_f32_ceil(plan.hi), "right")
        return self.ids[start:end] if start < end else self.ids[:0]

    def at_least(self, threshold: float) -> np.ndarray:
        return self.ids[: self._find(-_f32_ceil(threshold), "right")]

    def _find(self, value: np.float32, side: Literal["left", "right"]) -> int:
        return int(np.searchsorted(self.neg_scores, value, side=side))


def _f32_ceil(value: float) -> np.float32:
    """The smallest float32 at or above ``value``."""
    near = np.float32(value)
    return np.nextafter(near, np.float32(np.inf)) if float(near) < value else near


def _f32_floor(value: float) -> np.float32:
    """The largest float32 at or below ``value``."""
    near = np.float32(value)
    return np.nextafter(near, np.float32(-np.inf)) if float(near) > value else near


class PathTable(Sequence[str]):
    """Image paths as one UTF-8 blob and its offsets, decoded one at a time on demand."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self._blob = blob
        self._offsets = offsets

    @property
    def blob(self) -> np.ndarray:
        return self._blob

    @property
    def offsets(self) -> np.ndarray:
        return self._offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        return bytes(self._blob[start:end]).decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Attributes:
    """Per-image values of a segment's images, aligned with ``ids`` (ascending)."""

    ids: np.ndarray  # uint32
    columns: dict[str, np.ndarray]
    sha_keys: np.ndarray  # sorted digests (bytes): no per-image Python objects to traverse
    sha_ids: np.ndarray  # image ids aligned with sha_keys
    md5_keys: np.ndarray  # sorted md5 digests (bytes; empty where none is recorded)
    md5_ids: np.ndarray  # image ids aligned with md5_keys
    format_codes: np.ndarray  # uint16 index into format_names
    format_names: list[str]
    paths: Sequence[str]  # a list, or a PathTable over a mapped file
    _sorted: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def sorted_by(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, keys) of every image, ascending by (key, id): one sort per column, kept."""
        found = self._sorted.get(column)
        if found is None:
            values = self.columns[column].astype(np.float64)
            order = np.lexsort((self.ids, values))
            found = (self.ids[order], values[order])
            self._sorted[column] = found
        return found

    @cached_property
    def _dense(self) -> np.ndarray:
        """Image id -> position (-1 where absent): one gather instead of a binary search."""
        size = int(self.ids[-1]) + 1 if len(self.ids) else 0
        dense = np.full(size, -1, dtype=np.int64)
        dense[self.ids] = np.arange(len(self.ids))
        return dense

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found mask) of image ids in this segment."""
        dense = self._dense
        ids = np.asarray(ids, dtype=np.int64)
        inside = ids < len(dense)
        pos = np.full(len(ids), -1, dtype=np.int64)
        pos[inside] = dense[ids[inside]]
        found = pos >= 0
        return np.where(found, pos, 0), found

    def with_sha(self, digest: str) -> BitMap:
        return _with_digest(self.sha_keys, self.sha_ids, digest)

    def with_md5(self, digest: str) -> BitMap:
        return _with_digest(self.md5_keys, self.md5_ids, digest)

    def mask(self, plan: PAttr | PFormat | PPath, positions: np.ndarray) -> np.ndarray:
        """Which of the images at ``positions`` the filter keeps."""
        if isinstance(plan, PAttr):
            return in_ranges(self.columns[plan.column][positions], plan.ranges.ranges)
        if isinstance(plan, PFormat):
            codes = [i for i, name in enumerate(self.format_names) if name in plan.formats]
            return np.isin(self.format_codes[positions], codes)
        regex = plan.regex()
        return np.fromiter(
            (regex.fullmatch(self.paths[p]) is not None for p in positions.tolist()),
            dtype=bool,
            count=len(positions),
        )


def _with_digest(keys: np.ndarray, ids: np.ndarray, digest: str) -> BitMap:
    key = np.bytes_(digest.encode("ascii"))
    start = int(np.searchsorted(keys, key, side="left"))
    end = int(np.searchsorted(keys, key, side="right"))
    return bitmap_of(ids[start:end])


def in_ranges(values: np.ndarray, ranges: Iterable[Any]) -> np.ndarray:
    """A mask of the values inside any of the ranges."""
    mask = np.zeros(len(values), dtype=bool)
    for part in ranges:
        inside = np.ones(len(values), dtype=bool)
        if part.lo is not None:
            inside &= values >= part.lo if part.lo_inclusive else values > part.lo
        if part.hi is not None:
            inside &= values <= part.hi if part.hi_inclusive else values < part.hi
        mask |= inside
    return mask


SCANNED = (PAttr, PFormat, PPath, PTagCount)
# Tags with at least this many stored scores get a prebuilt default-threshold bitmap.
PREBUILD_MIN = 2_000
# At the card's thresholds: with other SAGASHI_THRESHOLD_* settings, default-threshold terms
# are computed on demand instead of found prebuilt (slower, never wrong).
PREBUILD_THRESHOLDS = {GROUPS.index(group): t for group, t in CARD.thresholds().items()}


@dataclass
class Segment:
    """A complete engine over one set of images; ``live`` may shrink as images change."""

    live: BitMap
    postings: dict[int, Postings]
    attributes: Attributes
    tag_groups: dict[int, int]
    _cache: OrderedDict[object, BitMap] = field(default_factory=OrderedDict, repr=False)
    # Per-image arrays derived from the postings (ratings, tag counts, scores by id); they
    # ignore ``live``, so they survive ``without``.
    _derived: dict[object, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Default-threshold bitmaps of common tags, not limited to the live images.
    _prebuilt: dict[PTag, BitMap] = field(default_factory=dict, repr=False)

    def without(self, image_ids: BitMap) -> Segment:
        """This segment less some images; the big arrays are shared, the caches are not."""
        return replace(
            self, live=self.live - image_ids, _cache=OrderedDict(), _lock=threading.Lock()
        )

    def evaluate(self, plan: PlanNode) -> BitMap:
        if isinstance(plan, PAll):
            return self.live
        if isinstance(plan, PNothing):
            return BitMap()
        if isinstance(plan, PTag):
            return self._cached(plan, lambda: self._slice(plan))
        if isinstance(plan, SCANNED):
            return self._cached(plan, lambda: self._scan(plan, None))
        if isinstance(plan, PRating):
            return self._cached(plan, lambda: self._rating(plan))
        if isinstance(plan, PSha):
            return self.attributes.with_sha(plan.sha256) & self.live
        if isinstance(plan, PMd5):
            return self.attributes.with_md5(plan.md5) & self.live
        if isinstance(plan, PNot):
            return self.live - self.evaluate(plan.child)
        if isinstance(plan, POr):
            if all(isinstance(c, PTag) for c in plan.children):  # a wildcard's expansion
                return self._cached(plan, lambda: self._union(plan))
            return self._union(plan)
        assert isinstance(plan, PAnd)
        return self._and(plan)

    def _union(self, plan: POr) -> BitMap:
        return BitMap.union(*(self.evaluate(c) for c in plan.children))

    def _and(self, plan: PAnd) -> BitMap:
        """Indexed terms first, smallest first; then the terms that must look at each image
        (metatags on image values), only at the images still in the running."""
        positives = [c for c in plan.children if not isinstance(c, PNot)]
        negatives: list[PlanNode] = [c.child for c in plan.children if isinstance(c, PNot)]
        indexed = sorted(
            (self.evaluate(c) for c in positives if not isinstance(c, SCANNED)), key=len
        )
        result = BitMap.intersection(*indexed) if indexed else self.live
        for child in positives:
            if isinstance(child, SCANNED) and result:
                result = self._within(child, result)
        # Indexed negations first: they are cheap and shrink what the scans must look at.
        negatives.sort(key=lambda c: isinstance(c, SCANNED))
        for negative in negatives:
            if result:
                result = result - self._within(negative, result)
        return result

    def _within(self, plan: PlanNode, candidates: BitMap) -> BitMap:
        """The candidates that match ``plan``: scanned at just those images when they are
        few, else from the plan's full (cached) result."""
        if isinstance(plan, SCANNED) and len(candidates) * RESTRICT_RATIO < len(self.live):
            return self._scan(plan, candidates)
        return self.evaluate(plan) & candidates

    def _scan(self, plan: PAttr | PFormat | PPath | PTagCount, within: BitMap | None) -> BitMap:
        attributes = self.attributes
        if within is None:
            ids, positions = attributes.ids, np.arange(len(attributes.ids))
        else:
            ids = np.frombuffer(within.to_array(), dtype=np.uint32)
            positions, found = attributes.positions(ids)
            ids, positions = ids[found], positions[found]
        if isinstance(plan, PTagCount):
            mask = in_ranges(self.tag_counts(plan.groups)[positions], plan.ranges.ranges)
        else:
            mask = attributes.mask(plan, positions)
        return bitmap_of(ids[mask], presorted=True) & self.live

    def _cached(self, key: object, compute: Any) -> BitMap:
        # Searches run in a thread pool: the LRU's reordering is guarded, the computing not
        # (two threads may compute the same bitmap once each; both results are equal).
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        bitmap: BitMap = compute()
        with self._lock:
            self._cache[key] = bitmap
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return bitmap

    def _slice(self, plan: PTag) -> BitMap:
        prebuilt = self._prebuilt.get(plan)
        if prebuilt is not None:
            return prebuilt & self.live
        postings = self.postings.get(plan.tag_id)
        bitmap = bitmap_of(postings.slice(plan)) if postings is not None else BitMap()
        return bitmap & self.live

    def prebuild(self, thresholds: Mapping[int, float]) -> None:
        """Bitmaps of every common tag at its group's default threshold, built once at load:
        a cold search for ``long_hair`` then costs an intersection, not a 400k-id sort."""
        min_images = PREBUILD_MIN
        for tag_id, postings in self.postings.items():
            group = self.tag_groups.get(tag_id)
            if group is None or group not in thresholds or len(postings.ids) < min_images:
                continue
            plan = PTag(tag_id, thresholds[group])
            self._prebuilt[plan] = bitmap_of(postings.slice(plan))

    def prebuilt_plans(self) -> list[PTag]:
        return list(self._prebuilt)

    def prebuilt(self, plan: PTag) -> BitMap:
        found = self._prebuilt.get(plan)
        assert found is not None, plan
        return found

    def use_prebuilt(self, bitmaps: dict[PTag, BitMap]) -> None:
        """Bitmaps prebuilt elsewhere (a segment set's, deserialized on first use)."""
        self._prebuilt = bitmaps

    def _rating(self, plan: PRating) -> BitMap:
        ratings = self.ratings(plan.tag_ids)
        wanted = np.isin(ratings, sorted(plan.wanted))
        return bitmap_of(self.attributes.ids[wanted], presorted=True) & self.live

    def ratings(self, tag_ids: Sequence[int | None]) -> np.ndarray:
        """Per image (aligned with the attributes), the index of its most likely rating
        (ties to the milder one), or -1 when it has none stored."""
        key = ("ratings", tuple(tag_ids))
        if key in self._derived:
            return self._derived[key]  # type: ignore[no-any-return]
        ids = self.attributes.ids
        scores = np.full((len(ids), len(tag_ids)), -1.0, dtype=np.float32)
        for column, tag_id in enumerate(tag_ids):
            postings = self.postings.get(tag_id) if tag_id is not None else None
            if postings is None:
                continue
            pos, found = self.attributes.positions(postings.ids)
            scores[pos[found], column] = -postings.neg_scores[found]
        best = np.argmax(scores, axis=1) if len(tag_ids) else np.zeros(len(ids), dtype=np.int64)
        best[scores.max(axis=1, initial=-1.0) < 0] = -1
        self._derived[key] = best
        return best

    def tag_counts(self, groups: tuple[tuple[int, float], ...]) -> np.ndarray:
        """Per image, how many of its tags reach their group's threshold."""
        key = ("counts", groups)
        if key in self._derived:
            return self._derived[key]  # type: ignore[no-any-return]
        thresholds = dict(groups)
        parts = [
            postings.at_least(thresholds[group])
            for tag_id, postings in self.postings.items()
            if (group := self.tag_groups.get(tag_id, -1)) in thresholds
        ]
        counts = np.zeros(len(self.attributes.ids), dtype=np.int64)
        if parts:
            ids = np.concatenate(parts)
            pos, found = self.attributes.positions(ids)
            counts = np.bincount(pos[found], minlength=len(self.attributes.ids))
        self._derived[key] = counts
        return counts

    def tag_scores(self, tag_id: int, image_ids: np.ndarray) -> np.ndarray:
        """One tag's scores for the given images (0 where not stored)."""
        postings = self.postings.get(tag_id)
        scores = np.zeros(len(image_ids), dtype=np.float32)
        if postings is None or not len(image_ids):
            return scores
        key = ("by_id", tag_id)
        if key not in self._derived:
            order = np.argsort(postings.ids, kind="stable")
            self._derived[key] = (postings.ids[order], -postings.neg_scores[order])
        sorted_ids, sorted_scores = self._derived[key]
        pos = np.minimum(np.searchsorted(sorted_ids, image_ids), len(sorted_ids) - 1)
        hit = sorted_ids[pos] == image_ids
        scores[hit] = sorted_scores[pos[hit]]
        return scores

    @classmethod
    def load(
        cls,
        session: Session,
        generation_id: int,
        tag_groups: dict[int, int],
        image_ids: Sequence[int] | None = None,
    ) -> Segment:
        """The whole generation, or (``image_ids``) the current state of those images."""
        if image_ids is None:
            live = generation_images(session, generation_id)
            postings = _read_postings(session, generation_id, None)
        else:
            live = BitMap()
            for chunk in chunks(sorted(image_ids), ID_CHUNK):
                live.update(
                    session.scalars(
                        select(Embedding.image_id).where(
                            Embedding.generation_id == generation_id,
                            Embedding.image_id.in_(chunk),
                        )
                    ).all()
                )
            postings = _read_postings(session, generation_id, sorted(live))
        attributes = _attributes(session, live)
        live &= bitmap_of(attributes.ids, presorted=True)
        segment = cls(live, postings, attributes, tag_groups)
        segment.prebuild(PREBUILD_THRESHOLDS)
        return segment


def generation_images(session: Session, generation_id: int) -> BitMap:
    """The ids of the images the generation holds (those with an embedding)."""
    return BitMap(
        session.scalars(
            select(Embedding.image_id).where(Embedding.generation_id == generation_id)
        ).all()
    )


def generation_attributes(session: Session, live: BitMap) -> tuple[BitMap, Attributes]:
    """The live images' attributes, and ``live`` less any image without a live row."""
    attributes = _attributes(session, live)
    return live & bitmap_of(attributes.ids, presorted=True), attributes


def generation_postings(session: Session, generation_id: int) -> Iterator[tuple[int, Postings]]:
    """The generation's postings tag by tag (:func:`tag_postings`), read in the key's order."""
    statement = select(ImageTag.tag_id, ImageTag.score, ImageTag.image_id).where(
        ImageTag.generation_id == generation_id
    )
    key = (ImageTag.tag_id, ImageTag.score, ImageTag.image_id)
    return tag_postings(_raw_blocks(session, statement.order_by(*key)))


def _read_postings(
    session: Session, generation_id: int, image_ids: Sequence[int] | None
) -> dict[int, Postings]:
    """Postings by tag, read through the driver's own cursor (SQLAlchemy rows are far too
    slow for tens of millions of postings) in the clustered key's own ascending order: asking
    for descending scores made SQLite sort each tag's rows, about a fifth of a load at 1M
    images; :func:`_joined` turns each tag around instead."""
    base = select(ImageTag.tag_id, ImageTag.score, ImageTag.image_id).where(
        ImageTag.generation_id == generation_id
    )
    if image_ids is None:
        return dict(generation_postings(session, generation_id))
    # No ORDER BY here: asked for the key's order, SQLite walked the whole key (60M rows at
    # 1M images) for each chunk of 500 images instead of their index; they are sorted below.
    statements = [base.where(ImageTag.image_id.in_(c)) for c in chunks(image_ids, ID_CHUNK)]
    blocks = [block for statement in statements for block in _raw_blocks(session, statement)]
    if not blocks:
        return {}
    rows = np.concatenate(blocks)
    # Chunks by image break the key's order: restore it.
    return _grouped([rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]])


def _raw_blocks(session: Session, statement: Any) -> Iterable[np.ndarray]:
    """A numeric SELECT's rows as float64 blocks, fetched with the DB-API cursor (a named,
    server-side cursor on PostgreSQL, so the result never sits whole in memory)."""
    connection = session.connection()
    sql = str(statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    raw = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        cursor = raw.cursor(name=f"postings_{id(statement)}")  # type: ignore[union-attr]
    else:
        cursor = raw.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(READ_CHUNK):
            yield np.array(rows, dtype=np.float64).reshape(-1, 3)
    finally:
        cursor.close()


def _grouped(blocks: Iterable[np.ndarray]) -> dict[int, Postings]:
    """Postings by tag from (tag, score, image) blocks in ascending key order (see
    :func:`tag_postings`)."""
    return dict(tag_postings(blocks))


def tag_postings(blocks: Iterable[np.ndarray]) -> Iterator[tuple[int, Postings]]:
    """Each tag's postings, in ascending tag order, from (tag, score, image) blocks in
    ascending key order, grouped as the blocks arrive: a block's tags are final once the next
    one starts, so a caller holds one tag's postings and one block, never the whole result
    as rows (at 1M images, that peaked at 4.5 GB for 0.48 GB of arrays)."""
    open_tag, pieces = -1, list[tuple[np.ndarray, np.ndarray]]()
    for block in blocks:
        tags = block[:, 0].astype(np.int64)
        neg = -block[:, 1].astype(np.float32)
        ids = block[:, 2].astype(np.uint32)
        bounds = (np.flatnonzero(np.diff(tags)) + 1).tolist()
        for start, end in zip([0, *bounds], [*bounds, len(tags)], strict=True):
            tag = int(tags[start])
            if tag != open_tag and pieces:
                yield open_tag, _joined(pieces)
                pieces = []
            open_tag = tag
            pieces.append((ids[start:end], neg[start:end]))
    if pieces:
        yield open_tag, _joined(pieces)


def _joined(pieces: list[tuple[np.ndarray, np.ndarray]]) -> Postings:
    """One tag's postings from its pieces, which run by ascending (score, image). Postings run
    by descending score with ties still by ascending image, so the runs of equal scores are
    laid out in reverse order, each kept as it is. The result is new memory: no piece keeps
    its block alive."""
    ids = np.concatenate([ids for ids, _ in pieces])
    neg = np.concatenate([neg for _, neg in pieces])
    size = len(ids)
    changes = np.flatnonzero(neg[1:] != neg[:-1]) + 1
    if len(changes) == size - 1:  # no two scores alike: a plain reversal
        return Postings(ids[::-1].copy(), neg[::-1].copy())
    starts = np.concatenate(([0], changes))
    ends = np.concatenate((changes, [size]))
    run = np.repeat(np.arange(len(starts)), ends - starts)
    position = size - ends[run] + (np.arange(size) - starts[run])
    out_ids, out_neg = np.empty_like(ids), np.empty_like(neg)
    out_ids[position] = ids
    out_neg[position] = neg
    return Postings(out_ids, out_neg)


def _attributes(session: Session, live: BitMap) -> Attributes:
    """The live images' attributes, read a block of rows at a time into growing arrays: no
    Python object per image outlives its block (at 1M images the rows alone were most of a
    segment build's memory), and the paths end as one UTF-8 blob (:class:`PathTable`)."""
    columns = (
        Image.id,
        Image.width,
        Image.height,
        Image.size_bytes,
        Image.sha256,
        Image.format,
        Image.path,
        Image.indexed_at,
        Image.md5,
    )
    live_rows = select(*columns).where(Image.deleted_at.is_(None)).order_by(Image.id)
    if len(live) > MIN_DELTA_LIMIT:
        statements = [live_rows.where(Image.id >= live.min(), Image.id <= live.max())]
    else:
        statements = [live_rows.where(Image.id.in_(c)) for c in chunks(list(live), ID_CHUNK)]
    built = _AttributeBlocks()
    for statement in statements:
        result = session.execute(statement.execution_options(yield_per=ATTRIBUTE_BLOCK))
        for partition in result.partitions():
            built.add([row for row in partition if row[0] in live])
    return built.finish()


ATTRIBUTE_BLOCK = 20_000


class _AttributeBlocks:
    """Blocks of (id, width, height, size, sha256, format, path, indexed_at, md5) rows in id
    order, kept as arrays."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}
        self.paths = bytearray()
        self.path_ends: list[np.ndarray] = []
        self.format_code: dict[str, int] = {}  # first seen: renumbered by name at the end

    def _append(self, name: str, values: np.ndarray) -> None:
        self.parts.setdefault(name, []).append(values)

    def add(self, rows: list[Any]) -> None:
        if not rows:
            return
        self._append("ids", np.array([r[0] for r in rows], dtype=np.uint32))
        self._append("width", np.array([r[1] for r in rows], dtype=np.int64))
        self._append("height", np.array([r[2] for r in rows], dtype=np.int64))
        self._append("size_bytes", np.array([r[3] for r in rows], dtype=np.int64))
        self._append("sha", np.array([str(r[4]).encode("ascii") for r in rows], dtype="S64"))
        self._append("md5", np.array([str(r[8] or "").encode("ascii") for r in rows], dtype="S32"))
        codes = [self.format_code.setdefault(str(r[5]), len(self.format_code)) for r in rows]
        self._append("format", np.array(codes, dtype=np.uint16))
        self._append("indexed_us", np.array([micros(r[7]) for r in rows], dtype=np.int64))
        encoded = [str(r[6]).encode("utf-8", "surrogateescape") for r in rows]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        self.path_ends.append(len(self.paths) + np.cumsum(lengths))
        self.paths += b"".join(encoded)

    def _joined(self, name: str, dtype: Any) -> np.ndarray:
        parts = self.parts.get(name)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def finish(self) -> Attributes:
        ids = self._joined("ids", np.uint32)
        width, height = self._joined("width", np.int64), self._joined("height", np.int64)
        digests, md5s = self._joined("sha", "S64"), self._joined("md5", "S32")
        by_digest = np.argsort(digests, kind="stable")
        by_md5 = np.argsort(md5s, kind="stable")
        format_names = sorted(self.format_code)
        renumber = np.zeros(max(len(format_names), 1), dtype=np.uint16)
        for name, first_seen in self.format_code.items():
            renumber[first_seen] = format_names.index(name)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = width.astype(np.float64) / np.where(height == 0, np.nan, height)
        offsets = np.concatenate([np.zeros(1, dtype=np.int64), *self.path_ends])
        return Attributes(
            ids=ids,
            columns={
                "id": ids.astype(np.int64),
                "width": width,
                "height": height,
                "size_bytes": self._joined("size_bytes", np.int64),
                "mpixels": width.astype(np.float64) * height / 1_000_000.0,
                "ratio": ratio,
                "indexed_us": self._joined("indexed_us", np.int64),
            },
            sha_keys=digests[by_digest],
            sha_ids=ids[by_digest],
            md5_keys=md5s[by_md5],
            md5_ids=ids[by_md5],
            format_codes=renumber[self._joined("format", np.uint16)],
            format_names=format_names,
            paths=PathTable(np.frombuffer(bytes(self.paths), dtype=np.uint8), offsets),
        )


def latest_change(session: Session) -> tuple[int, int]:
    """(lowest, highest) sequence number in the change log; (0, 0) when it is empty."""
    # Two scalar subqueries: SQLite answers a lone min() or max() of the key from the b-tree's
    # end, but min() and max() in one select scan the whole log (0.12 s at 1M changes).
    low = select(func.min(ImageChange.seq)).scalar_subquery()
    high = select(func.max(ImageChange.seq)).scalar_subquery()
    first, last = session.execute(select(low, high)).one()
    return int(first or 0), int(last or 0)


def tag_groups(session: Session) -> dict[int, int]:
    return {int(i): int(g) for i, g in session.execute(select(Tag.id, Tag.group)).all()}


class PostingEngine:
    """The segments of one generation, current up to change ``seq``. The first ``flushed``
    are read from files (a segment set's bulk segment and delta segments); the rest were
    read from the database since, the delta held in memory."""

    def __init__(
        self, generation_id: int, seq: int, segments: list[Segment], flushed: int = 1
    ) -> None:
        self.generation_id = generation_id
        self.seq = seq
        self.segments = segments
        self.flushed = min(flushed, len(segments))
        self.live = BitMap.union(*(s.live for s in segments)) if segments else BitMap()

    @classmethod
    def load(cls, session: Session, generation_id: int) -> PostingEngine:
        _low, seq = latest_change(session)
        segment = Segment.load(session, generation_id, tag_groups(session))
        images = plural(len(segment.live), "image")
        log.info("loaded %s of generation %d into memory", images, generation_id)
        return cls(generation_id, seq, [segment])

    def is_current(self, session: Session) -> bool:
        return latest_change(session)[1] == self.seq

    def refresh(
        self,
        session: Session,
        reload: Callable[[], PostingEngine] | None = None,
        overflow: Callable[[int, int, bool], None] | None = None,
        flush_at: int | None = None,
    ) -> PostingEngine:
        """An engine current with the database: this one when nothing changed, else one with
        the changed images in a new segment, or a full reload when that is cheaper.
        ``reload`` replaces the full reload from the database (the segment engine reopens
        or rewrites its files instead). ``overflow``, when given, is told the delta's size,
        the change it reaches and True when it outgrows its limit, instead of reloading (the
        segment engine merges in the background meanwhile), and the delta keeps growing;
        with ``flush_at``, it is told the same with False when the part of the delta held
        in memory passes that many images (the segment engine writes it to disk)."""
        low, high = latest_change(session)
        if high == self.seq:
            return self
        if reload is None:
            reload = lambda: PostingEngine.load(session, self.generation_id)  # noqa: E731
        if low > self.seq + 1:  # the log was pruned past what this engine has seen
            return reload()
        changed = BitMap(
            session.scalars(
                select(ImageChange.image_id).where(
                    ImageChange.seq > self.seq, ImageChange.seq <= high
                )
            ).all()
        )
        delta = sum(len(s.live) for s in self.segments[1:]) + len(changed)
        in_memory = sum(len(s.live) for s in self.segments[self.flushed :]) + len(changed)
        if delta > delta_limit(len(self.live)):
            if overflow is None:
                return reload()
            overflow(delta, high, True)
        elif overflow is not None and flush_at is not None and in_memory > flush_at:
            overflow(in_memory, high, False)
        if len(self.segments) < MAX_SEGMENTS:
            folded, kept = changed, [s.without(changed) for s in self.segments]
        else:
            start = _fold_start(self.segments, self.flushed)
            folded = BitMap.union(changed, *(s.live for s in self.segments[start:]))
            kept = [s.without(folded) for s in self.segments[:start]]
        fresh = Segment.load(session, self.generation_id, tag_groups(session), list(folded))
        return PostingEngine(self.generation_id, high, [*kept, fresh], self.flushed)

    def evaluate(self, plan: PlanNode) -> BitMap:
        if len(self.segments) == 1:
            return self.segments[0].evaluate(plan)
        return BitMap.union(*(s.evaluate(plan) for s in self.segments))

    def search(self, plan: PlanNode) -> list[int]:
        """The matching image ids, ascending."""
        return list(self.evaluate(plan))

    def per_segment(self, image_ids: BitMap) -> Iterable[tuple[Segment, np.ndarray]]:
        """The given live images, split by the segment that holds them (ids ascending)."""
        for segment in self.segments:
            mine = image_ids & segment.live
            if mine:
                yield segment, np.frombuffer(mine.to_array(), dtype=np.uint32)

    def describe(self, image_ids: Sequence[int]) -> dict[int, tuple[str, int, int]]:
        """(path, width, height) of live images, from memory."""
        found: dict[int, tuple[str, int, int]] = {}
        wanted = BitMap(image_ids)
        for segment, mine in self.per_segment(wanted):
            attributes = segment.attributes
            positions, _ok = attributes.positions(mine)
            for image_id, pos in zip(mine.tolist(), positions.tolist(), strict=True):
                found[image_id] = (
                    attributes.paths[pos],
                    int(attributes.columns["width"][pos]),
                    int(attributes.columns["height"][pos]),
                )
        return found

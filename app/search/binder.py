"""Bind a parsed query to one index (the planner stage): names become a plan of tag ids with
score ranges and image-property filters.

Binding resolves what the parser cannot know: aliases (``doughnut`` finds ``donut``), each
tag's group and so its default threshold, and wildcards, which expand to the most-used
matching tags (at most ``WILDCARD_LIMIT``, as Danbooru does). A tag the index has never seen
matches nothing. The plan is engine-neutral: the SQL engine and the in-memory posting engine
execute the same plan and must agree.

Thresholds: a term without one uses its group's default (general 0.30, character 0.75,
copyright 0.75, rating 0.5), which the request may override. Scores below the storage floor
are not stored, so a threshold under the floor behaves as the floor.

Metatags become image-property filters. Values that Danbooru rounds are compared as it does:
``ratio`` and ``mpixels`` on the value rounded to 2 decimals (half up), which binding turns
into exact bounds on the unrounded value, so both engines compare the same doubles. ``date``
is a UTC calendar day of the time the image was indexed, and ``age`` is measured back from
the moment of binding. ``rating`` is the most likely of the model's four rating tags (ties go
to the milder rating); tag counts (``tagcount``, ``gentags``, ...) count an image's tags at or
above the thresholds in force for the request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import cast

from app.query import All, And, ErrorCode, Meta, Not, Or, QueryError, Tag, Wildcard
from app.query.ast import Node
from app.query.ranges import Range, RangeSet, ScoreRange
from app.search.catalog import Catalog, TagInfo
from app.search.plan import (
    ATTRIBUTE_COLUMNS,
    COUNTED_GROUPS,
    RATING_LETTERS,
    RATING_TAGS,
    ROUNDED_ATTRIBUTES,
    PAll,
    PAnd,
    PAttr,
    PFormat,
    PlanNode,
    PNot,
    PNothing,
    POr,
    PPath,
    PRating,
    PSha,
    PTag,
    PTagCount,
)
from app.store.formats import canonical_format
from app.tagger.defaults import CARD
from app.tagger.vocab import GROUPS, RATING

# Rounded values lie on a grid of hundredths; _EPS absorbs binary noise such as 0.29 * 100.
_GRID = 100
_EPS = 1e-6


@dataclass(frozen=True)
class Binder:
    """Binds one query: the catalog, the thresholds in force and the moment ``age:`` counts
    back from."""

    catalog: Catalog
    thresholds: Mapping[str, float] = field(default_factory=CARD.thresholds)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def bind(self, node: Node) -> PlanNode:
        if isinstance(node, All):
            return PAll()
        if isinstance(node, Tag):
            info = self.catalog.lookup(node.name)
            return self.tag(info, node.threshold) if info else PNothing()
        if isinstance(node, Wildcard):
            matches = self.catalog.matching(node.pattern)
            if not matches:
                return PNothing()
            return _or([self.tag(info, node.threshold) for info in matches])
        if isinstance(node, Not):
            return PNot(self.bind(node.child))
        if isinstance(node, And):
            return PAnd(tuple(self.bind(c) for c in node.children))
        if isinstance(node, Or):
            return _or([self.bind(c) for c in node.children])
        assert isinstance(node, Meta)
        return self._meta(node)

    def tag(self, info: TagInfo, threshold: ScoreRange | None) -> PTag:
        if threshold is None:
            return PTag(info.id, self.thresholds[info.group])
        lo = threshold.lo if threshold.lo is not None else 0.0
        return PTag(
            info.id,
            float(lo),
            threshold.lo_inclusive,
            None if threshold.hi is None else float(threshold.hi),
            threshold.hi_inclusive,
        )

    def _meta(self, node: Meta) -> PlanNode:
        name, value = node.name, node.value
        if name in ATTRIBUTE_COLUMNS and isinstance(value, RangeSet):
            return PAttr(ATTRIBUTE_COLUMNS[name], cast(RangeSet[int], value))
        if name in ROUNDED_ATTRIBUTES and isinstance(value, RangeSet):
            return PAttr(name, _unrounded(cast(RangeSet[float], value)))
        if name == "date" and isinstance(value, RangeSet):
            return PAttr("indexed_us", _days(cast(RangeSet[date], value)))
        if name == "age" and isinstance(value, RangeSet):
            return PAttr("indexed_us", _ages(cast(RangeSet[timedelta], value), self.now))
        if name in COUNTED_GROUPS and isinstance(value, RangeSet):
            groups = tuple(
                (GROUPS.index(group), self.thresholds[group]) for group in COUNTED_GROUPS[name]
            )
            return PTagCount(groups, cast(RangeSet[int], value))
        if name == "rating" and isinstance(value, tuple):
            return self._rating(node, value)
        if name == "sha256" and isinstance(value, str):
            return PSha(value)
        if name == "filetype" and isinstance(value, tuple):
            return PFormat(frozenset(canonical_format(str(v)) for v in value))
        if name == "path" and isinstance(value, str):
            return PPath(value)
        if name == "unaliased" and isinstance(value, str):
            info = self.catalog.tags.get(value)  # the name as typed: no alias applied
            return self.tag(info, None) if info else PNothing()
        reason = (
            "Sagashi does not store MD5 digests; search by sha256: instead"
            if (name == "md5")
            else f"the metatag '{name}:' cannot be used as a filter"
        )
        raise QueryError(ErrorCode.UNSUPPORTED, reason, node.position)

    def _rating(self, node: Meta, letters: tuple[object, ...]) -> PlanNode:
        infos = [self.catalog.tags.get(name) for name in RATING_TAGS]
        tag_ids = tuple(
            info.id if info is not None and info.group == RATING else None for info in infos
        )
        if all(tag_id is None for tag_id in tag_ids):
            message = (
                "rating: needs a model that predicts ratings (such as WD v3); "
                "the model of this index predicts none"
            )
            raise QueryError(ErrorCode.UNSUPPORTED, message, node.position)
        wanted = frozenset(RATING_LETTERS.index(str(letter)) for letter in letters)
        return PRating(tag_ids, wanted)


def bind(node: Node, catalog: Catalog, thresholds: Mapping[str, float] | None = None) -> PlanNode:
    return Binder(catalog, thresholds or CARD.thresholds()).bind(node)


def _unrounded(ranges: RangeSet[float]) -> RangeSet[float]:
    """Bounds on a value rounded to 2 decimals (half up), as bounds on the value itself.

    The rounded value lies on a grid of hundredths, so each bound first moves onto the grid
    (``>= 0.015`` is ``>= 0.02``; ``< 0.03`` is ``<= 0.02``), then ``round(x) >= k/100`` is
    ``x >= (k - 0.5)/100`` and ``round(x) <= k/100`` is ``x < (k + 0.5)/100``."""
    parts: list[Range[float]] = []
    for part in ranges.ranges:
        lo = hi = None
        if part.lo is not None:
            scaled = part.lo * _GRID
            step = math.ceil(scaled - _EPS) if part.lo_inclusive else math.floor(scaled + _EPS) + 1
            lo = (step - 0.5) / _GRID
        if part.hi is not None:
            scaled = part.hi * _GRID
            step = math.floor(scaled + _EPS) if part.hi_inclusive else math.ceil(scaled - _EPS) - 1
            hi = (step + 0.5) / _GRID
        parts.append(Range(lo, hi, lo_inclusive=True, hi_inclusive=False))
    return RangeSet(tuple(parts))


def _micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def _midnight(day: date) -> int:
    return _micros(datetime.combine(day, time(), tzinfo=UTC))


def _days(ranges: RangeSet[date]) -> RangeSet[int]:
    """Calendar days (UTC) as half-open intervals of microseconds."""
    one_day = timedelta(days=1)
    parts: list[Range[int]] = []
    for part in ranges.ranges:
        lo = hi = None
        if part.lo is not None:
            lo = _midnight(part.lo if part.lo_inclusive else part.lo + one_day)
        if part.hi is not None:
            hi = _midnight(part.hi + one_day if part.hi_inclusive else part.hi)
        parts.append(Range(lo, hi, lo_inclusive=True, hi_inclusive=False))
    return RangeSet(tuple(parts))


def _ages(ranges: RangeSet[timedelta], now: datetime) -> RangeSet[int]:
    """An age range as a range of indexed times: older means earlier, so bounds swap. A bare
    age (``age:2d``) means at most that old: an exact age to the microsecond matches nothing."""
    parts: list[Range[int]] = []
    for part in ranges.ranges:
        if part.lo is not None and part.lo == part.hi:
            part = Range(None, part.hi)
        lo = None if part.hi is None else _micros(now - part.hi)
        hi = None if part.lo is None else _micros(now - part.lo)
        parts.append(Range(lo, hi, lo_inclusive=part.hi_inclusive, hi_inclusive=part.lo_inclusive))
    return RangeSet(tuple(parts))


def _or(children: list[PlanNode]) -> PlanNode:
    return children[0] if len(children) == 1 else POr(tuple(children))

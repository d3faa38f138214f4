"""The metatag registry of the search layer: one entry per filtering metatag, saying what plan
node its parsed value binds to. The parser's own registry (``app.query.metatags``: which
names exist and how each value is read) and this one hold the same names, less the
singletons (``order:``, ``limit:``, ``similar:``), which the service handles; the engines
evaluate plan node types, not metatag names. So a metatag over an existing node type (an
image column, a tag count, a glob) is one reader there and one binding here, and a test
keeps the two registries in step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, cast

from app.query import ErrorCode, Meta, QueryError
from app.query.ranges import Range, RangeSet
from app.search.epoch import micros
from app.search.plan import (
    COUNTED_GROUPS,
    RATING_LETTERS,
    RATING_TAGS,
    PAttr,
    PFormat,
    PlanNode,
    PMd5,
    PNothing,
    PPath,
    PRating,
    PSha,
    PTagCount,
)
from app.store.formats import canonical_format
from app.tagger.vocab import GROUPS, RATING

if TYPE_CHECKING:
    from app.search.binder import Binder

MetaBinding = Callable[["Binder", Meta], PlanNode]

# Rounded values lie on a grid of hundredths; _EPS absorbs binary noise such as 0.29 * 100.
_GRID = 100
_EPS = 1e-6


def _column(column: str) -> MetaBinding:
    """An image column (or a derived one) within the value's ranges."""

    def bound(_binder: Binder, node: Meta) -> PlanNode:
        return PAttr(column, cast(RangeSet[int], _ranges(node)))

    return bound


def _rounded(column: str) -> MetaBinding:
    """A value Danbooru compares rounded to 2 decimals (``ratio``, ``mpixels``)."""

    def bound(_binder: Binder, node: Meta) -> PlanNode:
        return PAttr(column, _unrounded(cast(RangeSet[float], _ranges(node))))

    return bound


def _counted(metatag: str) -> MetaBinding:
    """How many of an image's tags of some groups reach the thresholds in force."""

    def bound(binder: Binder, node: Meta) -> PlanNode:
        groups = tuple(
            (GROUPS.index(group), binder.thresholds[group]) for group in COUNTED_GROUPS[metatag]
        )
        return PTagCount(groups, cast(RangeSet[int], _ranges(node)))

    return bound


def _date(_binder: Binder, node: Meta) -> PlanNode:
    return PAttr("indexed_us", _days(cast(RangeSet[date], _ranges(node))))


def _age(binder: Binder, node: Meta) -> PlanNode:
    return PAttr("indexed_us", _ages(cast(RangeSet[timedelta], _ranges(node)), binder.now))


def _rating(binder: Binder, node: Meta) -> PlanNode:
    infos = [binder.catalog.tags.get(name) for name in RATING_TAGS]
    tag_ids = tuple(
        info.id if info is not None and info.group == RATING else None for info in infos
    )
    if all(tag_id is None for tag_id in tag_ids):
        message = (
            "rating: needs a model that predicts ratings (such as WD v3); "
            "the model of this index predicts none"
        )
        raise QueryError(ErrorCode.UNSUPPORTED, message, node.position)
    letters = cast(tuple[str, ...], node.value)
    return PRating(tag_ids, frozenset(RATING_LETTERS.index(str(letter)) for letter in letters))


def _sha(_binder: Binder, node: Meta) -> PlanNode:
    return PSha(str(node.value))


def _md5(_binder: Binder, node: Meta) -> PlanNode:
    return PMd5(str(node.value))


def _filetype(_binder: Binder, node: Meta) -> PlanNode:
    values = cast(tuple[str, ...], node.value)
    return PFormat(frozenset(canonical_format(str(v)) for v in values))


def _path(_binder: Binder, node: Meta) -> PlanNode:
    return PPath(str(node.value))


def _unaliased(binder: Binder, node: Meta) -> PlanNode:
    info = binder.catalog.tags.get(str(node.value))  # the name as typed: no alias applied
    return binder.term(info, None) if info else PNothing()


def _unimplied(binder: Binder, node: Meta) -> PlanNode:
    info = binder.catalog.lookup(str(node.value))
    return binder.tag(info, None) if info else PNothing()  # its own score: no implication


METATAGS: dict[str, MetaBinding] = {
    "id": _column("id"),
    "width": _column("width"),
    "height": _column("height"),
    "filesize": _column("size_bytes"),
    "mpixels": _rounded("mpixels"),
    "ratio": _rounded("ratio"),
    "date": _date,
    "age": _age,
    "tagcount": _counted("tagcount"),
    "gentags": _counted("gentags"),
    "chartags": _counted("chartags"),
    "copytags": _counted("copytags"),
    "rating": _rating,
    "sha256": _sha,
    "filetype": _filetype,
    "path": _path,
    "unaliased": _unaliased,
    "unimplied": _unimplied,
    "md5": _md5,
}


def bind_meta(binder: Binder, node: Meta) -> PlanNode:
    binding = METATAGS.get(node.name)
    if binding is None:  # a singleton: the service takes order:, limit: and similar: out
        message = f"the metatag '{node.name}:' cannot be used as a filter"
        raise QueryError(ErrorCode.UNSUPPORTED, message, node.position)
    return binding(binder, node)


def _ranges(node: Meta) -> Any:
    """The value of a metatag the parser reads as ranges (the caller casts its type)."""
    if not isinstance(node.value, RangeSet):
        raise TypeError(f"{node.name}: expected ranges, the parser gave {node.value!r}")
    return node.value


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


def _midnight(day: date) -> int:
    return micros(datetime.combine(day, time(), tzinfo=UTC))


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
        lo = None if part.hi is None else micros(now - part.hi)
        hi = None if part.lo is None else micros(now - part.lo)
        parts.append(Range(lo, hi, lo_inclusive=part.hi_inclusive, hi_inclusive=part.lo_inclusive))
    return RangeSet(tuple(parts))

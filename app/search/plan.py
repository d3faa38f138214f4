"""Bind a parsed query to one index: tag names become tag ids with score ranges.

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

import bisect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import cast

from app.query import All, And, ErrorCode, Meta, Not, Or, QueryError, Tag, Wildcard
from app.query.ast import Node
from app.query.ranges import Range, RangeSet, ScoreRange
from app.store.formats import canonical_format
from app.tagger.defaults import CARD
from app.tagger.vocab import CHARACTER, COPYRIGHT, GENERAL, GROUPS, RATING

WILDCARD_LIMIT = 100


@dataclass(frozen=True)
class PAll:
    """Every live image of the active generation."""


@dataclass(frozen=True)
class PNothing:
    """No image (an unknown tag, a wildcard that matches nothing)."""


@dataclass(frozen=True)
class PTag:
    """Images whose score for ``tag_id`` lies in the range."""

    tag_id: int
    lo: float
    lo_inclusive: bool = True
    hi: float | None = None
    hi_inclusive: bool = True

    def contains(self, score: float) -> bool:
        if score < self.lo or (score == self.lo and not self.lo_inclusive):
            return False
        return self.hi is None or score < self.hi or (score == self.hi and self.hi_inclusive)


@dataclass(frozen=True)
class PNot:
    child: PlanNode


@dataclass(frozen=True)
class PAnd:
    children: tuple[PlanNode, ...]


@dataclass(frozen=True)
class POr:
    children: tuple[PlanNode, ...]


@dataclass(frozen=True)
class PAttr:
    """An image property in a set of ranges. ``column`` is one of ``ATTRIBUTES``: a column
    of ``images``, or ``mpixels`` / ``ratio`` derived from width and height, or
    ``indexed_us`` (the indexed time in microseconds since the Unix epoch, UTC)."""

    column: str
    ranges: RangeSet[int] | RangeSet[float]


@dataclass(frozen=True)
class PRating:
    """Images whose most likely rating is one of ``wanted`` (indices into g, s, q, e).

    ``tag_ids`` are the four rating tags in that order (None where the index lacks one).
    """

    tag_ids: tuple[int | None, ...]
    wanted: frozenset[int]


@dataclass(frozen=True)
class PTagCount:
    """Images whose number of tags at or above their group's threshold is in ``ranges``;
    ``groups`` holds the (group code, threshold) pairs that are counted."""

    groups: tuple[tuple[int, float], ...]
    ranges: RangeSet[int]


@dataclass(frozen=True)
class PSha:
    sha256: str


@dataclass(frozen=True)
class PFormat:
    """``filetype:``: canonical format names (``jpg`` is ``jpeg``)."""

    formats: frozenset[str]


@dataclass(frozen=True)
class PPath:
    """``path:``: a case-sensitive glob over the whole path; ``*`` is any run of characters
    (``/`` included), ``?`` one character, everything else literal."""

    pattern: str

    def regex(self) -> re.Pattern[str]:
        parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in self.pattern)
        return re.compile("".join(parts), re.DOTALL)


PlanNode = (
    PAll | PNothing | PTag | PAttr | PRating | PTagCount | PSha | PFormat | PPath
    | PNot | PAnd | POr
)  # fmt: skip

# Metatags bound to plain image columns, and derived values compared after rounding.
ATTRIBUTE_COLUMNS = {"id": "id", "width": "width", "height": "height", "filesize": "size_bytes"}
ROUNDED_ATTRIBUTES = ("mpixels", "ratio")
ATTRIBUTES = (*ATTRIBUTE_COLUMNS.values(), *ROUNDED_ATTRIBUTES, "indexed_us")
RATING_TAGS = ("general", "sensitive", "questionable", "explicit")
RATING_LETTERS = "gsqe"
COUNTED_GROUPS = {
    "tagcount": (GENERAL, CHARACTER, COPYRIGHT),
    "gentags": (GENERAL,),
    "chartags": (CHARACTER,),
    "copytags": (COPYRIGHT,),
}
# Rounded values lie on a grid of hundredths; _EPS absorbs binary noise such as 0.29 * 100.
_GRID = 100
_EPS = 1e-6


@dataclass(frozen=True)
class TagInfo:
    id: int
    group: str
    count: int


@dataclass
class Catalog:
    """The index's tags, by name, with the alias table for query-time aliasing."""

    tags: Mapping[str, TagInfo]
    aliases: Mapping[str, str] = field(default_factory=dict)
    _by_count: list[tuple[str, TagInfo]] | None = None
    _names: list[str] = field(default_factory=list)
    _matches: dict[str, list[TagInfo]] = field(default_factory=dict)
    _alias_names: list[str] | None = None
    _by_id: dict[int, tuple[str, str]] | None = None

    @classmethod
    def from_rows(
        cls, rows: Sequence[tuple[int, str, int, int]], aliases: Mapping[str, str]
    ) -> Catalog:
        """Rows of (id, name, group code, image count), as the tags table holds them."""
        return cls({name: TagInfo(i, GROUPS[g], n) for i, name, g, n in rows}, aliases)

    def lookup(self, name: str) -> TagInfo | None:
        return self.tags.get(self.aliases.get(name, name))

    def _sorted(self) -> tuple[list[tuple[str, TagInfo]], list[str]]:
        """The tags most used first, and their names in order: sorted once per catalog."""
        if self._by_count is None:
            self._by_count = sorted(self.tags.items(), key=lambda kv: (-kv[1].count, kv[0]))
            self._names = sorted(self.tags)
        return self._by_count, self._names

    def names_by_id(self) -> dict[int, tuple[str, str]]:
        """Tag id -> (name, group), made once per catalog."""
        if self._by_id is None:
            self._by_id = {info.id: (name, info.group) for name, info in self.tags.items()}
        return self._by_id

    def complete(self, prefix: str, limit: int) -> list[tuple[str, TagInfo, str | None]]:
        """Autocomplete: tags whose name, or an alias of which, starts with ``prefix``, most
        used first, as (tag name, tag, the alias typed or None)."""
        if self._alias_names is None:  # aliases of tags the index has, sorted once
            self._alias_names = sorted(a for a, tag in self.aliases.items() if tag in self.tags)
        found: dict[str, tuple[str, TagInfo, str | None]] = {}
        for alias in _with_prefix(self._alias_names, prefix):
            name = self.aliases[alias]
            found.setdefault(name, (name, self.tags[name], alias))
        for name in _with_prefix(self._sorted()[1], prefix):
            found[name] = (name, self.tags[name], None)  # a direct match beats an alias
        ranked = sorted(found.values(), key=lambda item: (-item[1].count, item[0]))
        return ranked[:limit]

    def matching(self, pattern: str) -> list[TagInfo]:
        """The most-used tags matching a ``*`` pattern, most used first."""
        cached = self._matches.get(pattern)
        if cached is not None:
            return cached
        by_count, names = self._sorted()
        prefix = pattern.split("*", 1)[0]
        candidates = by_count
        if prefix:  # most patterns start with letters: narrow by prefix with a binary search
            named = set(_with_prefix(names, prefix))
            candidates = [kv for kv in by_count if kv[0] in named] if named else []
        regex = re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern) + r"\Z")
        found = [info for name, info in candidates if regex.match(name)][:WILDCARD_LIMIT]
        if len(self._matches) >= 1024:
            self._matches.clear()
        self._matches[pattern] = found
        return found


def _with_prefix(names: list[str], prefix: str) -> list[str]:
    start = bisect.bisect_left(names, prefix)
    end = bisect.bisect_left(names, prefix + "\U0010ffff")
    return names[start:end]


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

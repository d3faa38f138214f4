"""The plan: what a bound query asks of a tag engine, in engine-neutral frozen nodes.

:mod:`app.search.binder` makes a plan from a parsed query; every tag engine (the in-memory
posting engine, SQL) evaluates the same plan and must give the same answer. Tags are tag ids
with score ranges; metatags are image-property filters whose values binding has already put
in the engine's terms (exact bounds on unrounded values, microseconds since the epoch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from app.query.ranges import RangeSet
from app.tagger.vocab import CHARACTER, COPYRIGHT, GENERAL


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

    # An implied tag (holding: 219 implying tags) is an OR of hundreds of ranges, bound once
    # per catalog and used as an engine cache key: its hash is computed once, not per lookup.
    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(self.children)


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
class PMd5:
    """``md5:``: images whose file has this md5 (images with no md5 recorded never match)."""

    md5: str


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
    PAll | PNothing | PTag | PAttr | PRating | PTagCount | PSha | PMd5 | PFormat | PPath
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

"""Bind a parsed query to one index: tag names become tag ids with score ranges.

Binding resolves what the parser cannot know: aliases (``doughnut`` finds ``donut``), each
tag's group and so its default threshold, and wildcards, which expand to the most-used
matching tags (at most ``WILDCARD_LIMIT``, as Danbooru does). A tag the index has never seen
matches nothing. The plan is engine-neutral: the SQL engine and the in-memory posting engine
execute the same plan and must agree.

Thresholds: a term without one uses its group's default (general 0.30, character 0.75,
copyright 0.75, rating 0.5), which the request may override. Scores below the storage floor
are not stored, so a threshold under the floor behaves as the floor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from app.query import All, And, ErrorCode, Meta, Not, Or, QueryError, Tag, Wildcard
from app.query.ast import Node
from app.query.ranges import RangeSet, ScoreRange
from app.store.formats import canonical_format
from app.tagger.vocab import DEFAULT_THRESHOLDS, GROUPS

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
    """An image property in a set of ranges (``id``, ``width``, ``height``, ``filesize``)."""

    column: str
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


PlanNode = PAll | PNothing | PTag | PAttr | PSha | PFormat | PPath | PNot | PAnd | POr

# Metatags bound to image columns; the rest are refused until their executors exist.
ATTRIBUTE_COLUMNS = {"id": "id", "width": "width", "height": "height", "filesize": "size_bytes"}


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

    @classmethod
    def from_rows(
        cls, rows: Sequence[tuple[int, str, int, int]], aliases: Mapping[str, str]
    ) -> Catalog:
        """Rows of (id, name, group code, image count), as the tags table holds them."""
        return cls({name: TagInfo(i, GROUPS[g], n) for i, name, g, n in rows}, aliases)

    def lookup(self, name: str) -> TagInfo | None:
        return self.tags.get(self.aliases.get(name, name))

    def matching(self, pattern: str) -> list[TagInfo]:
        """The most-used tags matching a ``*`` pattern, most used first."""
        if self._by_count is None:
            self._by_count = sorted(self.tags.items(), key=lambda kv: (-kv[1].count, kv[0]))
        regex = re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern) + r"\Z")
        found = [info for name, info in self._by_count if regex.match(name)]
        return found[:WILDCARD_LIMIT]


def bind(
    node: Node, catalog: Catalog, thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS
) -> PlanNode:
    if isinstance(node, All):
        return PAll()
    if isinstance(node, Tag):
        info = catalog.lookup(node.name)
        return _tag(info, node.threshold, thresholds) if info else PNothing()
    if isinstance(node, Wildcard):
        matches = catalog.matching(node.pattern)
        if not matches:
            return PNothing()
        return _or([_tag(info, node.threshold, thresholds) for info in matches])
    if isinstance(node, Not):
        return PNot(bind(node.child, catalog, thresholds))
    if isinstance(node, And):
        return PAnd(tuple(bind(c, catalog, thresholds) for c in node.children))
    if isinstance(node, Or):
        return _or([bind(c, catalog, thresholds) for c in node.children])
    assert isinstance(node, Meta)
    return _meta(node, catalog, thresholds)


def _meta(node: Meta, catalog: Catalog, thresholds: Mapping[str, float]) -> PlanNode:
    if node.name in ATTRIBUTE_COLUMNS and isinstance(node.value, RangeSet):
        return PAttr(ATTRIBUTE_COLUMNS[node.name], cast(RangeSet[int], node.value))
    if node.name == "sha256" and isinstance(node.value, str):
        return PSha(node.value)
    if node.name == "filetype" and isinstance(node.value, tuple):
        return PFormat(frozenset(canonical_format(str(v)) for v in node.value))
    if node.name == "path" and isinstance(node.value, str):
        return PPath(node.value)
    if node.name == "unaliased" and isinstance(node.value, str):
        info = catalog.tags.get(node.value)  # the name as typed: no alias applied
        return _tag(info, None, thresholds) if info else PNothing()
    raise QueryError(
        ErrorCode.UNSUPPORTED,
        f"the metatag '{node.name}:' is not supported by the search engine yet",
        node.position,
    )


def _or(children: list[PlanNode]) -> PlanNode:
    return children[0] if len(children) == 1 else POr(tuple(children))


def _tag(info: TagInfo, threshold: ScoreRange | None, thresholds: Mapping[str, float]) -> PTag:
    if threshold is None:
        return PTag(info.id, thresholds[info.group])
    lo = threshold.lo if threshold.lo is not None else 0.0
    return PTag(
        info.id,
        float(lo),
        threshold.lo_inclusive,
        None if threshold.hi is None else float(threshold.hi),
        threshold.hi_inclusive,
    )

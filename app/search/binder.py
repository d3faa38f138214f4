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

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.query import All, And, Meta, Not, Or, Tag, Wildcard
from app.query.ast import Node
from app.query.ranges import ScoreRange
from app.search.catalog import Catalog, TagInfo
from app.search.metatags import bind_meta
from app.search.plan import (
    PAll,
    PAnd,
    PlanNode,
    PNot,
    PNothing,
    POr,
    PTag,
)
from app.tagger.defaults import CARD


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
        return bind_meta(self, node)


def bind(node: Node, catalog: Catalog, thresholds: Mapping[str, float] | None = None) -> PlanNode:
    return Binder(catalog, thresholds or CARD.thresholds()).bind(node)


def _or(children: list[PlanNode]) -> PlanNode:
    return children[0] if len(children) == 1 else POr(tuple(children))

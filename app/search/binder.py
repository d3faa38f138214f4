"""Bind a parsed query to one index (the planner stage): names become a plan of tag ids with
score ranges and image-property filters.

Binding resolves what the parser cannot know: aliases (``doughnut`` finds ``donut``), each
tag's group and so its default threshold, wildcards, which expand to the most-used
matching tags (at most ``WILDCARD_LIMIT``, as Danbooru does), and implications. A tag the
index has never seen matches nothing, unless tags it has imply it (each then at its own
group's default, or the term's range). The plan is engine-neutral: the SQL engine and the
in-memory posting engine execute the same plan and must agree.

Implications: a tag term matches an image when the tag *or any tag implying it* (the
catalog's implication table, transitively) scores in the term's range; precisely, when the
highest score among them lies in the range. So ``skirt`` finds ``plaid_skirt`` images,
``skirt,<0.3`` finds images where neither scores 0.3 or more (and one is stored), and
``-skirt`` leaves out both. The implying tags are held to the term's threshold (its own
group's default when it gives none). Wildcards expand to tags, each implied so. The term
becomes an OR of plain tag ranges (with a NOT of the scores above an upper bound), so every
engine runs it as it runs any plan. ``unimplied:tag`` and a catalog without implications
(SAGASHI_IMPLICATIONS=false) match the tag's own score only; ``order:score:`` and tag
counts use the tags' own scores.

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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import cast

from app.query import All, And, Meta, Not, Or, TagTerm, Wildcard
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

IMPLIED_PLANS = 4096  # bound implied terms a catalog keeps


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
        if isinstance(node, TagTerm):
            info = self.catalog.lookup(node.name)
            if info is not None:
                return self.term(info, node.threshold)
            return self._implied_only(self.catalog.implying_name(node.name), node.threshold)
        if isinstance(node, Wildcard):
            matches = self.catalog.matching(node.pattern)
            if not matches:
                return PNothing()
            return self._terms(matches, node.threshold)
        if isinstance(node, Not):
            return PNot(self.bind(node.child))
        if isinstance(node, And):
            return PAnd(tuple(self.bind(c) for c in node.children))
        if isinstance(node, Or):
            return _or([self.bind(c) for c in node.children])
        assert isinstance(node, Meta)
        return self._meta(node)

    def term(self, info: TagInfo, threshold: ScoreRange | None) -> PlanNode:
        """A tag term with implications: the tag or a tag implying it in range."""
        own = self.tag(info, threshold)
        plans = self.catalog.implied_plans
        found = plans.get(own)
        if found is None:
            found = _implied(own, self.catalog.implying(info))
            if len(plans) >= IMPLIED_PLANS:
                plans.clear()
            plans[own] = found
        return cast(PlanNode, found)

    def _implied_only(self, infos: list[TagInfo], threshold: ScoreRange | None) -> PlanNode:
        """A tag the index lacks, through the tags implying it: each at the term's range,
        or at its own group's default without one."""
        if not infos:
            return PNothing()
        if threshold is None:
            return _or([self.tag(info, None) for info in infos])
        first = self.tag(infos[0], threshold)
        return _implied(first, tuple(info.id for info in infos[1:]))

    def _terms(self, infos: list[TagInfo], threshold: ScoreRange | None) -> PlanNode:
        """Several tag terms ORed (a wildcard): one flat OR, each tag range once."""
        return _or([self.term(info, threshold) for info in infos])

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
    flat: list[PlanNode] = []
    for child in children:
        flat.extend(child.children if isinstance(child, POr) else (child,))
    unique = list(dict.fromkeys(flat))
    return unique[0] if len(unique) == 1 else POr(tuple(unique))


def _implied(own: PTag, implying: tuple[int, ...]) -> PlanNode:
    """The highest score among ``own``'s tag and the ``implying`` tags in ``own``'s range:
    one of them at or above the lower bound, and none above the upper bound."""
    if not implying:
        return own
    every = [own, *(replace(own, tag_id=tag_id) for tag_id in implying)]
    if own.hi is None:
        return POr(tuple(every))
    above = replace(own, lo=own.hi, lo_inclusive=not own.hi_inclusive, hi=None)
    over = POr(tuple(replace(above, tag_id=t.tag_id) for t in every))
    return PAnd((POr(tuple(every)), PNot(over)))

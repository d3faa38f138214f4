"""An image's tags as the gallery's image page lists them (``GET /api/images/{id}``): each
stored tag with whether searching it at the thresholds in force finds the image
(``confident``, implications included, so the page and search agree), the tag implying it
when that is why, and what the caption rules would drop (:mod:`app.tagrules.refine`).

Tags the image does not store but that a confident tag implies, and the index knows, are
listed too (score 0), since searching them finds the image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from app.tagger.vocab import RATING
from app.tagrules.implications import Implications
from app.tagrules.refine import Drop, Refinement


@dataclass(frozen=True)
class ListedTag:
    name: str
    score: float
    group: str
    confident: bool
    implied_by: str | None = None  # confident only through this (highest-scored) tag
    dropped: Drop | None = None  # what a caption does with it


def list_tags(
    stored: Sequence[tuple[str, float, str]],
    thresholds: Mapping[str, float],
    known: Callable[[str], str | None],
    implications: Implications | None,
    refine: Refinement | None,
) -> list[ListedTag]:
    """``stored``: (name, score, group), by score; ``known``: the index's tags and groups;
    ``known``: a tag's group in the index (None: not there); ``implications``: None when
    search applies none."""
    scores = {name: score for name, score, _ in stored}
    listed: list[ListedTag] = []
    implied_names: set[str] = set()
    for name, score, group in stored:
        level = thresholds.get(group, 0.0)
        by = None
        if score < level and group != RATING and implications is not None:
            by = _best_implying(name, scores, implications, level)
        listed.append(ListedTag(name, score, group, score >= level or by is not None, by))
        if implications is not None and group != RATING:
            implied_names |= implications.implied(name)
    for name in sorted(implied_names - scores.keys()):
        known_group = known(name)
        if known_group is None or known_group == RATING or implications is None:
            continue
        by = _best_implying(name, scores, implications, thresholds.get(known_group, 0.0))
        if by is not None:
            listed.append(ListedTag(name, 0.0, known_group, True, by))
    if refine is None:
        return listed
    candidates = [
        (t.name, max(t.score, scores[t.implied_by]) if t.implied_by else t.score)
        for t in listed
        if t.confident and t.group != RATING
    ]
    drops = refine.drops(candidates)
    return [
        ListedTag(t.name, t.score, t.group, t.confident, t.implied_by, drops.get(t.name))
        for t in listed
    ]


def _best_implying(
    name: str, scores: Mapping[str, float], implications: Implications, level: float
) -> str | None:
    above = [o for o in implications.implying(name) if scores.get(o, -1.0) >= level]
    return min(above, key=lambda o: (-scores[o], o)) if above else None

"""Which predicted tags to report: the PixAI card's output policy.

Defaults come from :mod:`app.tagger.defaults` (the card's top_k 128, general 0.30, character
0.75, or the SAGASHI_* settings through :meth:`OutputPolicy.of`); the card's tuning tips
become options (per-group thresholds, allow and deny lists). Copyright tags are derived from the
kept characters through the character -> copyright map, each with its character's score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.tagger.defaults import CARD, TagDefaults
from app.tagger.vocab import CHARACTER, COPYRIGHT, GENERAL, GROUP_CODE, RATING, TagVocabulary
from app.tagrules.refine import Refinement

# A copyright ties with the character it came from; the character is listed first.
_TIE_ORDER = {CHARACTER: 0, COPYRIGHT: 1, GENERAL: 2, RATING: 3}

PRESETS: dict[str, dict[str, float]] = {
    "default": {},  # the defaults in force (the settings', else the card's)
    # The card's recall-heavier preset: expect more false positives.
    "coverage": {"threshold_general": 0.10},
}


@dataclass(frozen=True)
class TagScore:
    tag: str
    score: float
    group: str

    def as_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "score": round(self.score, 6), "group": self.group}


@dataclass(frozen=True)
class OutputPolicy:
    """Thresholds are inclusive: a tag is kept when its score is >= its group's threshold.

    Ratings: the most likely one, or with ``rating_threshold`` every rating scoring at
    least that (as Danbooru's autotagger lists them)."""

    top_k: int = CARD.top_k
    threshold_general: float = CARD.general
    threshold_character: float = CARD.character
    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()
    include_copyright: bool = True
    include_rating: bool = True
    rating_threshold: float | None = None
    # The tag rules (contradictions, overlap) applied to general and character tags before
    # top_k: app.tagrules.refine, the one place every output takes them from.
    refine: Refinement | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")
        for name in ("threshold_general", "threshold_character", "rating_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")

    @classmethod
    def of(cls, defaults: TagDefaults, **overrides: Any) -> OutputPolicy:
        """The policy for these defaults (``Settings.tag_defaults()``), with the overrides a
        request or command gave (None: not given)."""
        base = cls(
            top_k=defaults.top_k,
            threshold_general=defaults.general,
            threshold_character=defaults.character,
        )
        return base.with_overrides(**overrides)

    @classmethod
    def preset(cls, name: str, defaults: TagDefaults = CARD, **overrides: Any) -> OutputPolicy:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.of(defaults, **{**PRESETS[name], **given})

    def with_overrides(self, **overrides: Any) -> OutputPolicy:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def _permitted(self, tag: str) -> bool:
        # PixAI v0.9's vocabulary has one empty name (index 8968); it is never reported.
        return bool(tag) and tag not in self.deny and (self.allow is None or tag in self.allow)

    def select(self, probs: np.ndarray, vocab: TagVocabulary) -> list[TagScore]:
        """The reported tags for one image's probability vector, sorted by score."""
        codes = vocab.group_codes
        thresholds = np.full(len(vocab), np.inf, dtype=np.float32)
        thresholds[codes == GROUP_CODE[GENERAL]] = self.threshold_general
        thresholds[codes == GROUP_CODE[CHARACTER]] = self.threshold_character
        candidates = np.flatnonzero(probs >= thresholds)
        ranked = candidates[np.argsort(-probs[candidates], kind="stable")]
        kept: list[TagScore] = []
        for index in ranked.tolist():
            name = vocab.names[index]
            if self._permitted(name):
                kept.append(TagScore(name, float(probs[index]), vocab.group(index)))
                if len(kept) == self.top_k and self.refine is None:
                    break
        kept = self.refined(kept)[: self.top_k]
        extra: list[TagScore] = []
        if self.include_copyright:
            extra.extend(self._copyrights(kept, vocab))
        if self.include_rating and vocab.has_ratings:
            extra.extend(self._ratings(probs, vocab))
        return sorted(kept + extra, key=lambda t: (-t.score, _TIE_ORDER[t.group], t.tag))

    def choose(self, tags: Iterable[TagScore], threshold_copyright: float) -> list[TagScore]:
        """The reported tags among already scored, named tags (the store's postings), by the
        rules of :meth:`select`: general and character tags at their thresholds, the
        ``top_k`` best of them, the most likely rating; copyrights, which the store scores
        as their character, at ``threshold_copyright``. Unordered: the caller orders them.

        Scores are float32 in the store, so thresholds are compared as float32, as in
        :meth:`select`: a threshold of 0.7 keeps a stored 0.7 (0.69999999)."""
        limits = {
            GENERAL: np.float32(self.threshold_general),
            CHARACTER: np.float32(self.threshold_character),
            COPYRIGHT: np.float32(threshold_copyright),
        }
        ranked: list[TagScore] = []
        kept: list[TagScore] = []
        ratings: list[TagScore] = []
        for tag in tags:
            if tag.group == RATING:
                ratings.append(tag)
            elif self._permitted(tag.tag) and np.float32(tag.score) >= limits[tag.group]:
                (kept if tag.group == COPYRIGHT else ranked).append(tag)
        ranked.sort(key=lambda t: (-t.score, t.tag))
        kept.extend(self.refined(ranked)[: self.top_k])
        if self.include_rating and ratings:
            best = min(ratings, key=lambda t: (-t.score, t.tag))
            if self._permitted(best.tag):
                kept.append(best)
        return kept

    def refined(self, tags: list[TagScore]) -> list[TagScore]:
        """``tags`` less those the rules drop (contradicted, or overlapped by a more
        specific tag), in their order."""
        if self.refine is None:
            return tags
        gone = self.refine.drops((t.tag, t.score) for t in tags)
        return [t for t in tags if t.tag not in gone] if gone else tags

    def _copyrights(self, kept: list[TagScore], vocab: TagVocabulary) -> list[TagScore]:
        best: dict[str, float] = {}
        for item in kept:
            if item.group != CHARACTER:
                continue
            for ip in vocab.char_to_copyrights.get(item.tag, ()):
                if self._permitted(ip) and item.score > best.get(ip, -1.0):
                    best[ip] = item.score
        return [TagScore(ip, score, COPYRIGHT) for ip, score in best.items()]

    def _ratings(self, probs: np.ndarray, vocab: TagVocabulary) -> list[TagScore]:
        """WD's rating head: the most likely of the four ratings, or every one at or above
        ``rating_threshold`` when it is set."""
        indices = vocab.indices(RATING)
        if self.rating_threshold is None:
            chosen = indices[[int(np.argmax(probs[indices]))]]
        else:
            # float32, as the group thresholds are compared in select()
            chosen = indices[probs[indices] >= np.float32(self.rating_threshold)]
        names = [(vocab.names[i], float(probs[i])) for i in chosen.tolist()]
        return [TagScore(name, score, RATING) for name, score in names if self._permitted(name)]

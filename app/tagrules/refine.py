"""The tag rules every output applies: which of an image's tags at or above their thresholds
a list or caption drops, and why. ``sagashi tag``, ``sagashi export``, ``POST /api/tag``,
``POST /evaluate`` and the gallery's image page (``GET /api/images/{id}``) all call
:meth:`TagRules.drops` (through :class:`app.tagger.policy.OutputPolicy` where they list
tags), so they drop the same tags.

- **Contradictions** (:mod:`app.tagrules.exclusions`): in each rule, the highest-scored tag
  keeps its alternative; the tags of the other alternatives go. Ties go to the name that
  sorts first. Rules are judged independently, each on the same tags.
- **Overlap** (imgutils' ``drop_overlap_tags``): after the contradictions, a tag goes when
  a more specific tag that implies it stays (``plaid_skirt`` stays, ``skirt`` goes). Tags
  that imply each other (a cycle) are equally specific and both stay.

Names are compared after the alias table (a model's outdated ``doughnut`` is ``donut``);
the tags returned keep the names they came with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.tagrules.exclusions import Exclusion, load_exclusions
from app.tagrules.implications import Implications, load_implications

Reason = Literal["contradiction", "overlap"]


@dataclass(frozen=True)
class Drop:
    """Why a tag is dropped: the rule, and the tag that beat it."""

    rule: Reason
    by: str


@dataclass(frozen=True)
class TagRules:
    implications: Implications = field(default_factory=Implications)
    exclusions: tuple[Exclusion, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # tag name -> indices of the exclusions that name it (made in __post_init__)
    _rules_of: Mapping[str, tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rules_of: dict[str, list[int]] = defaultdict(list)
        for index, rule in enumerate(self.exclusions):
            for name in rule.tags():
                rules_of[name].append(index)
        object.__setattr__(self, "_rules_of", {k: tuple(v) for k, v in rules_of.items()})

    def drops(
        self,
        tags: Iterable[tuple[str, float]],
        *,
        overlap: bool = False,
        contradictions: bool = True,
    ) -> dict[str, Drop]:
        """The (name, score) pairs to drop, by name. ``tags`` are the candidates: an
        image's tags at or above their thresholds."""
        scored: dict[str, tuple[str, float]] = {}  # canonical name -> (name as given, score)
        for name, score in tags:
            key = self.aliases.get(name, name)
            if key not in scored or score > scored[key][1]:
                scored[key] = (name, score)
        dropped: dict[str, Drop] = {}
        if contradictions:
            self._contradictions(scored, dropped)
        if overlap:
            self._overlap(scored, dropped)
        return dropped

    def _contradictions(
        self, scored: Mapping[str, tuple[str, float]], dropped: dict[str, Drop]
    ) -> None:
        touched = {i for key in scored for i in self._rules_of.get(key, ())}
        for index in sorted(touched):
            rule = self.exclusions[index]
            present = [key for key in scored if key in rule.tags()]
            winner = min(present, key=lambda key: (-scored[key][1], key))
            keep = next(alt for alt in rule.alternatives if winner in alt)
            for key in present:
                name = scored[key][0]
                if key not in keep and name not in dropped:
                    dropped[name] = Drop("contradiction", scored[winner][0])

    def _overlap(self, scored: Mapping[str, tuple[str, float]], dropped: dict[str, Drop]) -> None:
        staying = {key: value for key, value in scored.items() if value[0] not in dropped}
        for key, (name, _score) in staying.items():
            implying = self.implications.implying(key)
            if not implying:
                continue
            # More specific: implies this tag, and is not implied by it (no cycle between).
            equal = self.implications.implied(key)
            above = [other for other in implying if other in staying and other not in equal]
            if above:
                best = min(above, key=lambda other: (-staying[other][1], other))
                dropped[name] = Drop("overlap", staying[best][0])

    def kept(
        self,
        tags: Sequence[tuple[str, float]],
        *,
        overlap: bool = False,
        contradictions: bool = True,
    ) -> list[tuple[str, float]]:
        """``tags`` less the dropped ones, in their order."""
        gone = self.drops(tags, overlap=overlap, contradictions=contradictions)
        return [tag for tag in tags if tag[0] not in gone]


def load_rules(
    implication_file: Path | None = None,
    exclusion_file: Path | None = None,
    aliases: Mapping[str, str] | None = None,
) -> TagRules:
    """The shipped implications (plus ``implication_file``'s) and the shipped exclusive
    groups (or ``exclusion_file``'s instead). Raises RulesError naming the file and line."""
    aliases = dict(aliases or {})
    return TagRules(
        load_implications(implication_file, aliases),
        load_exclusions(exclusion_file, aliases),
        aliases,
    )


@dataclass(frozen=True)
class Refinement:
    """The rules one output applies: an :class:`~app.tagger.policy.OutputPolicy` holds one.
    Overlap is on for captions and off for JSON lists; contradictions are on for both."""

    rules: TagRules
    overlap: bool = False
    contradictions: bool = True

    def drops(self, tags: Iterable[tuple[str, float]]) -> dict[str, Drop]:
        return self.rules.drops(tags, overlap=self.overlap, contradictions=self.contradictions)

"""Mutually exclusive tags: the model card's "simple co-occurrence rules to suppress
contradictions" as a small rules file.

One rule per line: alternatives separated by a ``|`` standing alone between spaces, each
alternative one or more tag names separated by spaces. Tags of different alternatives
contradict each other; tags of one alternative do not::

    # an image shows one girl, or several
    1girl | 2girls 3girls 4girls 5girls 6+girls multiple_girls

Among an image's tags at or above their thresholds, the highest-scored tag of a rule wins:
the tags of its alternative stay, those of the others go. Rules are judged independently,
each on the same tags, and a tag dropped by any rule is dropped. ``#`` starts a comment
(as a word of its own, since ``#`` is no tag); blank lines are skipped. ``|`` inside a
word (the kaomoji ``|_|``) is a tag.

:func:`parse_exclusions` is a pure function from the text to frozen rules; an error names
the file and the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from app.tagrules.implications import RulesError

PACKAGED = Path(__file__).resolve().parents[1] / "data" / "exclusive_tags.txt"
SEPARATOR = "|"


@dataclass(frozen=True)
class Exclusion:
    """One rule: its alternatives (disjoint sets of tag names) and its line in the file."""

    alternatives: tuple[frozenset[str], ...]
    line: int = 0

    def tags(self) -> frozenset[str]:
        return frozenset().union(*self.alternatives)


def parse_exclusions(text: str, source: str = "<text>") -> tuple[Exclusion, ...]:
    rules: list[Exclusion] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        words = raw.split()
        if "#" in words:
            words = words[: words.index("#")]
        if words and words[0].startswith("#"):
            words = []
        if not words:
            continue
        rules.append(_rule(words, source, number))
    return tuple(rules)


def _rule(words: list[str], source: str, line: int) -> Exclusion:
    where = f"{source}, line {line}"
    groups: list[list[str]] = [[]]
    for word in words:
        if word == SEPARATOR:
            groups.append([])
        else:
            groups[-1].append(word.lower())
    if len(groups) < 2:
        raise RulesError(
            f"{where}: a rule needs at least two alternatives separated by ' | ', "
            f"as in '1girl | multiple_girls'"
        )
    if any(not group for group in groups):
        raise RulesError(f"{where}: an empty alternative (a '|' at an end or two in a row)")
    seen: dict[str, int] = {}
    for index, group in enumerate(groups):
        for name in group:
            if name in seen and seen[name] != index:
                raise RulesError(f"{where}: {name!r} is in two alternatives of one rule")
            seen[name] = index
    return Exclusion(tuple(frozenset(group) for group in groups), line)


def read_exclusions(path: Path) -> tuple[Exclusion, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: unreadable rules file ({exc})") from exc
    return parse_exclusions(text, str(path))


@cache
def _packaged() -> tuple[Exclusion, ...]:
    return read_exclusions(PACKAGED)


def load_exclusions(
    path: Path | None = None, aliases: Mapping[str, str] | None = None
) -> tuple[Exclusion, ...]:
    """``path``'s rules, or the shipped ones, with old tag names put through ``aliases``."""
    rules = read_exclusions(path) if path is not None else _packaged()
    if not aliases:
        return rules
    return tuple(
        Exclusion(
            tuple(frozenset(aliases.get(n, n) for n in alt) for alt in rule.alternatives), rule.line
        )
        for rule in rules
    )

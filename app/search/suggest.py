"""Unknown tags in a query, and the known tags closest to each ("did you mean"), as
Danbooru's autocorrect finds them: trigram similarity (PostgreSQL pg_trgm's measure) over the
index's tag names and the aliases of its tags, most similar first, then most used.

The trigram index is built once per catalog (a few tens of milliseconds for 13k tags plus
their aliases) and kept while the catalog is; a suggestion then costs one ``bincount`` over
the candidate ids of the word's trigrams, never a Python loop over the vocabulary. Words
longer than ``MAX_WORD`` characters and queries with more than ``MAX_UNKNOWN`` unknown tags
are cut there, so a hostile query costs no more than a few ordinary ones.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from app.query import And, Not, Or, TagTerm
from app.query.ast import Node
from app.search.catalog import Catalog

MIN_SIMILARITY = 0.3  # pg_trgm's default similarity_threshold
MAX_WORD = 64
MAX_UNKNOWN = 8
LIMIT = 5
EDIT_CANDIDATES = 50  # names checked for a one- or two-letter typo, per unknown word
_WORDS = re.compile(r"[^\W_]+")  # pg_trgm: words of letters and digits


@dataclass(frozen=True)
class Suggestion:
    name: str  # a tag of the index
    group: str
    count: int
    similarity: float
    alias: str | None = None  # the alias that matched, when it was not the name itself


@dataclass(frozen=True)
class UnknownTag:
    tag: str
    suggestions: list[Suggestion]


def trigrams(text: str) -> set[str]:
    """pg_trgm's trigrams: each word lower-cased and padded with two spaces before and one
    after (``cat`` -> ``"  c", " ca", "cat", "at "``)."""
    found: set[str] = set()
    for word in _WORDS.findall(text.lower()[:MAX_WORD]):
        padded = f"  {word} "
        found.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return found


class TrigramIndex:
    """Names (tags and aliases) by trigram, as arrays of name numbers."""

    def __init__(self, catalog: Catalog) -> None:
        names = list(catalog.tags)
        targets = list(names)
        aliases = [(a, t) for a, t in catalog.aliases.items() if t in catalog.tags and a != t]
        names += [a for a, _ in aliases]
        targets += [t for _, t in aliases]
        self.names = names
        self.targets = targets
        self.catalog = catalog
        postings: dict[str, list[int]] = defaultdict(list)
        sizes = np.zeros(len(names), dtype=np.int32)
        for number, name in enumerate(names):
            grams = trigrams(name)
            sizes[number] = len(grams)
            for gram in grams:
                postings[gram].append(number)
        self.sizes = sizes
        self.postings = {gram: np.array(ids, dtype=np.int32) for gram, ids in postings.items()}

    def suggest(self, word: str, limit: int = LIMIT) -> list[Suggestion]:
        """The closest known tags: those within a typo or two of ``word`` first (a
        transposition is one edit: "1gril" shares only 2 of 10 trigrams with "1girl"), then
        by trigram similarity (at least MIN_SIMILARITY), then by use."""
        grams = trigrams(word)
        lists = [self.postings[g] for g in grams if g in self.postings]
        if not lists:
            return []
        shared = np.bincount(np.concatenate(lists), minlength=len(self.names))
        candidates = np.flatnonzero(shared)
        similarity = shared[candidates] / (len(grams) + self.sizes[candidates] - shared[candidates])
        bound = max_edits(word)
        best: dict[str, tuple[int, Suggestion]] = {}
        # Edit distances only for the few most similar names: the cost stays bounded.
        for rank, at in enumerate(np.argsort(-similarity, kind="stable")):
            if rank >= EDIT_CANDIDATES and similarity[at] < MIN_SIMILARITY:
                break
            name = self.names[int(candidates[at])]
            edits = (
                edit_distance(word.lower(), name, bound) if rank < EDIT_CANDIDATES else bound + 1
            )
            if edits > bound and similarity[at] < MIN_SIMILARITY:
                continue
            target = self.targets[int(candidates[at])]
            info = self.catalog.tags[target]
            alias = None if name == target else name
            found = Suggestion(
                target, info.group, info.count, round(float(similarity[at]), 3), alias
            )
            # A tag reached by its name and by an alias is listed once, by the closer.
            if target not in best or (edits, -found.similarity) < (
                best[target][0],
                -best[target][1].similarity,
            ):
                best[target] = (min(edits, bound + 1), found)
        ranked = sorted(
            best.values(), key=lambda e: (e[0], -e[1].similarity, -e[1].count, e[1].name)
        )
        return [found for _, found in ranked[:limit]]


def max_edits(word: str) -> int:
    return 1 if len(word) < 8 else 2


def edit_distance(a: str, b: str, bound: int) -> int:
    """Optimal string alignment distance (a transposition counts as one edit), or
    ``bound + 1`` as soon as it is certain to exceed ``bound``."""
    if abs(len(a) - len(b)) > bound:
        return bound + 1
    a, b = a[:MAX_WORD], b[:MAX_WORD]
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], before[j - 2] + 1)
        if min(row) > bound:
            return bound + 1
        before, previous = previous, row
    return previous[-1]


_cache_lock = threading.Lock()
_cached: tuple[Catalog, TrigramIndex] | None = None


def index_for(catalog: Catalog) -> TrigramIndex:
    """The catalog's trigram index, built on first use and kept while the catalog is the
    current one (the search service makes a new catalog when the generation changes)."""
    global _cached
    with _cache_lock:
        if _cached is not None and _cached[0] is catalog:
            return _cached[1]
    built = TrigramIndex(catalog)
    with _cache_lock:
        _cached = (catalog, built)
    return built


def unknown_tags(root: Node, catalog: Catalog, limit: int = LIMIT) -> list[UnknownTag]:
    """The query's plain tag terms the index does not know (aliases resolved), and no tag
    it knows implies, in query order, each with the closest known tags."""
    seen: list[str] = []
    for name in _tag_names(root):
        if name not in seen and catalog.lookup(name) is None and not catalog.implying_name(name):
            seen.append(name)
        if len(seen) >= MAX_UNKNOWN:
            break
    if not seen:
        return []
    index = index_for(catalog)
    return [UnknownTag(name, index.suggest(name, limit)) for name in seen]


def _tag_names(node: Node) -> Iterator[str]:
    if isinstance(node, TagTerm):
        yield node.name
    elif isinstance(node, Not):
        yield from _tag_names(node.child)
    elif isinstance(node, And | Or):
        for child in node.children:
            yield from _tag_names(child)


def describe(unknown: list[UnknownTag]) -> list[str]:
    """One line per unknown tag, for the command line."""
    lines = []
    for item in unknown:
        line = f"no tag {item.tag!r} in the index"
        if item.suggestions:
            line += "; did you mean " + ", ".join(_label(s) for s in item.suggestions) + "?"
        lines.append(line)
    return lines


def _label(suggestion: Suggestion) -> str:
    via = f" (alias {suggestion.alias})" if suggestion.alias else ""
    return f"{suggestion.name}{via}"


__all__ = ["Suggestion", "TrigramIndex", "UnknownTag", "describe", "trigrams", "unknown_tags"]

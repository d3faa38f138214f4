"""The tag catalog of the active generation: tag names to ids and groups, with the image
counts that rank autocomplete and wildcard expansion, and the alias and implication tables
applied at query time."""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from app.tagger.vocab import GROUPS
from app.tagrules.implications import Implications

WILDCARD_LIMIT = 100


@dataclass(frozen=True)
class TagInfo:
    id: int
    group: str
    count: int


@dataclass
class Catalog:
    """The index's tags, by name, with the alias table for query-time aliasing and the
    implication table (None: implications off) for query-time implication."""

    tags: Mapping[str, TagInfo]
    aliases: Mapping[str, str] = field(default_factory=dict)
    implications: Implications | None = None
    _by_count: list[tuple[str, TagInfo]] | None = None
    _names: list[str] = field(default_factory=list)
    _matches: dict[str, list[TagInfo]] = field(default_factory=dict)
    _alias_names: list[str] | None = None
    _by_id: dict[int, tuple[str, str]] | None = None
    _implying: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # Bound implied terms by their own tag range (app.search.binder): one plan object per
    # term, so engines find it in their caches by identity.
    implied_plans: dict[object, object] = field(default_factory=dict)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[tuple[int, str, int, int]],
        aliases: Mapping[str, str],
        implications: Implications | None = None,
    ) -> Catalog:
        """Rows of (id, name, group code, image count), as the tags table holds them."""
        tags = {name: TagInfo(i, GROUPS[g], n) for i, name, g, n in rows}
        return cls(tags, aliases, implications)

    def implying(self, info: TagInfo) -> tuple[int, ...]:
        """Ids of the index's tags that imply this one, directly or through others (tags
        the index lacks are skipped, the chain through them is not), ascending; () with
        implications off."""
        if self.implications is None:
            return ()
        found = self._implying.get(info.id)
        if found is None:
            name = self.names_by_id()[info.id][0]
            known = (self.tags.get(other) for other in self.implications.implying(name))
            found = tuple(sorted(other.id for other in known if other is not None))
            self._implying[info.id] = found
        return found

    def implying_name(self, name: str) -> list[TagInfo]:
        """For a tag the index lacks: the index's tags that imply it (aliases applied),
        by id; [] with implications off."""
        if self.implications is None:
            return []
        known = (self.tags.get(o) for o in self.implications.implying(self.aliases.get(name, name)))
        return sorted((info for info in known if info is not None), key=lambda info: info.id)

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

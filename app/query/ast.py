"""The parsed query: a tree of frozen, hashable dataclasses, and its S-expression form.

The tree keeps children in source order. It is normalised as it is built: nested ``And``
inside ``And`` (and ``Or`` inside ``Or``) are flattened, exact duplicates among siblings are
dropped, a single-child ``And``/``Or`` collapses to its child, and ``-(-a)`` is ``a``.

``to_sexp`` writes the notation of Danbooru's parser tests (docs/danbooru-query-grammar.md).
It sorts siblings, tags first, then metatags, wildcards, ``not``, ``and``, ``or`` (ties by
text), so that a conformance vector reads the same whatever order its terms were typed in.

Term nodes carry the 0-based ``position`` of their first character for error messages; it is
not part of equality or hashing, so ``a b`` and ``b a`` hold equal terms. ``Meta.raw`` (the
value as typed, after unquoting) is likewise left out: ``rating:g`` equals ``rating:general``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from app.query.ranges import RangeSet, ScoreRange


@dataclass(frozen=True)
class Order:
    """``order:`` — ``key`` is id, random, tagcount, filesize, mpixels, date, score or similarity.

    ``tag`` is set only for ``order:score:<tag>`` (that tag's confidence, highest first).
    """

    key: str
    descending: bool
    tag: str | None = None


MetaValue = (
    RangeSet[int]
    | RangeSet[float]
    | RangeSet[date]
    | RangeSet[timedelta]
    | tuple[str, ...]
    | str
    | int
    | Order
)
"""A metatag's typed value; metatags.py documents which metatag gets which type."""


@dataclass(frozen=True)
class All:
    """The empty query: every image."""


@dataclass(frozen=True)
class TagTerm:
    name: str
    threshold: ScoreRange | None = None
    position: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Wildcard:
    """A tag pattern with ``*``; the executor expands it to the most-used matching tags."""

    pattern: str
    threshold: ScoreRange | None = None
    position: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Meta:
    """A metatag term; ``to_sexp`` prints ``raw``, the value as typed (after unquoting)."""

    name: str
    value: MetaValue
    raw: str = field(default="", compare=False)
    position: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Not:
    child: Node


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


Node = All | TagTerm | Wildcard | Meta | Not | And | Or

ALL = All()


@dataclass(frozen=True)
class Query:
    """A parsed search: the filter tree plus the singleton controls pulled out of it."""

    root: Node
    order: Order | None = None
    limit: int | None = None
    similar: int | None = None


def make_not(child: Node) -> Node:
    return child.child if isinstance(child, Not) else Not(child)


def make_and(children: Iterable[Node]) -> Node:
    flat = [child for child in _flatten(And, children) if not isinstance(child, All)]
    if not flat:
        return ALL
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def make_or(children: Iterable[Node]) -> Node:
    flat = _flatten(Or, children)
    if any(isinstance(child, All) for child in flat):
        return ALL
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def _flatten(kind: type[And] | type[Or], children: Iterable[Node]) -> list[Node]:
    flat: list[Node] = []
    for child in children:
        if isinstance(child, kind):
            flat.extend(child.children)
        else:
            flat.append(child)
    # dict.fromkeys drops duplicates and keeps the first occurrence's position.
    return list(dict.fromkeys(flat))


_RANK: dict[type, int] = {All: 0, TagTerm: 1, Meta: 2, Wildcard: 3, Not: 4, And: 5, Or: 6}
_NEEDS_QUOTES = frozenset("\"'\\()")


def to_sexp(node: Node) -> str:
    """``(and a (not b))``, ``(wildcard foo*)``, ``1girl,>=0.9``, ``path:"a b"``, ``all``."""
    if isinstance(node, All):
        return "all"
    if isinstance(node, TagTerm):
        return node.name + _threshold(node.threshold)
    if isinstance(node, Wildcard):
        return f"(wildcard {node.pattern}{_threshold(node.threshold)})"
    if isinstance(node, Meta):
        return f"{node.name}:{_quoted(node.raw)}"
    if isinstance(node, Not):
        return f"(not {to_sexp(node.child)})"
    operator = "and" if isinstance(node, And) else "or"
    return f"({operator} {' '.join(_sorted_sexps(node.children))})"


def _sorted_sexps(children: tuple[Node, ...]) -> list[str]:
    keyed = sorted((_RANK[type(child)], to_sexp(child)) for child in children)
    return [text for _, text in keyed]


def _threshold(threshold: ScoreRange | None) -> str:
    return "" if threshold is None else f",{threshold}"


def _quoted(value: str) -> str:
    plain = value and not any(ch.isspace() or ch in _NEEDS_QUOTES for ch in value)
    if plain:
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'

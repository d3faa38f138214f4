"""Sagashi's query parser: Danbooru's post-search grammar, plus per-tag score thresholds.

    root        = [ or_clause ]                   empty: every image
    or_clause   = and_clause { "or" and_clause }
    and_clause  = factor_list { "and" factor_list }
    factor_list = factor { factor }               juxtaposition is AND
    factor      = [ "-" | "~" ] expr              one prefix at most
    expr        = "(" or_clause ")" | term

Precedence, tightest first: the prefixes, then juxtaposition and ``and``, then ``or``.
``~X`` siblings within one factor list (not across an ``and`` keyword, as in Danbooru:
``~a ~b and ~c ~d`` is ``(and (or a b) (or c d))``) become one OR; a lone ``~X`` is ``X``.
Unlike Danbooru, a prefix must touch its operand: ``- a`` is an error, not ``-a``.

Thresholds. A tag or wildcard term may end in ``,<threshold>``, split at its LAST comma
when what follows starts with a digit, ``.``, ``<``, ``>`` or ``=`` (otherwise the comma is
part of the tag's name). The threshold is a range over the tag's score in [0, 1]:
``>=0.9``, ``>0.5``, ``<=0.3``, ``<0.3``, ``0.5..0.8``, ``0.5..``, ``..0.4``, ``0.5...0.8``.
A bare number is a LOWER bound: ``tag,0.8`` means score >= 0.8, since equality on a
continuous score is useless. (Danbooru's ``tag,80`` means exactly 80; Sagashi deliberately
differs.) A number above 1 and up to 100 is a percentage: ``tag,>=90`` is ``>= 0.9``.
Anything else after the comma is a ``bad_value`` error, as is a second threshold. A term
without one has ``threshold=None``; the executor applies its group's default.

Singletons. ``order:``, ``limit:`` and ``similar:`` are pulled out of the tree into
``Query``. They may not be negated, prefixed with ``~``, or sit under an ``or``; repeating
one with an equal value is allowed, a different value is ``conflicting_singleton``.

The parser recurses only through parentheses, whose depth the lexer bounds (``too_deep``),
and loops over ``and``/``or`` chains, so no input can exhaust the Python stack. Any input
string either parses or raises ``QueryError``.
"""

from __future__ import annotations

import logging
from typing import NoReturn

from app.query.ast import (
    ALL,
    And,
    Meta,
    Node,
    Not,
    Or,
    Order,
    Query,
    TagTerm,
    Wildcard,
    make_and,
    make_not,
    make_or,
)
from app.query.errors import ErrorCode, QueryError
from app.query.lexer import Kind, Lexer, Token
from app.query.metatags import SINGLETON_METATAGS, parse_value
from app.query.ranges import THRESHOLD_START, ScoreRange, parse_threshold

logger = logging.getLogger(__name__)

MAX_TERMS = 100
MAX_DEPTH = 64
MAX_LIMIT = 1000
# Each nesting level costs about seven Python frames; this keeps the deepest parse well
# inside Python's default limit of 1000, with room for the caller's own frames.
_DEPTH_CEILING = 100

_FACTOR_START = frozenset({Kind.TERM, Kind.LPAREN, Kind.NOT, Kind.OPT})


def parse(
    text: str,
    *,
    max_terms: int = MAX_TERMS,
    max_depth: int = MAX_DEPTH,
    max_limit: int = MAX_LIMIT,
) -> Query:
    """Parse a search; raises ``QueryError`` (and nothing else) for any bad ``text``.

    ``max_terms`` bounds the tag, wildcard and metatag terms; ``max_depth`` the nesting of
    parentheses; ``max_limit`` the largest ``limit:``.
    """
    if not 1 <= max_depth <= _DEPTH_CEILING:
        raise ValueError(f"max_depth must be within [1, {_DEPTH_CEILING}], got {max_depth}")
    query = _Parser(text, max_terms=max_terms, max_depth=max_depth, max_limit=max_limit).run()
    logger.debug("parsed a query of %d characters", len(text))
    return query


class _Parser:
    def __init__(self, text: str, *, max_terms: int, max_depth: int, max_limit: int) -> None:
        self._lexer = Lexer(text, max_depth=max_depth)
        self._max_terms = max_terms
        self._max_limit = max_limit
        self._terms = 0
        self._prefixed = 0  # > 0 while reading the operand of '-' or '~'
        self._open: list[int] = []  # positions of the '(' not yet closed
        self._singletons: list[Meta] = []
        self._token = self._lexer.next()

    def run(self) -> Query:
        if self._token.kind is Kind.END:
            return Query(ALL)
        # or_clause stops only at the end: a stray ')' is already a lexer error.
        root = self._or_clause()
        return _extract_singletons(root, self._singletons)

    def _advance(self) -> Token:
        token = self._token
        self._token = self._lexer.next()
        return token

    def _or_clause(self) -> Node:
        parts = [self._and_clause()]
        while self._token.kind is Kind.OR:
            self._operand_after(self._advance())
            parts.append(self._and_clause())
        if len(parts) > 1 and self._singletons:
            _forbid_singletons(parts)
        return make_or(parts)

    def _and_clause(self) -> Node:
        groups = [self._factor_list()]
        while self._token.kind is Kind.AND:
            self._operand_after(self._advance())
            groups.append(self._factor_list())
        return make_and(groups)

    def _operand_after(self, keyword: Token) -> None:
        if self._token.kind not in _FACTOR_START:
            message = f"{keyword.kind.value} must be followed by a term"
            raise QueryError(ErrorCode.SYNTAX, message, keyword.position)

    def _factor_list(self) -> Node:
        factors: list[tuple[bool, Node]] = []
        while self._token.kind in _FACTOR_START:
            factors.append(self._factor())
        if not factors:
            self._missing_term()
        return _combine(factors)

    def _missing_term(self) -> NoReturn:
        token = self._token
        if token.kind is Kind.END and self._open:
            message = "this '(' is never closed"
            raise QueryError(ErrorCode.UNBALANCED_PARENS, message, self._open[-1])
        if token.kind is Kind.RPAREN:
            raise QueryError(ErrorCode.SYNTAX, "empty parentheses", token.position)
        message = f"expected a term before {token.kind.value}"
        raise QueryError(ErrorCode.SYNTAX, message, token.position)

    def _factor(self) -> tuple[bool, Node]:
        prefix = self._token
        if prefix.kind not in (Kind.NOT, Kind.OPT):
            return False, self._expr()
        self._advance()
        self._prefixed += 1
        node = self._expr(prefix)
        self._prefixed -= 1
        if prefix.kind is Kind.NOT:
            return False, make_not(node)
        return True, node

    def _expr(self, prefix: Token | None = None) -> Node:
        token = self._advance()
        if token.kind is Kind.LPAREN:
            return self._group(token)
        if token.kind is Kind.TERM:
            return self._term(token)
        # Only a keyword can follow a prefix here: the lexer rejects the rest.
        prefix_name = prefix.kind.value if prefix else "a prefix"
        message = f"{prefix_name} must be followed by a term, not {token.kind.value}"
        raise QueryError(ErrorCode.SYNTAX, message, token.position)

    def _group(self, paren: Token) -> Node:
        self._open.append(paren.position)
        node = self._or_clause()
        if self._token.kind is not Kind.RPAREN:
            raise QueryError(
                ErrorCode.UNBALANCED_PARENS, "this '(' is never closed", paren.position
            )
        self._advance()
        self._open.pop()
        return node

    def _term(self, token: Token) -> Node:
        self._terms += 1
        if self._terms > self._max_terms:
            message = f"more than {self._max_terms} terms"
            raise QueryError(ErrorCode.TOO_MANY_TERMS, message, token.position)
        if token.meta is None:
            return _build_tag(token.text, token.position)
        meta = token.meta
        value = parse_value(meta.name, meta.value, meta.locate, max_limit=self._max_limit)
        node = Meta(meta.name, value, meta.value, token.position)
        if meta.name in SINGLETON_METATAGS:
            self._note_singleton(node)
        return node

    def _note_singleton(self, node: Meta) -> None:
        if self._prefixed:
            message = f"'{node.name}:' cannot be negated or prefixed with '~'"
            raise QueryError(ErrorCode.SINGLETON_MISUSE, message, node.position)
        self._singletons.append(node)


def _combine(factors: list[tuple[bool, Node]]) -> Node:
    """One factor list; its ``~`` operands become one OR where the first of them stood."""
    optional = [node for is_optional, node in factors if is_optional]
    if len(optional) < 2:
        # A lone ~X is X, in its own place.
        return make_and(node for _, node in factors)
    merged = make_or(optional)
    combined: list[Node] = []
    for is_optional, node in factors:
        if not is_optional:
            combined.append(node)
        elif merged not in combined:
            combined.append(merged)
    return make_and(combined)


def _build_tag(word: str, position: int) -> Node:
    """A tag or wildcard term, with its optional ``,threshold``."""
    name, threshold = _split_threshold(word, position)
    if not name:
        raise QueryError(ErrorCode.SYNTAX, "a threshold needs a tag before it", position)
    lowered = name.lower()
    if lowered in ("and", "or"):
        message = f"'{lowered}' is an operator and cannot take a threshold"
        raise QueryError(ErrorCode.SYNTAX, message, position)
    if "*" in lowered:
        return Wildcard(lowered, threshold, position)
    return TagTerm(lowered, threshold, position)


def _split_threshold(word: str, position: int) -> tuple[str, ScoreRange | None]:
    comma = _threshold_comma(word)
    if comma < 0:
        return word, None
    name = word[:comma]
    if _threshold_comma(name) >= 0:
        message = "a term takes one threshold"
        raise QueryError(ErrorCode.BAD_VALUE, message, position + _threshold_comma(name) + 1)
    start = position + comma + 1
    return name, parse_threshold(word[comma + 1 :], lambda index: start + index)


def _threshold_comma(word: str) -> int:
    """Index of the comma that starts a threshold, or -1 if the last comma is a name's."""
    comma = word.rfind(",")
    if comma < 0 or word[comma + 1 : comma + 2] not in THRESHOLD_START:
        return -1
    return comma


def _extract_singletons(root: Node, singletons: list[Meta]) -> Query:
    if not singletons:
        return Query(root)
    chosen: dict[str, Meta] = {}
    for node in singletons:
        first = chosen.setdefault(node.name, node)
        if first.value != node.value:
            message = f"'{node.name}:' is given twice with different values"
            raise QueryError(ErrorCode.CONFLICTING_SINGLETON, message, node.position)
    _require_similar_for_similarity_order(chosen)
    return Query(
        root=_without_singletons(root),
        order=_order_of(chosen),
        limit=_int_of(chosen, "limit"),
        similar=_int_of(chosen, "similar"),
    )


def _forbid_singletons(alternatives: list[Node]) -> None:
    """Raise if a singleton sits anywhere inside these ``or`` alternatives.

    Checked before ``make_or`` drops duplicates, so ``order:id or order:id`` is refused too.
    Iterative, and each node is visited once per enclosing ``or``, which max_terms bounds.
    """
    stack = alternatives[::-1]  # reversed, so the leftmost offender is reported
    while stack:
        node = stack.pop()
        if isinstance(node, Meta) and node.name in SINGLETON_METATAGS:
            message = f"'{node.name}:' cannot be part of an 'or'"
            raise QueryError(ErrorCode.SINGLETON_MISUSE, message, node.position)
        if isinstance(node, Not):
            stack.append(node.child)
        elif isinstance(node, And | Or):
            stack.extend(reversed(node.children))


def _require_similar_for_similarity_order(chosen: dict[str, Meta]) -> None:
    order = _order_of(chosen)
    if order is not None and order.key == "similarity" and "similar" not in chosen:
        message = "order:similarity needs similar:<image id>"
        raise QueryError(ErrorCode.BAD_VALUE, message, chosen["order"].position)


def _without_singletons(root: Node) -> Node:
    # After the checks above every singleton is the root or a direct child of a root And.
    def kept(node: Node) -> bool:
        return not (isinstance(node, Meta) and node.name in SINGLETON_METATAGS)

    if isinstance(root, And):
        return make_and(child for child in root.children if kept(child))
    return root if kept(root) else ALL


def _order_of(chosen: dict[str, Meta]) -> Order | None:
    node = chosen.get("order")
    return node.value if node is not None and isinstance(node.value, Order) else None


def _int_of(chosen: dict[str, Meta], name: str) -> int | None:
    node = chosen.get(name)
    return node.value if node is not None and isinstance(node.value, int) else None

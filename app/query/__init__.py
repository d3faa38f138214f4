"""Sagashi's query language: Danbooru's search syntax, parsed into a tree (no I/O here).

``parse(text)`` returns a ``Query`` or raises ``QueryError(code, message, position)``.
"""

from app.query.ast import (
    ALL,
    All,
    And,
    Meta,
    MetaValue,
    Node,
    Not,
    Or,
    Order,
    Query,
    TagTerm,
    Wildcard,
    to_sexp,
)
from app.query.errors import ErrorCode, QueryError
from app.query.metatags import KNOWN_METATAGS, ORDERS, SINGLETON_METATAGS
from app.query.parser import MAX_DEPTH, MAX_LIMIT, MAX_TERMS, parse
from app.query.ranges import Range, RangeSet, ScoreRange

__all__ = [
    "ALL",
    "KNOWN_METATAGS",
    "MAX_DEPTH",
    "MAX_LIMIT",
    "MAX_TERMS",
    "ORDERS",
    "SINGLETON_METATAGS",
    "All",
    "And",
    "ErrorCode",
    "Meta",
    "MetaValue",
    "Node",
    "Not",
    "Or",
    "Order",
    "Query",
    "QueryError",
    "Range",
    "RangeSet",
    "ScoreRange",
    "TagTerm",
    "Wildcard",
    "parse",
    "to_sexp",
]

"""Danbooru's ranges (``5``, ``>5``, ``5..10``, ``5...10``, ``5,6,7``, ``<=1,>=3``) and scores.

One reader serves every ordered value (counts, sizes, ratios, dates, ages, tag scores): the
caller passes a function that reads a single value, and gets typed errors with positions.

Unlike Danbooru, a reversed range such as ``5..3`` is an error rather than silently swapped,
and ``5..5`` with an exclusive bound (``5...5``) is an error because it matches nothing.

A tag's confidence threshold is a single range over the tagger's score, with one rule of
Sagashi's own: a bare number is a lower bound (``tag,0.8`` means score >= 0.8), because
equality on a continuous score is useless. Danbooru's ``tag,80`` means exactly 80; Sagashi
deliberately differs. Numbers above 1 and up to 100 are percentages (``,>=90`` is 0.9).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Generic, TypeVar

from app.query.errors import ErrorCode, QueryError

T = TypeVar("T", int, float, date, timedelta)

Locate = Callable[[int], int]
"""Maps an index into a value's text to its character offset in the whole query."""

# Longest operators first, so that ">=" is not read as ">" followed by "=...".
# Each entry: (operator, is a lower bound, inclusive).
_COMPARISONS: tuple[tuple[str, bool, bool], ...] = (
    (">=", True, True),
    (">", True, False),
    ("<=", False, True),
    ("<", False, False),
)

# Bounded digit counts keep int() below Python's 4300-digit limit and floats finite.
_INT = re.compile(r"[0-9]{1,18}", re.ASCII)
_FLOAT = re.compile(r"[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18}", re.ASCII)

THRESHOLD_START = frozenset("0123456789.<>=")
"""A term's text after its last comma is a threshold only if it starts with one of these."""


@dataclass(frozen=True)
class Range(Generic[T]):
    """An interval; a missing bound is unbounded. The point ``5`` is ``Range(5, 5)``."""

    lo: T | None = None
    hi: T | None = None
    lo_inclusive: bool = True
    hi_inclusive: bool = True

    def contains(self, value: T) -> bool:
        if self.lo is not None and (
            value < self.lo or (value == self.lo and not self.lo_inclusive)
        ):
            return False
        return not (
            self.hi is not None
            and (value > self.hi or (value == self.hi and not self.hi_inclusive))
        )

    def is_empty(self) -> bool:
        if self.lo is None or self.hi is None:
            return False
        both_inclusive = self.lo_inclusive and self.hi_inclusive
        return self.lo > self.hi or (self.lo == self.hi and not both_inclusive)

    def __str__(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return _format_interval(self, lo, hi)
        if lo is not None:
            return (">=" if self.lo_inclusive else ">") + _format(lo)
        if hi is not None:
            return ("<=" if self.hi_inclusive else "<") + _format(hi)
        return ".."


ScoreRange = Range[float]
"""A confidence threshold on one tag's score, within [0, 1]."""


@dataclass(frozen=True)
class RangeSet(Generic[T]):
    """A union of ranges: ``5,6,7`` and ``<=1,>=3`` match a value inside any of them."""

    ranges: tuple[Range[T], ...]

    def contains(self, value: T) -> bool:
        return any(part.contains(value) for part in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(part) for part in self.ranges)


def _format(value: int | float | date | timedelta) -> str:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    return repr(value)


def _format_interval(bounds: Range[T], lo: T, hi: T) -> str:
    if lo == hi and bounds.lo_inclusive and bounds.hi_inclusive:
        return _format(lo)
    if bounds.lo_inclusive:
        dots = ".." if bounds.hi_inclusive else "..."
        return f"{_format(lo)}{dots}{_format(hi)}"
    # Danbooru has no syntax for an open lower bound with an upper one; the parser never
    # builds one, but a hand-made Range still prints unambiguously.
    closer = "]" if bounds.hi_inclusive else ")"
    return f"({_format(lo)}, {_format(hi)}{closer}"


def parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(f"expected a whole number, got {text!r}")
    return int(text)


def parse_float(text: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise ValueError(f"expected a number, got {text!r}")
    return float(text)


def parse_range_set(text: str, parse_value: Callable[[str], T], locate: Locate) -> RangeSet[T]:
    """A comma-separated union of ranges; each item's errors point at that item."""
    ranges: list[Range[T]] = []
    offset = 0
    for item in text.split(","):
        ranges.append(parse_range(item, parse_value, _shifted(locate, offset)))
        offset += len(item) + 1
    return RangeSet(tuple(ranges))


def parse_range(item: str, parse_value: Callable[[str], T], locate: Locate) -> Range[T]:
    """One range: ``5``, ``>5``, ``>=5``, ``<5``, ``<=5``, ``5..``, ``..5``, ``5..10``, ``5...10``.

    Values may not be reversed: ``5..3`` is an error, not Danbooru's ``3..5``.
    """
    result = _read_range(item, parse_value, locate)
    if result.is_empty():
        message = f"the range {item!r} is empty: its lower bound is not below its upper bound"
        raise QueryError(ErrorCode.BAD_VALUE, message, locate(0))
    return result


def parse_threshold(text: str, locate: Locate) -> ScoreRange:
    """A tag's score threshold; a bare number is a lower bound (see the module docstring)."""
    if text.startswith("="):
        message = "a score threshold is a bound, not an equality: write >= instead of ="
        raise QueryError(ErrorCode.BAD_VALUE, message, locate(0))
    bounds = parse_range(text, _score, locate)
    is_bare = not text.startswith(("<", ">")) and ".." not in text
    return Range(lo=bounds.lo) if is_bare else bounds


def _score(text: str) -> float:
    value = parse_float(text)
    if value <= 1:
        return value
    if value <= 100:
        return value / 100
    raise ValueError(f"score {text} is outside [0, 1] (or 0 to 100 as a percentage)")


def _read_range(item: str, parse_value: Callable[[str], T], locate: Locate) -> Range[T]:
    def value(start: int, end: int | None = None) -> T:
        return _read_value(item, start, len(item) if end is None else end, parse_value, locate)

    for operator, is_lower, inclusive in _COMPARISONS:
        if item.startswith(operator):
            bound = value(len(operator))
            if is_lower:
                return Range(lo=bound, lo_inclusive=inclusive)
            return Range(hi=bound, hi_inclusive=inclusive)
    dots = item.find("...")
    if dots >= 0:
        return Range(value(0, dots), value(dots + 3), hi_inclusive=False)
    dots = item.find("..")
    if dots < 0:
        point = value(0)
        return Range(point, point)
    if item == "..":
        raise QueryError(ErrorCode.BAD_VALUE, "'..' needs at least one bound", locate(0))
    lo = value(0, dots) if dots > 0 else None
    hi = value(dots + 2) if dots + 2 < len(item) else None
    return Range(lo, hi)


def _read_value(
    item: str, start: int, end: int, parse_value: Callable[[str], T], locate: Locate
) -> T:
    text = item[start:end]
    if not text:
        message = f"{item!r} is missing a value" if item else "expected a value or a range"
        raise QueryError(ErrorCode.BAD_VALUE, message, locate(start))
    try:
        return parse_value(text)
    except (ValueError, OverflowError) as exc:
        raise QueryError(ErrorCode.BAD_VALUE, str(exc), locate(start)) from None


def _shifted(locate: Locate, offset: int) -> Locate:
    return lambda index: locate(offset + index)

"""Danbooru-style ranges and Sagashi's score thresholds (app/query/ranges.py)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from app.query.errors import ErrorCode, QueryError
from app.query.ranges import (
    Range,
    RangeSet,
    parse_float,
    parse_int,
    parse_range_set,
    parse_threshold,
)


def at(index: int) -> int:
    return index


def ints(text: str) -> RangeSet[int]:
    return parse_range_set(text, parse_int, at)


def floats(text: str) -> RangeSet[float]:
    return parse_range_set(text, parse_float, at)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", (Range(5, 5),)),
        (">5", (Range(lo=5, lo_inclusive=False),)),
        (">=5", (Range(lo=5),)),
        ("<5", (Range(hi=5, hi_inclusive=False),)),
        ("<=5", (Range(hi=5),)),
        ("5..", (Range(lo=5),)),
        ("..5", (Range(hi=5),)),
        ("5..10", (Range(5, 10),)),
        ("5...10", (Range(5, 10, hi_inclusive=False),)),
        ("5..5", (Range(5, 5),)),
        ("5,6,7", (Range(5, 5), Range(6, 6), Range(7, 7))),
        ("<=1,>=3", (Range(hi=1), Range(lo=3))),
        ("1..2,5...8,>100",
         (Range(1, 2), Range(5, 8, hi_inclusive=False), Range(lo=100, lo_inclusive=False))),
        ("0", (Range(0, 0),)),
        ("007", (Range(7, 7),)),
    ],
)  # fmt: skip
def test_integer_range_forms(text: str, expected: tuple[Range[int], ...]) -> None:
    assert ints(text) == RangeSet(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5", (Range(1.5, 1.5),)),
        (".5..1", (Range(0.5, 1.0),)),
        ("1.5..2.5", (Range(1.5, 2.5),)),
        ("1...1.5", (Range(1.0, 1.5, hi_inclusive=False),)),
        ("2.", (Range(2.0, 2.0),)),
        ("..0.25", (Range(hi=0.25),)),
    ],
)  # fmt: skip
def test_float_range_forms(text: str, expected: tuple[Range[float], ...]) -> None:
    assert floats(text) == RangeSet(expected)


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("5..3", 0, "empty"),
        ("5...5", 0, "empty"),
        ("abc", 0, "whole number"),
        (">", 1, "missing a value"),
        (">=", 2, "missing a value"),
        ("<", 1, "missing a value"),
        ("..", 0, "at least one bound"),
        ("...", 0, "missing a value"),
        ("...5", 0, "missing a value"),
        ("5...", 4, "missing a value"),
        ("", 0, "expected a value"),
        ("5,", 2, "expected a value"),
        (",5", 0, "expected a value"),
        ("5,,6", 2, "expected a value"),
        ("1,2,x", 4, "whole number"),
        ("1..x", 3, "whole number"),
        ("x..1", 0, "whole number"),
        ("-5", 0, "whole number"),
        ("1.5", 0, "whole number"),
        (">=5..6", 2, "whole number"),
        ("5.....6", 4, "whole number"),
        ("9" * 19, 0, "whole number"),
        ("１２", 0, "whole number"),  # fullwidth digits are not ASCII numbers
    ],
)  # fmt: skip
def test_bad_integer_ranges_point_at_the_problem(text: str, position: int, fragment: str) -> None:
    with pytest.raises(QueryError) as caught:
        ints(text)
    assert caught.value.code == ErrorCode.BAD_VALUE
    assert caught.value.position == position
    assert fragment in caught.value.message


def test_positions_are_mapped_through_locate() -> None:
    with pytest.raises(QueryError) as caught:
        parse_range_set("1,x", parse_int, lambda index: 100 + index)
    assert caught.value.position == 102


@pytest.mark.parametrize("text", ["1e5", "inf", "nan", "1_000", "+1", " 1", "1.2.3", "."])
def test_float_reader_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        parse_float(text)


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("5", [5], [4, 6]),
        (">5", [6, 100], [5, 4]),
        (">=5", [5, 6], [4]),
        ("<5", [4, 0], [5]),
        ("<=5", [5], [6]),
        ("5..10", [5, 7, 10], [4, 11]),
        ("5...10", [5, 9], [10, 11]),
        ("<=1,>=3", [0, 1, 3, 9], [2]),
        ("5,6,7", [5, 6, 7], [4, 8]),
    ],
)  # fmt: skip
def test_contains(text: str, inside: list[int], outside: list[int]) -> None:
    ranges = ints(text)
    assert all(ranges.contains(value) for value in inside)
    assert not any(ranges.contains(value) for value in outside)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("5", "5"), (">5", ">5"), ("5..", ">=5"), ("..5", "<=5"), ("<5", "<5"),
     ("5..10", "5..10"), ("5...10", "5...10"), ("<=1,>=3", "<=1,>=3")],
)  # fmt: skip
def test_str_is_canonical_range_syntax(text: str, canonical: str) -> None:
    assert str(ints(text)) == canonical


def test_str_of_other_value_types() -> None:
    assert str(Range(date(2024, 1, 1), date(2024, 1, 31))) == "2024-01-01..2024-01-31"
    assert str(Range(hi=timedelta(days=1), hi_inclusive=False)) == "<86400s"
    assert str(Range(0.5, 0.8, lo_inclusive=False)) == "(0.5, 0.8]"
    assert str(Range[int]()) == ".."


def test_ranges_are_hashable_values() -> None:
    assert len({ints("5..10"), ints("5..10"), ints("5...10")}) == 2


# Thresholds: a bare number is a lower bound; 1 < n <= 100 is a percentage.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.8", Range(lo=0.8)),
        ("0", Range(lo=0.0)),
        ("1", Range(lo=1.0)),
        (".5", Range(lo=0.5)),
        (">=0.9", Range(lo=0.9)),
        (">0.5", Range(lo=0.5, lo_inclusive=False)),
        ("<=0.3", Range(hi=0.3)),
        ("<0.3", Range(hi=0.3, hi_inclusive=False)),
        ("0.5..0.8", Range(0.5, 0.8)),
        ("0.5...0.8", Range(0.5, 0.8, hi_inclusive=False)),
        ("0.5..", Range(lo=0.5)),
        ("..0.4", Range(hi=0.4)),
        ("80", Range(lo=0.8)),
        (">=90", Range(lo=0.9)),
        ("100", Range(lo=1.0)),
        ("50..80", Range(0.5, 0.8)),
        ("1.5", Range(lo=0.015)),
    ],
)  # fmt: skip
def test_threshold_forms(text: str, expected: Range[float]) -> None:
    assert parse_threshold(text, at) == expected


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("=0.5", 0),
        ("==0.5", 0),
        ("101", 0),
        (">=150", 2),
        ("0.8..0.5", 0),
        ("0.5..x", 5),
        (">=", 2),
        ("..", 0),
        ("1e-3", 0),
        ("0.5.", 0),
    ],
)
def test_bad_thresholds(text: str, position: int) -> None:
    with pytest.raises(QueryError) as caught:
        parse_threshold(text, at)
    assert (caught.value.code, caught.value.position) == (ErrorCode.BAD_VALUE, position)

"""The query parser (app/query): Danbooru's conformance vectors, Sagashi's rules, fuzzing.

Expected trees are written as S-expressions (``to_sexp``), as in
../shared/docs/danbooru-query-grammar.md; ``to_sexp`` sorts siblings, the tree keeps order.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import pickle
import re
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.query import (
    ALL,
    KNOWN_METATAGS,
    ORDERS,
    All,
    And,
    ErrorCode,
    Meta,
    Node,
    Not,
    Or,
    Order,
    Query,
    QueryError,
    Range,
    RangeSet,
    TagTerm,
    Wildcard,
    parse,
    to_sexp,
)
from app.query.ast import make_and, make_not, make_or
from app.query.metatags import SINGLETON_METATAGS
from tests.support.paths import shared_path

SYNTAX = ErrorCode.SYNTAX
UNBALANCED = ErrorCode.UNBALANCED_PARENS
UNKNOWN = ErrorCode.UNKNOWN_METATAG
BAD = ErrorCode.BAD_VALUE
CONFLICT = ErrorCode.CONFLICTING_SINGLETON
MISUSE = ErrorCode.SINGLETON_MISUSE
TOO_MANY = ErrorCode.TOO_MANY_TERMS
TOO_DEEP = ErrorCode.TOO_DEEP
UNTERMINATED = ErrorCode.UNTERMINATED_QUOTE


def sexp(text: str) -> str:
    return to_sexp(parse(text).root)


def error_of(text: str, **limits: int) -> tuple[str, int]:
    with pytest.raises(QueryError) as caught:
        parse(text, **limits)
    return caught.value.code, caught.value.position


def ints(*ranges: Range[int]) -> RangeSet[int]:
    return RangeSet(ranges)


def point(value: int) -> Range[int]:
    return Range(value, value)


# ---------------------------------------------------------------------------------------
# The grammar document's conformance vectors, verbatim.

CONFORMANCE = [
    ("", "all"),
    (" ", "all"),
    ("A", "a"),
    ("foo_(bar)", "foo_(bar)"),
    ("(foo_(bar))", "foo_(bar)"),
    ("((foo_(bar)))", "foo_(bar)"),
    ("abc_(def) ghi", "(and abc_(def) ghi)"),
    ("(abc_(def) ghi)", "(and abc_(def) ghi)"),
    (":)", ":)"),
    ("(:))", ":)"),
    ("(:) >:))", "(and :) >:))"),
    ("(*)", "(wildcard *)"),
    ("foo*) bar", "(and bar (wildcard foo*)))"),
    ("a b", "(and a b)"),
    ("a and b", "(and a b)"),
    ("a AND b", "(and a b)"),
    ("(a) (b)", "(and a b)"),
    ("a or b", "(or a b)"),
    ("~a ~b", "(or a b)"),
    ("-a", "(not a)"),
    ("a -b", "(and a (not b))"),
    ("a or (b or (c or d))", "(or a b c d)"),
    ("~a", "a"),
    ("~(~(~a))", "a"),
    ("~(-a)", "(not a)"),
    ("-(~a)", "(not a)"),
    ("a ~b", "(and a b)"),
    ("~(a b)", "(and a b)"),
    ("~a ~b and ~c ~d", "(and (or a b) (or c d))"),
    ("(~a ~b) (~c ~d)", "(and (or a b) (or c d))"),
    ("~a ~b or ~c ~d", "(or a b c d)"),
    ("(a b) or (c d)", "(or (and a b) (and c d))"),
    ("a ~b ~c ~d", "(and a (or b c d))"),
    ("-(-a)", "a"),
    ("-(a b)", "(not (and a b))"),
    ("-(a or b)", "(not (or a b))"),
    ("a or (b c)", "(or a (and b c))"),
    ("a\tb\nc\u3000d", "(and a b c d)"),
]


@pytest.mark.parametrize(("text", "expected"), CONFORMANCE)
def test_conformance_vectors(text: str, expected: str) -> None:
    assert sexp(text) == expected


# "none" in the document: Sagashi raises instead, with a code and a position.
CONFORMANCE_ERRORS = [
    ("(:)", UNBALANCED, 0),
    ("(", UNBALANCED, 0),
    (")", UNBALANCED, 0),
    ("-", SYNTAX, 0),
    ("~", SYNTAX, 0),
    ("(a", UNBALANCED, 0),
    (")a", UNBALANCED, 0),
    ("-~a", SYNTAX, 1),
    ("~-a", SYNTAX, 1),
    ("~~a", SYNTAX, 1),
    ("--a", SYNTAX, 1),
    ("and", SYNTAX, 0),
    ("or", SYNTAX, 0),
    ("a and", SYNTAX, 2),
    ("a or", SYNTAX, 2),
    ("and a", SYNTAX, 0),
    ("or a", SYNTAX, 0),
    ("a -", SYNTAX, 2),
    ("a ~", SYNTAX, 2),
    ("(a b", UNBALANCED, 0),
    ("(a (b)", UNBALANCED, 0),
]


@pytest.mark.parametrize(("text", "code", "position"), CONFORMANCE_ERRORS)
def test_conformance_errors(text: str, code: str, position: int) -> None:
    assert error_of(text) == (code, position)


# The document's quoted-value vectors use Danbooru's source:, which Sagashi lacks. The same
# forms with path: give the value "foo bar"; the source: forms are unknown_metatag errors.
@pytest.mark.parametrize("text", ['path:"foo bar"', "path:'foo bar'", "path:foo\\ bar"])
def test_conformance_quoted_values(text: str) -> None:
    root = parse(text).root
    assert root == Meta("path", "foo bar")
    assert to_sexp(root) == 'path:"foo bar"'


@pytest.mark.parametrize(
    "text", ['source:"foo bar"', "source:'foo bar'", "source:foo\\ bar", 'source:"foo']
)
def test_conformance_source_metatag_is_reported_as_unsupported(text: str) -> None:
    assert error_of(text) == (UNKNOWN, 0)


def test_conformance_unterminated_quote() -> None:
    assert error_of('path:"foo') == (UNTERMINATED, 5)


# The document's worked examples, evaluated by a tiny in-memory matcher over the tree.
def matches(node: Node, tags: set[str]) -> bool:
    if isinstance(node, All):
        return True
    if isinstance(node, TagTerm):
        return node.name in tags
    if isinstance(node, Wildcard):
        pattern = re.compile(".*".join(map(re.escape, node.pattern.split("*"))))
        return any(pattern.fullmatch(tag) for tag in tags)
    if isinstance(node, Not):
        return not matches(node.child, tags)
    if isinstance(node, And):
        return all(matches(child, tags) for child in node.children)
    if isinstance(node, Or):
        return any(matches(child, tags) for child in node.children)
    raise AssertionError(f"no metatags in these fixtures: {node}")


THREE_IMAGES = {1: {"aaa"}, 2: {"aaab", "bbb"}, 3: {"bbb", "ccc"}}
FOUR_IMAGES = {1: {"a", "c"}, 2: {"b", "d"}, 3: {"a"}, 4: {"d"}}


@pytest.mark.parametrize(
    ("images", "text", "expected"),
    [
        (THREE_IMAGES, "a*", {1, 2}),
        (THREE_IMAGES, "-a*", {3}),
        (THREE_IMAGES, "a* -*b", {1}),
        (THREE_IMAGES, "~aaa ~ccc", {1, 3}),
        (THREE_IMAGES, "aaa -bbb", {1}),
        (FOUR_IMAGES, "(a or b) (c or d)", {1, 2}),
        (FOUR_IMAGES, "(~a ~b) (~c ~d)", {1, 2}),
        (FOUR_IMAGES, "a c or b d", {1, 2}),
        (FOUR_IMAGES, "", {1, 2, 3, 4}),
    ],
)
def test_worked_examples(images: dict[int, set[str]], text: str, expected: set[int]) -> None:
    root = parse(text).root
    assert {image for image, tags in images.items() if matches(root, tags)} == expected


def test_aliases_are_left_to_the_executor() -> None:
    assert sexp("kitten") == "kitten"
    assert sexp("-kitten") == "(not kitten)"
    assert parse("unaliased:Kitten").root == Meta("unaliased", "kitten")


# ---------------------------------------------------------------------------------------
# Operators, precedence, ~, normalisation.

SYNTAX_CASES = [
    ("a or b c or d", "(or a d (and b c))"),
    ("a b or c", "(or c (and a b))"),
    ("a or b and c", "(or a (and b c))"),
    ("a and b or c and d", "(or (and a b) (and c d))"),
    ("a and (b or c)", "(and a (or b c))"),
    ("((a or b)) c", "(and c (or a b))"),
    ("A OR B", "(or a b)"),
    ("a Or b", "(or a b)"),
    ("a aNd b", "(and a b)"),
    ("-a -b", "(and (not a) (not b))"),
    ("-(a -b)", "(not (and a (not b)))"),
    ("-(-(-a))", "(not a)"),
    ("a -(-(b))", "(and a b)"),
    ("-(a) -(b)", "(and (not a) (not b))"),
    ("(a b) (c (d e))", "(and a b c d e)"),
    ("a or (b or c) or (d or (e))", "(or a b c d e)"),
    ("a and b and c", "(and a b c)"),
    ("a a", "a"),
    ("a A", "a"),
    ("a or a", "a"),
    ("(a b) (b a)", "(and a b)"),
    ("~a ~b ~c", "(or a b c)"),
    ("~a b ~c", "(and b (or a c))"),
    ("x ~a (~b ~c)", "(and a x (or b c))"),
    ("~a ~(b c)", "(or a (and b c))"),
    ("~a or b", "(or a b)"),
    ("~a ~b -c", "(and (not c) (or a b))"),
    # As in Danbooru, a word runs to the next space; only its trailing ')' can close.
    ("(a)(b)", "a)(b"),
    ("(a) (b)", "(and a b)"),
    ("a(b)", "a(b)"),
    ("a or(b)", "(and a or(b))"),
    ("andy or orange", "(or andy orange)"),
    ("-andy", "(not andy)"),
    ("a-b c~d", "(and a-b c~d)"),
    ("  a   b  ", "(and a b)"),
]


@pytest.mark.parametrize(("text", "expected"), SYNTAX_CASES)
def test_operators_and_precedence(text: str, expected: str) -> None:
    assert sexp(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("foo_(bar) baz_(qux)", "(and baz_(qux) foo_(bar))"),
        ("hu_tao_(genshin_impact)", "hu_tao_(genshin_impact)"),
        ("(hu_tao_(genshin_impact) solo)", "(and hu_tao_(genshin_impact) solo)"),
        ("(hu_tao_(genshin_impact))", "hu_tao_(genshin_impact)"),
        (":(", ":("),
        (";)", ";)"),
        (";(", ";("),
        (">:)", ">:)"),
        (">:(", ">:("),
        ("(;))", ";)"),
        ("(;( )", ";("),
        ("(>:( a)", "(and >:( a)"),
        ("(a :))", "(and :) a)"),
        ("a) b", "(and a) b)"),
        ("(a) b)", "(and a b))"),
        ("(a))", "a)"),
        ("(a(b))", "a(b)"),
        ("((a(b)))", "a(b)"),
        ("((a) (b))", "(and a b)"),
        ("(rem_(re:zero))", "rem_(re:zero)"),
    ],
)
def test_tags_that_look_like_syntax(text: str, expected: str) -> None:
    assert sexp(text) == expected


@pytest.mark.parametrize(
    ("text", "code", "position"),
    [
        # A word that is balanced as a whole keeps its ')', as in Danbooru.
        ("(:()", UNBALANCED, 0),
        ("(>:()", UNBALANCED, 0),
        ("()", SYNTAX, 1),
        ("a ()", SYNTAX, 3),
        ("(a or)", SYNTAX, 3),
        ("(and a)", SYNTAX, 1),
        ("a or or b", SYNTAX, 2),
        ("a and or b", SYNTAX, 2),
        ("a or and b", SYNTAX, 2),
        ("a and and b", SYNTAX, 2),
        ("-and", SYNTAX, 1),
        ("~or a", SYNTAX, 1),
        ("- a", SYNTAX, 0),
        ("a - b", SYNTAX, 2),
        ("-)", SYNTAX, 0),
        ("(a -)", SYNTAX, 3),
        ("~-(a)", SYNTAX, 1),
        ("a ~~b", SYNTAX, 3),
        ("(a) )", UNBALANCED, 4),
        ("(a)b", UNBALANCED, 0),
        ("(a)-b", UNBALANCED, 0),
        ("a )", UNBALANCED, 2),
        ("((a)", UNBALANCED, 0),
        ("(a (b", UNBALANCED, 3),
        ("(a or", SYNTAX, 3),
        ("(a\u3000", UNBALANCED, 0),
    ],
)
def test_syntax_errors(text: str, code: str, position: int) -> None:
    assert error_of(text) == (code, position)


def test_tree_keeps_source_order_and_sexp_sorts() -> None:
    root = parse("b a").root
    assert root == And((TagTerm("b"), TagTerm("a")))
    assert to_sexp(root) == "(and a b)"


def test_tilde_group_takes_the_place_of_its_first_member() -> None:
    root = parse("x ~b y ~a").root
    assert root == And((TagTerm("x"), Or((TagTerm("b"), TagTerm("a"))), TagTerm("y")))


def test_term_positions() -> None:
    root = parse("a  -b  (C,0.5) path:x").root
    assert isinstance(root, And)
    first, negated, scored, meta = root.children
    assert isinstance(first, TagTerm) and first.position == 0
    assert isinstance(negated, Not) and isinstance(negated.child, TagTerm)
    assert negated.child.position == 4
    assert isinstance(scored, TagTerm) and scored.position == 8
    assert isinstance(meta, Meta) and meta.position == 15


def test_positions_and_raw_values_do_not_affect_equality() -> None:
    assert parse("a b") == parse("  a   b")
    assert parse("rating:g") == parse("rating:general")
    assert parse("rating:g").root != parse("rating:s").root


def test_nodes_are_frozen_and_hashable() -> None:
    query = parse("a -b (c or d*) rating:g,e width:>5 order:id limit:5")
    assert hash(query) == hash(parse("a -b (c or d*) rating:g,e width:>5 order:id limit:5"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        query.root = ALL  # type: ignore[misc]


def test_smart_constructors_normalise() -> None:
    a, b, c = TagTerm("a"), TagTerm("b"), TagTerm("c")
    assert make_and([]) == ALL
    assert make_and([ALL, a]) == a
    assert make_and([And((a, b)), c, a]) == And((a, b, c))
    assert make_or([a, Or((b, c)), b]) == Or((a, b, c))
    assert make_or([a, ALL]) == ALL
    assert make_or([a]) == a
    assert make_not(make_not(a)) == a
    assert make_not(And((a, b))) == Not(And((a, b)))


def test_to_sexp_forms() -> None:
    assert to_sexp(ALL) == "all"
    assert to_sexp(TagTerm("a", Range(lo=0.5))) == "a,>=0.5"
    assert to_sexp(Wildcard("a*", Range(0.5, 0.8))) == "(wildcard a*,0.5..0.8)"
    assert to_sexp(Meta("path", "x", raw='a"b\\c')) == 'path:"a\\"b\\\\c"'
    assert to_sexp(Meta("path", "", raw="")) == 'path:""'
    assert to_sexp(Meta("path", "(x)", raw="(x)")) == 'path:"(x)"'
    mixed = Or((Not(TagTerm("z")), Wildcard("y*"), Meta("rating", ("g",), raw="g"), TagTerm("x")))
    assert to_sexp(mixed) == "(or x rating:g (wildcard y*) (not z))"


# ---------------------------------------------------------------------------------------
# Wildcards, case, whitespace.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", Wildcard("*")),
        ("Foo*", Wildcard("foo*")),
        ("*foo*", Wildcard("*foo*")),
        ("blue_*,>=0.5", Wildcard("blue_*", Range(lo=0.5))),
        ("-a*", Not(Wildcard("a*"))),
        ("~a* ~b*", Or((Wildcard("a*"), Wildcard("b*")))),
        ("a* b", And((Wildcard("a*"), TagTerm("b")))),
    ],
)
def test_wildcards(text: str, expected: Node) -> None:
    assert parse(text).root == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hu_Tao_(Genshin_Impact)", TagTerm("hu_tao_(genshin_impact)")),
        ("ÀÉÎ", TagTerm("àéî")),
        ("PATH:Foo/BAR.png", Meta("path", "Foo/BAR.png")),
        ("Width:5", Meta("width", ints(point(5)))),
        ("RATING:E", Meta("rating", ("e",))),
        ("1GIRL,>=0.9", TagTerm("1girl", Range(lo=0.9))),
    ],
)
def test_case(text: str, expected: Node) -> None:
    assert parse(text).root == expected


def test_metatag_values_keep_their_case() -> None:
    root = parse("PATH:Foo/BAR.png").root
    assert isinstance(root, Meta) and root.raw == "Foo/BAR.png"


UNICODE_SPACES = [chr(code) for code in range(0x110000) if chr(code).isspace()]
INVISIBLE_SEPARATORS = ["\u180e", "\u200b", "\u2060", "\ufeff"]


def test_whitespace_set_includes_the_usual_suspects() -> None:
    named = "\t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    expected = set(named) | {chr(code) for code in range(0x2000, 0x200B)}
    assert expected <= set(UNICODE_SPACES)


@pytest.mark.parametrize(
    "space", UNICODE_SPACES + INVISIBLE_SEPARATORS, ids=lambda ch: f"U+{ord(ch):04X}"
)
def test_every_unicode_space_separates_terms(space: str) -> None:
    assert sexp(f"{space}a{space}b{space}-c{space}") == "(and a b (not c))"
    assert parse(f"path:a\\{space}b").root == Meta("path", f"a{space}b")
    assert parse(f'path:"a{space}b"').root == Meta("path", f"a{space}b")
    assert error_of(f"-{space}a") == (SYNTAX, 0)


# ---------------------------------------------------------------------------------------
# Confidence thresholds: a bare number is a lower bound; 1 < n <= 100 is a percentage.

THRESHOLDS = [
    ("1girl,>=0.9", "1girl,>=0.9"),
    ("solo,0.5..0.8", "solo,0.5..0.8"),
    ("-blush,>=0.2", "(not blush,>=0.2)"),
    ("1girl,>0.5", "1girl,>0.5"),
    ("1girl,<=0.3", "1girl,<=0.3"),
    ("1girl,<0.3", "1girl,<0.3"),
    ("1girl,0.5..", "1girl,>=0.5"),
    ("1girl,..0.4", "1girl,<=0.4"),
    ("1girl,0.5...0.8", "1girl,0.5...0.8"),
    ("1girl,0.8", "1girl,>=0.8"),
    ("1girl,.8", "1girl,>=0.8"),
    ("1girl,0", "1girl,>=0.0"),
    ("1girl,1", "1girl,>=1.0"),
    ("1girl,>=90", "1girl,>=0.9"),
    ("1girl,80", "1girl,>=0.8"),
    ("1girl,100", "1girl,>=1.0"),
    ("1girl,50..80", "1girl,0.5..0.8"),
    ("(1girl,>=0.9)", "1girl,>=0.9"),
    ("(foo_(bar),0.5)", "foo_(bar),>=0.5"),
    ("(:),0.5)", ":),>=0.5"),
    ("~a,0.5 ~b,0.6", "(or a,>=0.5 b,>=0.6)"),
    ("*,0.5", "(wildcard *,>=0.5)"),
    ("a,b,0.5", "a,b,>=0.5"),
    # What follows the last comma does not look like a threshold: part of the name.
    ("a,_b", "a,_b"),
    ("1girl,", "1girl,"),
    ("1girl,abc", "1girl,abc"),
    ("1girl,x..0.5", "1girl,x..0.5"),
    ("1girl,-0.5", "1girl,-0.5"),
    ("a,0.5,_b", "a,0.5,_b"),
]


@pytest.mark.parametrize(("text", "expected"), THRESHOLDS)
def test_thresholds(text: str, expected: str) -> None:
    assert sexp(text) == expected


def test_threshold_nodes() -> None:
    assert parse("1girl,0.8").root == TagTerm("1girl", Range(lo=0.8))
    assert parse("1girl,0.5...0.8").root == TagTerm("1girl", Range(0.5, 0.8, hi_inclusive=False))
    assert parse("1girl").root == TagTerm("1girl", None)
    assert parse("a*").root == Wildcard("a*", None)


@pytest.mark.parametrize(
    ("text", "code", "position"),
    [
        ("1girl,150", BAD, 6),
        ("1girl,=0.5", BAD, 6),
        ("1girl,>=", BAD, 8),
        ("1girl,>=150", BAD, 8),
        ("1girl,0.8..0.5", BAD, 6),
        ("1girl,0.5..x", BAD, 11),
        ("1girl,..", BAD, 6),
        ("a 1girl,.", BAD, 8),
        ("1girl,1e-3", BAD, 6),
        ("1girl,0.5,0.6", BAD, 6),
        ("(a 1girl,>=2000)", BAD, 11),
        ("-x*,<", BAD, 5),
        (",0.5", SYNTAX, 0),
        ("a -,0.5", SYNTAX, 3),
        ("and,0.5", SYNTAX, 0),
        ("OR,0.5", SYNTAX, 0),
    ],
)
def test_threshold_errors(text: str, code: str, position: int) -> None:
    assert error_of(text) == (code, position)


# ---------------------------------------------------------------------------------------
# Metatags: every name, every value form.

MIB = 1024 * 1024
METATAG_VALUES = [
    ("rating:g", ("g",)),
    ("rating:general", ("g",)),
    ("rating:S", ("s",)),
    ("rating:sensitive", ("s",)),
    ("rating:questionable", ("q",)),
    ("rating:explicit", ("e",)),
    ("rating:g,s", ("g", "s")),
    ("rating:e,g,general", ("g", "e")),
    ("width:>=1000", ints(Range(lo=1000))),
    ("height:..500", ints(Range(hi=500))),
    ("width:5,6,7", ints(point(5), point(6), point(7))),
    ("height:<=1,>=3", ints(Range(hi=1), Range(lo=3))),
    ("width:5...10", ints(Range(5, 10, hi_inclusive=False))),
    ("mpixels:1.5..", RangeSet((Range(lo=1.5),))),
    ("mpixels:2", RangeSet((Range(2.0, 2.0),))),
    ("filesize:100", ints(point(100))),
    ("filesize:10b", ints(point(10))),
    ("filesize:2mb", ints(point(2 * MIB))),
    ("filesize:500kb..1.5M", ints(Range(500 * 1024, 3 * MIB // 2))),
    ("filesize:>1MiB", ints(Range(lo=MIB, lo_inclusive=False))),
    ("filesize:1g", ints(point(1024 * MIB))),
    ("filesize:2K", ints(point(2048))),
    ("ratio:16:9", RangeSet((Range(1.78, 1.78),))),
    ("ratio:16/9", RangeSet((Range(1.78, 1.78),))),
    ("ratio:1.78", RangeSet((Range(1.78, 1.78),))),
    ("ratio:1.777", RangeSet((Range(1.78, 1.78),))),
    ("ratio:4:3..16:9", RangeSet((Range(1.33, 1.78),))),
    ("ratio:>1", RangeSet((Range(lo=1.0, lo_inclusive=False),))),
    ("date:2024-01-31", RangeSet((Range(date(2024, 1, 31), date(2024, 1, 31)),))),
    ("date:2024-01-01..2024-01-31", RangeSet((Range(date(2024, 1, 1), date(2024, 1, 31)),))),
    ("date:>=2024-01-01", RangeSet((Range(lo=date(2024, 1, 1)),))),
    ("date:<2024-01-01", RangeSet((Range(hi=date(2024, 1, 1), hi_inclusive=False),))),
    ("age:<1d", RangeSet((Range(hi=timedelta(days=1), hi_inclusive=False),))),
    ("age:>2w", RangeSet((Range(lo=timedelta(weeks=2), lo_inclusive=False),))),
    ("age:1mo..1y", RangeSet((Range(timedelta(days=30), timedelta(days=365)),))),
    ("age:30s", RangeSet((Range(timedelta(seconds=30), timedelta(seconds=30)),))),
    ("age:<5mi", RangeSet((Range(hi=timedelta(minutes=5), hi_inclusive=False),))),
    ("age:<5min", RangeSet((Range(hi=timedelta(minutes=5), hi_inclusive=False),))),
    ("age:..1.5h", RangeSet((Range(hi=timedelta(minutes=90)),))),
    ("age:<1D", RangeSet((Range(hi=timedelta(days=1), hi_inclusive=False),))),
    ("id:1,2", ints(point(1), point(2))),
    ("id:100..", ints(Range(lo=100))),
    ("tagcount:>5", ints(Range(lo=5, lo_inclusive=False))),
    ("gentags:1", ints(point(1))),
    ("chartags:0", ints(point(0))),
    ("copytags:..3", ints(Range(hi=3))),
    ("filetype:png", ("png",)),
    ("filetype:PNG,jpg", ("jpg", "png")),
    ("filetype:webp,png,webp", ("png", "webp")),
    ("sha256:" + "AB" * 32, "ab" * 32),
    ("md5:d41d8cd98f00b204e9800998ecf8427e", "d41d8cd98f00b204e9800998ecf8427e"),
    ("path:C:/Pics/*.PNG", "C:/Pics/*.PNG"),
    ("path:*/*", "*/*"),
    ("path:", ""),
    ('path:""', ""),
    ("path:''", ""),
    ('path:"a\\"b"', 'a"b'),
    ("path:'it\\'s'", "it's"),
    ('path:"a\\\\b"', "a\\b"),
    ("path:a\\b", "a\\b"),
    ("path:a\\ b\\ c", "a b c"),
    ('path:"(x) or y"', "(x) or y"),
    ("path:'say \"hi\"'", 'say "hi"'),
    ("unaliased:Kitten", "kitten"),
    ("unimplied:Skirt", "skirt"),
]


@pytest.mark.parametrize(("text", "value"), METATAG_VALUES)
def test_metatag_values(text: str, value: object) -> None:
    root = parse(text).root
    assert isinstance(root, Meta)
    assert root.name == text.split(":")[0].lower()
    assert root.value == value


def test_every_known_metatag_is_covered() -> None:
    tested = {text.split(":")[0] for text, _ in METATAG_VALUES}
    tested |= {"order", "limit", "similar"}
    assert tested == KNOWN_METATAGS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(path:a_(b) x)", '(and x path:"a_(b)")'),
        ("(path:a_(b))", 'path:"a_(b)"'),
        ("(rating:s)", "rating:s"),
        ("(path:)", 'path:""'),
        ('(path:"a b")', 'path:"a b"'),
        ('(path:"a b" x)', '(and x path:"a b")'),
        ("-rating:e", "(not rating:e)"),
        ("~rating:q ~rating:e", "(or rating:e rating:q)"),
        ("width:5 width:6", "(and width:5 width:6)"),
    ],
)
def test_metatags_in_expressions(text: str, expected: str) -> None:
    assert sexp(text) == expected


METATAG_ERRORS = [
    ("rating:x", BAD, 7),
    ("rating:g,x", BAD, 9),
    ("rating:", BAD, 7),
    ("rating:g,", BAD, 9),
    ("width:", BAD, 6),
    ("width:abc", BAD, 6),
    ("width:5..3", BAD, 6),
    ("width:>", BAD, 7),
    ("width:..", BAD, 6),
    ("width:1,5..3", BAD, 8),
    ("height:1.5", BAD, 7),
    ("mpixels:x", BAD, 8),
    ("filesize:2tb", BAD, 9),
    ("filesize:mb", BAD, 9),
    ("ratio:16:0", BAD, 6),
    ("ratio:a:b", BAD, 6),
    ("ratio:1:2:3", BAD, 6),
    ("date:2024-13-01", BAD, 5),
    ("date:2024-02-30", BAD, 5),
    ("date:24-01-01", BAD, 5),
    ("date:yesterday", BAD, 5),
    ("date:2024-01-01..2023-01-01", BAD, 5),
    ("date:2024-01-01..2024-02-30", BAD, 17),
    ("age:5m", BAD, 4),
    ("age:1x", BAD, 4),
    ("age:d", BAD, 4),
    ("age:2w..1d", BAD, 4),
    ("age:<999999999y", BAD, 5),
    ("id:-1", BAD, 3),
    ("id:invaded", BAD, 3),
    ("tagcount:1.5", BAD, 9),
    ("gentags:x", BAD, 8),
    ("chartags:", BAD, 9),
    ("copytags:<", BAD, 10),
    ("filetype:", BAD, 9),
    ("filetype:png,", BAD, 13),
    ("filetype:.png", BAD, 9),
    ("filetype:p-g", BAD, 9),
    ("sha256:abc", BAD, 7),
    ("sha256:" + "g" * 64, BAD, 7),
    ("md5:" + "0" * 31, BAD, 4),
    ("unaliased:", BAD, 10),
    ("unaliased:a*", BAD, 10),
    ("unimplied:", BAD, 10),
    ('unimplied:"a b"', BAD, 11),
    ('unaliased:"a b"', BAD, 11),
    ("limit:0", BAD, 6),
    ("limit:1001", BAD, 6),
    ("limit:x", BAD, 6),
    ("limit:>5", BAD, 6),
    ("limit:", BAD, 6),
    ("similar:0", BAD, 8),
    ("similar:x", BAD, 8),
    ("order:foo", BAD, 6),
    ("order:", BAD, 6),
    ("order:score:", BAD, 12),
    ("order:score:a*", BAD, 12),
    ("width:5 rating:x", BAD, 15),
    # Positions count the characters as typed, escapes included.
    ('rating:"\\g,x"', BAD, 11),
    ("rating:'g,x'", BAD, 10),
    ('path:"foo', UNTERMINATED, 5),
    ("path:'foo", UNTERMINATED, 5),
    ('a path:"foo\\"', UNTERMINATED, 7),
    ("path:'foo\"", UNTERMINATED, 5),
    ('path:"a"b', SYNTAX, 8),
    ('path:"a b")', UNBALANCED, 10),
]


@pytest.mark.parametrize(("text", "code", "position"), METATAG_ERRORS)
def test_metatag_errors(text: str, code: str, position: int) -> None:
    assert error_of(text) == (code, position)


@pytest.mark.parametrize(("name", "expected"), sorted(ORDERS.items()))
def test_every_order(name: str, expected: Order) -> None:
    text = f"order:{name}" + (" similar:7" if name == "similarity" else "")
    assert parse(text).order == expected
    assert parse(f"order:{name.upper()} similar:7").order == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("order:id", Order("id", descending=False)),
        ("order:id_desc", Order("id", descending=True)),
        ("order:tagcount", Order("tagcount", descending=True)),
        ("order:score:1girl", Order("score", descending=True, tag="1girl")),
        ("order:score:1GIRL", Order("score", descending=True, tag="1girl")),
        ("order:score:hu_tao_(genshin_impact)", Order("score", True, "hu_tao_(genshin_impact)")),
    ],
)
def test_order_values(text: str, expected: Order) -> None:
    assert parse(text).order == expected


# ---------------------------------------------------------------------------------------
# Unknown metatags versus real tags that contain a colon.


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("ratng:s", 0),
        ("widht:>100", 0),
        ("ratings:g", 0),
        ("heigth:5", 0),
        ("limt:5", 0),
        ("ordr:random", 0),
        ("odrer:id", 0),
        ("md4:" + "0" * 32, 0),
        ("sha265:" + "0" * 64, 0),
        ("a -ratng:s", 3),
        ("(ratng:s)", 1),
        ("source:foo", 0),
        ("Source:x", 0),
        ("user:bob", 0),
        ("score:>10", 0),
        ("fav:me", 0),
        ("pool:123", 0),
        ("status:active", 0),
        ('foo:"a b"', 0),
        ("foo_bar:'x'", 0),
    ],
)
def test_unknown_metatags(text: str, position: int) -> None:
    assert error_of(text) == (UNKNOWN, position)


def test_unknown_metatag_message_suggests_the_known_name() -> None:
    with pytest.raises(QueryError) as caught:
        parse("ratng:s")
    assert "rating:" in caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        "re:zero_kara_hajimeru_isekai_seikatsu",
        "re:creators",
        ":d",
        ":3",
        ";d",
        "d:",
        "x:",
        ":",
        "::",
        "16:9",
        "a:b:c",
        "fate:lost_einherjar",
        "id_:_invaded",
        "ratng:xyz",
        "star_wars:_the_clone_wars",
        "nier:automata",
        "steins;gate",
        '16:"9"',
    ],
)
def test_tags_with_colons_stay_tags(text: str) -> None:
    assert parse(text).root == TagTerm(text)


@pytest.mark.shared_data
def test_real_danbooru_tags_parse_as_themselves() -> None:
    """Every Danbooru tag with syntax-like characters searches as itself, or is documented.

    Known limitation, shared with Danbooru: a tag starting with '(' opens a group.
    """
    path = shared_path("tags", "bercraft_danbooru_2025-05-01_pt25-ia-dd.csv")
    with path.open(encoding="utf-8", newline="") as handle:
        names = [row[0] for row in csv.reader(handle)]
    tricky = [name for name in names if re.search(r"[:()*,\"'\\~<>=.;-]", name)]
    assert len(tricky) > 1000
    failures = []
    for name in tricky:
        try:
            root: Node | str = parse(name).root
        except QueryError as exc:
            root = exc.code
        if root not in (TagTerm(name.lower()), Wildcard(name.lower())):
            failures.append(name)
    assert all(name.startswith("(") for name in failures), failures


# ---------------------------------------------------------------------------------------
# Singletons: order:, limit:, similar:.


@pytest.mark.parametrize(
    ("text", "root", "order", "limit", "similar"),
    [
        ("order:id a", "a", Order("id", False), None, None),
        ("a limit:5", "a", None, 5, None),
        ("limit:5 limit:5", "all", None, 5, None),
        ("limit:5 a limit:05", "a", None, 5, None),
        ("order:id order:id_asc", "all", Order("id", False), None, None),
        ("similar:12 a", "a", None, None, 12),
        ("order:id", "all", Order("id", False), None, None),
        ("(a order:id) b", "(and a b)", Order("id", False), None, None),
        ("(order:id)", "all", Order("id", False), None, None),
        ("a and limit:3", "a", None, 3, None),
        ("order:id (a or b)", "(or a b)", Order("id", False), None, None),
        ("a b limit:10 order:random similar:3", "(and a b)", Order("random", False), 10, 3),
        ("similar:5 order:similarity", "all", Order("similarity", True), None, 5),
        ("limit:1000", "all", None, 1000, None),
    ],
)
def test_singletons_are_pulled_out(
    text: str, root: str, order: Order | None, limit: int | None, similar: int | None
) -> None:
    query = parse(text)
    assert (to_sexp(query.root), query.order, query.limit, query.similar) == (
        root,
        order,
        limit,
        similar,
    )


@pytest.mark.parametrize(
    ("text", "code", "position"),
    [
        ("-order:id", MISUSE, 1),
        ("~order:id", MISUSE, 1),
        ("-limit:5", MISUSE, 1),
        ("~similar:3 a", MISUSE, 1),
        ("-(a order:id)", MISUSE, 4),
        ("~(a limit:5)", MISUSE, 4),
        ("-(-order:id)", MISUSE, 3),
        ("a or order:id", MISUSE, 5),
        ("order:id or a", MISUSE, 0),
        ("order:id or order:id", MISUSE, 0),
        ("(a or (b limit:5)) c", MISUSE, 9),
        ("~a ~order:id", MISUSE, 4),
        ("a or similar:3", MISUSE, 5),
        ("order:id order:random", CONFLICT, 9),
        ("limit:5 limit:6", CONFLICT, 8),
        ("similar:1 similar:2", CONFLICT, 10),
        ("a limit:5 b limit:6 limit:7", CONFLICT, 12),
        ("order:similarity", BAD, 0),
        ("a order:similarity", BAD, 2),
    ],
)
def test_singleton_errors(text: str, code: str, position: int) -> None:
    assert error_of(text) == (code, position)


def test_singletons_never_stay_in_the_tree() -> None:
    assert {"order", "limit", "similar"} == SINGLETON_METATAGS
    query = parse("a order:id limit:5 similar:2 b")
    assert query == Query(And((TagTerm("a"), TagTerm("b"))), Order("id", False), 5, 2)


def test_max_limit_is_configurable() -> None:
    assert parse("limit:2000", max_limit=5000).limit == 2000
    assert error_of("limit:20", max_limit=10) == (BAD, 6)


# ---------------------------------------------------------------------------------------
# Bounds: terms, depth, huge inputs.


def test_max_terms_counts_tags_wildcards_and_metatags() -> None:
    assert parse(" ".join(["a"] * 100)).root == TagTerm("a")
    assert error_of(" ".join(["a"] * 101)) == (TOO_MANY, 200)
    assert error_of("a b* rating:g", max_terms=2) == (TOO_MANY, 5)
    assert error_of("a " * 99 + "rating:g limit:5") == (TOO_MANY, 207)
    assert parse("-(a) or ~(b) and (c)", max_terms=3).root is not None


def test_max_depth() -> None:
    assert sexp("(" * 64 + "a" + ")" * 64) == "a"
    assert error_of("(" * 65 + "a" + ")" * 65) == (TOO_DEEP, 64)
    assert error_of("((( a )))", max_depth=2) == (TOO_DEEP, 2)
    assert error_of("-(" * 100 + "a" + ")" * 100) == (TOO_DEEP, 129)
    with pytest.raises(ValueError):
        parse("a", max_depth=0)
    with pytest.raises(ValueError):
        parse("a", max_depth=101)


def test_the_deepest_allowed_nesting_fits_the_stack() -> None:
    text = "-(a " * 100 + "~b ~c" + ")" * 100
    root = parse(text, max_depth=100, max_terms=200).root
    assert to_sexp(root).count("(not (and a") == 100


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("a or " * 10_000 + "a", TOO_MANY),
        ("~a " * 10_000, TOO_MANY),
        ("width:1 " * 10_000, TOO_MANY),
        ("(" * 10_000 + "a" + ")" * 10_000, TOO_DEEP),
        ("-(" * 10_000 + "a" + ")" * 10_000, TOO_DEEP),
        (")" * 10_000, UNBALANCED),
        ('path:"' + "\\\\" * 100_000, UNTERMINATED),
        ("a " * 10_000 + "(", TOO_MANY),
    ],
)
def test_huge_inputs_are_refused_with_the_limit_error(text: str, code: str) -> None:
    # Speed is measured in bench/, not here; this pins the typed error and that the
    # parser neither recurses without bound nor raises anything else.
    assert error_of(text)[0] == code


@pytest.mark.parametrize(
    "text",
    [
        "x" * 1_000_000,
        "(" * 64 + "a" * 1_000_000 + ")" * 64,
        "(" * 64 + "a" + ")" * 1_000_000,
        "(" * 64 + "a" + "()" * 250_000 + ")" * 64,
        "a," * 100_000 + "0.5",
        "path:" + "\\ " * 200_000,
    ],
    ids=["long-tag", "long-tag-in-groups", "many-parens", "paren-tag", "commas", "escapes"],
)
def test_huge_single_terms_parse_or_raise_the_typed_error(text: str) -> None:
    with contextlib.suppress(QueryError):
        parse(text)


# ---------------------------------------------------------------------------------------
# The error type.


def test_query_error_carries_code_message_position() -> None:
    with pytest.raises(QueryError) as caught:
        parse("a (b")
    error = caught.value
    assert error.code == "unbalanced_parens"
    assert error.position == 2
    assert "never closed" in error.message
    assert "at character 2" in str(error)
    assert error.as_dict() == {
        "code": "unbalanced_parens",
        "message": error.message,
        "position": 2,
    }
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message, copy.position) == (error.code, error.message, 2)


def test_every_error_code_is_reachable() -> None:
    samples = {
        "(": UNBALANCED,
        "a or": SYNTAX,
        "ratng:s": UNKNOWN,
        "width:x": BAD,
        "limit:1 limit:2": CONFLICT,
        "-limit:1": MISUSE,
        "a " * 101: TOO_MANY,
        "(" * 65: TOO_DEEP,
        'path:"': UNTERMINATED,
        "path:a\x00": ErrorCode.BAD_CHARACTER,
    }
    # "unsupported" comes from the search binder, not the parser (tests/app/search/).
    assert {code for code in samples.values()} == set(ErrorCode) - {ErrorCode.UNSUPPORTED}
    for text, code in samples.items():
        assert error_of(text)[0] == code


# ---------------------------------------------------------------------------------------
# Fuzzing: any string parses or raises QueryError, and a parsed tree is normalised.


def assert_normalised(root: Node) -> None:
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, And | Or):
            assert len(node.children) >= 2
            assert len(set(node.children)) == len(node.children)
            assert not any(isinstance(child, type(node) | All) for child in node.children)
            stack.extend(node.children)
        elif isinstance(node, Not):
            assert not isinstance(node.child, Not | All)
            stack.append(node.child)
        elif isinstance(node, Meta):
            assert node.name in KNOWN_METATAGS - SINGLETON_METATAGS
        elif isinstance(node, TagTerm | Wildcard):
            assert node.threshold is None or 0 <= (node.threshold.lo or 0) <= 1


def assert_total(text: str) -> None:
    try:
        query = parse(text)
    except QueryError as error:
        assert error.code in set(ErrorCode)
        assert 0 <= error.position <= len(text)
        return
    assert_normalised(query.root)
    assert isinstance(to_sexp(query.root), str)
    hash(query)


SYNTAX_PIECES = st.sampled_from(
    [*"()-~ *:,\"'\\<>=.0123456789abor\t", "and ", "or ", " AND ", "\u3000", "\xa0", "\x85"]
    + [f"{name}:" for name in sorted(KNOWN_METATAGS)]
    + ["1girl", ",>=0.5", ",90", "order:id", "limit:5", "similar:3", ":)", ">:(", "foo_(bar)"]
)
FUZZ = settings(
    max_examples=1500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(FUZZ, max_examples=2500)
@given(st.text())
def test_any_text_parses_or_raises_query_error(text: str) -> None:
    assert_total(text)


CONTROL = st.sampled_from(
    [
        chr(c)
        for c in [*range(0x00, 0x09), *range(0x0E, 0x1C), *range(0x7F, 0x85), *range(0x86, 0xA0)]
    ]
    + ["\ud800", "\udfff"]
)


@settings(FUZZ, max_examples=500)
@given(
    st.lists(SYNTAX_PIECES, max_size=10).map("".join),
    CONTROL,
    st.lists(SYNTAX_PIECES, max_size=10).map("".join),
)
def test_a_control_character_anywhere_is_refused_where_it_stands(
    before: str, char: str, after: str
) -> None:
    with pytest.raises(QueryError) as caught:
        parse(before + char + after)
    assert caught.value.code is ErrorCode.BAD_CHARACTER
    assert caught.value.position == len(before)


@pytest.mark.parametrize("separator", ["\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85"])
def test_whitespace_controls_stay_separators(separator: str) -> None:
    assert parse(f"a{separator}b") == parse("a b")


@FUZZ
@given(st.lists(SYNTAX_PIECES, max_size=30).map("".join))
def test_syntax_heavy_text_parses_or_raises_query_error(text: str) -> None:
    assert_total(text)


@settings(FUZZ, max_examples=500)
@given(st.lists(st.sampled_from(["a", "b", "-c", "~d", "(", ")", "or", "and"]), max_size=25))
def test_parse_ignores_extra_spacing(words: list[str]) -> None:
    try:
        expected: object = parse(" ".join(words))
    except QueryError as error:
        expected = error.code
    try:
        spaced: object = parse("\u3000 " + "\t\n".join(words) + "  ")
    except QueryError as error:
        spaced = error.code
    assert spaced == expected

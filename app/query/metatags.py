"""Sagashi's metatags: which names exist, and each value read into its type.

- ``width height tagcount gentags chartags copytags id``: ``RangeSet[int]``.
- ``mpixels``: ``RangeSet[float]``.
- ``filesize``: ``RangeSet[int]`` of bytes; ``500kb``, ``2mb``, ``1.5M``, ``1g`` (1024-based).
- ``ratio``: ``RangeSet[float]``; ``16:9``, ``16/9``, ``1.78``, each rounded to 2 decimals.
- ``date``: ``RangeSet[date]``; ISO dates ``2024-01-31`` and ranges of them.
- ``age``: ``RangeSet[timedelta]``; ``<1d``, ``>2w``, ``1mo..1y``. Units s, mi or min, h,
  d, w, mo (30 days), y (365 days); a bare ``m`` is refused as ambiguous.
- ``rating``: ``tuple[str, ...]`` of g/s/q/e in that order; ``g``, ``general``, ``g,s``.
- ``filetype``: ``tuple[str, ...]`` of lower-cased extensions, sorted; ``png``, ``jpg,webp``.
- ``sha256`` / ``md5``: ``str`` of 64 / 32 lower-case hex digits.
- ``path``: ``str``, any glob, case kept, may be empty.
- ``unaliased``: ``str``, one lower-cased tag name, matched without applying aliases.
- ``unimplied``: ``str``, one lower-cased tag name, matched by its own score only (not by
  the tags that imply it).
- ``order``: ``Order``; see ``ORDERS``, plus ``score:<tag>``.
- ``limit``: ``int`` within [1, max_limit]. ``similar``: ``int``, an image id, 1 or more.

Unknown names. ``name:value`` is a metatag only when ``name`` is known. Many real tags hold a
colon (``re:zero_kara_hajimeru_isekai_seikatsu``, ``:d``, ``fate:lost_einherjar``), so an
unknown name means a plain tag, except that these are ``unknown_metatag`` errors:

- a Danbooru metatag that Sagashi lacks (``source:``, ``user:``, ``score:``, ...);
- a name of letters, digits and ``_`` followed by a quoted value (``foo:"a b"``): no tag
  looks like that, and reading it as a tag would split it at the space;
- a likely typo: a name of 3 or more such characters within edit distance 1 (2 for known
  names longer than 5 characters) of a known name, *and* whose value is valid for that
  name (``ratng:s``, ``widht:>100``). The value test spares real tags such as
  ``fate:lost_einherjar`` (1 edit from ``date:``) and ``id_:_invaded`` (1 from ``id:``).

Known names win even over real tags: ``id:invaded`` is the metatag ``id:`` with a bad value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta

from app.query.ast import MetaValue, Order
from app.query.errors import ErrorCode, QueryError
from app.query.ranges import Locate, parse_float, parse_int, parse_range_set

KNOWN_METATAGS = frozenset(
    {
        "rating", "width", "height", "mpixels", "ratio", "filesize", "filetype",
        "date", "age", "id", "sha256", "md5", "path",
        "tagcount", "gentags", "chartags", "copytags",
        "order", "limit", "similar", "unaliased", "unimplied",
    }
)  # fmt: skip

SINGLETON_METATAGS = frozenset({"order", "limit", "similar"})

# Danbooru metatags that make no sense for a local collection. Users coming from Danbooru
# type them; an explicit error beats a tag that silently matches nothing.
DANBOORU_ONLY_METATAGS = frozenset(
    {
        "source", "user", "approver", "commenter", "noter", "flagger", "appealer",
        "fav", "ordfav", "favgroup", "ordfavgroup", "pool", "ordpool", "score", "favcount",
        "upvote", "downvote", "status", "parent", "child", "pixiv", "pixiv_id", "is", "has",
        "commentary", "comment", "note", "arttags", "metatags", "duration", "search",
    }
)  # fmt: skip

ORDERS: dict[str, Order] = {
    "id": Order("id", descending=False),
    "id_asc": Order("id", descending=False),
    "id_desc": Order("id", descending=True),
    "random": Order("random", descending=False),
    "tagcount": Order("tagcount", descending=True),
    "tagcount_asc": Order("tagcount", descending=False),
    "filesize": Order("filesize", descending=True),
    "filesize_asc": Order("filesize", descending=False),
    "mpixels": Order("mpixels", descending=True),
    "mpixels_asc": Order("mpixels", descending=False),
    "date": Order("date", descending=True),
    "date_asc": Order("date", descending=False),
    "similarity": Order("similarity", descending=True),
}

_RATINGS = {
    "g": "g", "general": "g",
    "s": "s", "sensitive": "s",
    "q": "q", "questionable": "q",
    "e": "e", "explicit": "e",
}  # fmt: skip
_RATING_ORDER = "gsqe"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})([kmg](?:i?b)?|b)?", re.ASCII)
_DURATION_UNITS = {
    "s": 1, "mi": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
    "mo": 30 * 86400, "y": 365 * 86400,
}  # fmt: skip
_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)([a-z]+)", re.ASCII)
_RATIO = re.compile(r"([^:/]+)[:/]([^:/]+)")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_EXTENSION = re.compile(r"[a-z0-9]{1,10}", re.ASCII)
_NAME_LIKE = re.compile(r"[a-z][a-z0-9_]*", re.ASCII)
_HEX = re.compile(r"[0-9a-f]*", re.ASCII)
_LONGEST_KNOWN = max(len(name) for name in KNOWN_METATAGS)


def check_unknown_name(name: str, value: str, quoted: bool, position: int) -> None:
    """Raise ``unknown_metatag`` if ``name:value`` (not a known metatag) is not a tag either."""
    if name in DANBOORU_ONLY_METATAGS:
        message = f"Danbooru's metatag '{name}:' is not supported by Sagashi"
        raise QueryError(ErrorCode.UNKNOWN_METATAG, message, position)
    if not _NAME_LIKE.fullmatch(name):
        return
    if quoted:
        raise QueryError(ErrorCode.UNKNOWN_METATAG, f"unknown metatag '{name}:'", position)
    guess = suggest(name)
    if guess is not None and _is_valid(guess, value):
        message = f"unknown metatag '{name}:'; did you mean '{guess}:'?"
        raise QueryError(ErrorCode.UNKNOWN_METATAG, message, position)


def suggest(name: str) -> str | None:
    """The known metatag ``name`` is probably a typo of, or None."""
    if len(name) < 3 or len(name) > _LONGEST_KNOWN + 2:
        return None
    scored = sorted((_edit_distance(name, known), known) for known in KNOWN_METATAGS)
    distance, best = scored[0]
    return best if distance <= (1 if len(best) <= 5 else 2) else None


def _is_valid(name: str, value: str) -> bool:
    try:
        parse_value(name, value, lambda index: index, max_limit=1000)
    except QueryError:
        return False
    return True


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: a swap of neighbours (``widht``) is one edit."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, 1):
            current[j] = min(
                previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)
            )
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def parse_value(name: str, value: str, locate: Locate, *, max_limit: int) -> MetaValue:
    """Read a known metatag's value; errors point into the query through ``locate``."""
    if name == "limit":
        return _bounded_int(value, locate, 1, max_limit, "limit")
    return _READERS[name](value, locate)


def _bad(message: str, position: int) -> QueryError:
    return QueryError(ErrorCode.BAD_VALUE, message, position)


def _int_ranges(value: str, locate: Locate) -> MetaValue:
    return parse_range_set(value, parse_int, locate)


def _float_ranges(value: str, locate: Locate) -> MetaValue:
    return parse_range_set(value, parse_float, locate)


def _size_ranges(value: str, locate: Locate) -> MetaValue:
    return parse_range_set(value, _size, locate)


def _ratio_ranges(value: str, locate: Locate) -> MetaValue:
    return parse_range_set(value, _ratio, locate)


def _date_ranges(value: str, locate: Locate) -> MetaValue:
    return parse_range_set(value, _date, locate)


def _age_ranges(value: str, locate: Locate) -> MetaValue:
    return parse_range_set(value, _duration, locate)


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text.lower())
    if not match:
        raise ValueError(f"expected a file size such as 500kb, 2mb or 1.5M, got {text!r}")
    return round(float(match[1]) * _SIZE_UNITS[(match[2] or "")[:1]])


def _ratio(text: str) -> float:
    match = _RATIO.fullmatch(text)
    if not match:
        return round(parse_float(text), 2)
    denominator = parse_float(match[2])
    if denominator == 0:
        raise ValueError(f"the ratio {text!r} divides by zero")
    return round(parse_float(match[1]) / denominator, 2)


def _date(text: str) -> date:
    if not _ISO_DATE.fullmatch(text):
        raise ValueError(f"expected a date such as 2024-01-31, got {text!r}")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a calendar date") from None


def _duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text.lower())
    if not match or match[2] not in _DURATION_UNITS:
        hint = " ('m' is ambiguous: use mi for minutes, mo for months)" if text[-1:] == "m" else ""
        units = "s, mi, h, d, w, mo, y"
        raise ValueError(f"expected an age such as 2d or 1mo ({units}), got {text!r}{hint}")
    return timedelta(seconds=float(match[1]) * _DURATION_UNITS[match[2]])


def _ratings(value: str, locate: Locate) -> MetaValue:
    found: set[str] = set()
    offset = 0
    for item in value.split(","):
        letter = _RATINGS.get(item.lower())
        if letter is None:
            message = f"unknown rating {item!r}: use g, s, q, e or general, sensitive, ..."
            raise _bad(message, locate(offset))
        found.add(letter)
        offset += len(item) + 1
    return tuple(letter for letter in _RATING_ORDER if letter in found)


def _filetypes(value: str, locate: Locate) -> MetaValue:
    found: set[str] = set()
    offset = 0
    for item in value.split(","):
        extension = item.lower()
        if not _EXTENSION.fullmatch(extension):
            raise _bad(f"expected a file extension such as png, got {item!r}", locate(offset))
        found.add(extension)
        offset += len(item) + 1
    return tuple(sorted(found))


def _hex_reader(digits: int) -> Callable[[str, Locate], MetaValue]:
    def read(value: str, locate: Locate) -> MetaValue:
        lowered = value.lower()
        if len(lowered) != digits or not _HEX.fullmatch(lowered):
            raise _bad(f"expected {digits} hexadecimal digits, got {value!r}", locate(0))
        return lowered

    return read


def _path(value: str, locate: Locate) -> MetaValue:
    return value


def _one_tag(name: str) -> Callable[[str, Locate], MetaValue]:
    def read(value: str, locate: Locate) -> MetaValue:
        if not value or "*" in value or any(ch.isspace() for ch in value):
            raise _bad(f"{name}: takes one tag name, without spaces or *", locate(0))
        return value.lower()

    return read


def _order(value: str, locate: Locate) -> MetaValue:
    lowered = value.lower()
    if lowered.startswith("score:"):
        tag = lowered[len("score:") :]
        if not tag or "*" in tag:
            raise _bad("order:score: takes one tag name, as in order:score:1girl", locate(6))
        return Order("score", descending=True, tag=tag)
    if lowered not in ORDERS:
        choices = ", ".join([*ORDERS, "score:<tag>"])
        raise _bad(f"unknown order {value!r}; choose from {choices}", locate(0))
    return ORDERS[lowered]


def _similar(value: str, locate: Locate) -> MetaValue:
    return _bounded_int(value, locate, 1, None, "similar")


def _bounded_int(value: str, locate: Locate, low: int, high: int | None, name: str) -> int:
    try:
        number = parse_int(value)
    except ValueError as exc:
        raise _bad(f"{name}: {exc}", locate(0)) from None
    if number < low or (high is not None and number > high):
        limits = f"within [{low}, {high}]" if high is not None else f"at least {low}"
        raise _bad(f"{name}: must be {limits}, got {number}", locate(0))
    return number


_READERS: dict[str, Callable[[str, Locate], MetaValue]] = {
    "rating": _ratings,
    "width": _int_ranges,
    "height": _int_ranges,
    "mpixels": _float_ranges,
    "ratio": _ratio_ranges,
    "filesize": _size_ranges,
    "filetype": _filetypes,
    "date": _date_ranges,
    "age": _age_ranges,
    "id": _int_ranges,
    "sha256": _hex_reader(64),
    "md5": _hex_reader(32),
    "path": _path,
    "tagcount": _int_ranges,
    "gentags": _int_ranges,
    "chartags": _int_ranges,
    "copytags": _int_ranges,
    "order": _order,
    "similar": _similar,
    "unaliased": _one_tag("unaliased"),
    "unimplied": _one_tag("unimplied"),
}

"""Danbooru's API contract, as its clients (gallery-dl, Pybooru, Grabber, Hydrus) meet it:
page and limit rules, tag categories, the error shape, and which paths answer in it.

Every number here is Danbooru's own (PaginationExtension, PostSets::Post, TagsController,
AutocompleteService), so a client sees the limits it knows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.api.danbooru.shape import NOT_FOUND_MESSAGE
from app.api.errors import ApiError

POSTS_DEFAULT_LIMIT = 20  # Danbooru.config.posts_per_page
POSTS_MAX_LIMIT = 200  # PostSets::Post::MAX_PER_PAGE
MAX_LIMIT = 1000  # PaginationExtension's max_limit, for every other list
PAGE_LIMIT = 1000  # User#page_limit of members and anonymous users
AUTOCOMPLETE_LIMIT = 10
RELATED_LIMIT = 25
IQDB_LIMIT = 20
MAX_ID = 2**32 - 1  # image ids are uint32 in the engines
_SEQUENTIAL = re.compile(r"([ab])([0-9]+)", re.IGNORECASE)
_RUBY_INT = re.compile(r"\s*([+-]?[0-9]+)")

# Our tag groups as Danbooru's tag categories (general 0, artist 1, copyright 3,
# character 4, meta 5). Ratings are no tags on Danbooru but the rating field.
CATEGORY = {"general": 0, "copyright": 3, "character": 4}
CATEGORY_NAMES = {"general": 0, "artist": 1, "copyright": 3, "character": 4, "meta": 5}
RATING_LETTER = {"general": "g", "sensitive": "s", "questionable": "q", "explicit": "e"}


def not_found() -> ApiError:
    return ApiError(404, "not_found", NOT_FOUND_MESSAGE)


def ruby_int(text: str | None) -> int:
    """Ruby's String#to_i, as Danbooru reads page and limit: leading digits, else 0."""
    match = _RUBY_INT.match(text or "")
    return int(match[1]) if match else 0


def clamped_limit(text: str | None, default: int, most: int) -> int:
    """A limit as Danbooru takes it: clamped into [1, most], never refused."""
    return default if text is None or text == "" else min(max(ruby_int(text), 1), most)


@dataclass(frozen=True)
class Page:
    """A ``page`` parameter: a number (1 to PAGE_LIMIT), ``b<id>`` (before) or ``a<id>``."""

    number: int = 1
    before: int | None = None
    after: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Page:
        if not text:
            return cls()
        sequential = _SEQUENTIAL.fullmatch(text)
        if sequential:
            bound = min(int(sequential[2]), MAX_ID)
            return cls(before=bound) if sequential[1].lower() == "b" else cls(after=bound)
        number = ruby_int(text)
        if number > PAGE_LIMIT:
            raise ApiError(410, "pagination", f"You cannot go beyond page {PAGE_LIMIT}.")
        return cls(number=max(number, 1))

    def skip(self, limit: int) -> int:
        return (self.number - 1) * limit


def only_fields(text: str | None) -> list[str] | None:
    """``only=id,md5,tag_string``: the top-level fields to keep (nested ones are dropped)."""
    if not text:
        return None
    return [name.split("[", 1)[0].strip() for name in text.split(",") if name.strip()]


def select_fields(record: dict[str, Any], only: list[str] | None) -> dict[str, Any]:
    if only is None:
        return record
    return {name: record[name] for name in only if name in record}

"""The one error a query can raise: a code for programs, a message for people, a position.

Danbooru answers a malformed search with an empty page; Sagashi answers with this, so the
API can return a 400 that points at the offending character.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from app.errors import SagashiError


class ErrorCode(StrEnum):
    SYNTAX = "syntax"
    UNBALANCED_PARENS = "unbalanced_parens"
    UNKNOWN_METATAG = "unknown_metatag"
    BAD_VALUE = "bad_value"
    CONFLICTING_SINGLETON = "conflicting_singleton"
    SINGLETON_MISUSE = "singleton_misuse"
    TOO_MANY_TERMS = "too_many_terms"
    TOO_DEEP = "too_deep"
    UNTERMINATED_QUOTE = "unterminated_quote"
    BAD_CHARACTER = "bad_character"  # a control character or lone surrogate
    UNSUPPORTED = "unsupported"  # valid syntax the search engine cannot execute yet


class QueryError(SagashiError):
    """A query that cannot be searched. ``position`` is a 0-based offset into the query text.

    The position may equal ``len(text)`` when the problem is that the text ended too soon.
    """

    http_status = 400
    position: int  # always set: where in the query text

    def __init__(self, code: ErrorCode, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position})")
        self.code = code
        self.error_code = f"query_{code.value}"
        self.message = message
        self.position = position

    def detail(self) -> str:
        return self.message

    def reason(self) -> str:
        return f"bad query at character {self.position} ({self.code}): {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce would call __init__ with the formatted string only.
        return (type(self), (self.code, self.message, self.position))

    def as_dict(self) -> dict[str, str | int]:
        return {"code": str(self.code), "message": self.message, "position": self.position}

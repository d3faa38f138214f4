"""Splits query text into tokens: parentheses, the ``-``/``~`` prefixes, ``and``/``or``, terms.

Tokens are produced on demand, so the parser reports the leftmost problem first and stops
reading a 10,000-term query at its first excess term.

Separators are every character for which ``str.isspace()`` is true (tab, newline, NEL,
NBSP, U+2000-U+200A, U+3000, ...) plus the invisible U+180E, U+200B, U+2060 and U+FEFF,
which no real tag contains and which would otherwise make an invisible, unmatchable tag.

A ``)`` at the end of a word closes an open group, as in Danbooru, unless the word's own
parentheses are balanced (``foo_(bar)``) or the word is an emoticon (``:)``, ``>:(``).
Sagashi applies the same rule to bare metatag values, so ``(path:a_(b) x)`` keeps ``a_(b)``.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from enum import Enum

from app.query.errors import ErrorCode, QueryError
from app.query.metatags import KNOWN_METATAGS, check_unknown_name

_SEPARATOR_CLASS = "\\s\u180e\u200b\u2060\ufeff"
_SEPARATOR = re.compile(f"[{_SEPARATOR_CLASS}]")
_CONTENT = re.compile(f"[^{_SEPARATOR_CLASS}]")
_QUOTED = {
    '"': re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL),
    "'": re.compile(r"'((?:[^'\\]|\\.)*)'", re.DOTALL),
}
_QUOTED_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
# In a bare value only backslash-whitespace is an escape; other backslashes are literal
# (paths and globs use them).
_BARE = re.compile(f"(?:\\\\[{_SEPARATOR_CLASS}]|\\\\|[^{_SEPARATOR_CLASS}\\\\])*")
_BARE_ESCAPE = re.compile(f"\\\\([{_SEPARATOR_CLASS}])")
_PARENS = re.compile(r"[()]")
# Control characters that are not separators (NUL, ESC, DEL, the C1 block but NEL) and
# lone surrogates: no tag or path holds them, and the engines disagree on them (PostgreSQL
# refuses NUL, SQLite's GLOB stops at it), so the query is refused before any engine runs.
_FORBIDDEN = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ud800-\udfff]")

EMOTICONS = frozenset({":)", ":(", ";)", ";(", ">:)", ">:("})
"""Tags whose unbalanced ``)`` is part of the face, never a group's end."""

_LONGEST_EMOTICON = max(len(face) for face in EMOTICONS)


class Kind(Enum):
    LPAREN = "'('"
    RPAREN = "')'"
    NOT = "'-'"
    OPT = "'~'"
    AND = "'and'"
    OR = "'or'"
    TERM = "a term"
    END = "the end of the query"


@dataclass(frozen=True)
class MetaText:
    """A metatag's name and its unquoted, unescaped value, still untyped."""

    name: str
    value: str
    position: int
    escapes: tuple[int, ...] = ()

    def locate(self, index: int) -> int:
        """The query offset of the value's ``index``-th character (escapes took two)."""
        return self.position + index + bisect_left(self.escapes, index)


@dataclass(frozen=True)
class Token:
    kind: Kind
    position: int
    text: str = ""
    meta: MetaText | None = None


def is_separator(char: str) -> bool:
    return _SEPARATOR.fullmatch(char) is not None


def check_characters(text: str) -> None:
    """Raise ``bad_character`` at the first character no query may hold."""
    found = _FORBIDDEN.search(text)
    if found is not None:
        shown = f"U+{ord(found.group()):04X}"
        message = f"the query holds the control character {shown}, which no tag or path has"
        raise QueryError(ErrorCode.BAD_CHARACTER, message, found.start())


class Lexer:
    def __init__(self, text: str, *, max_depth: int) -> None:
        check_characters(text)
        self._text = text
        self._pos = 0
        self._depth = 0
        self._max_depth = max_depth

    def next(self) -> Token:
        found = _CONTENT.search(self._text, self._pos)
        if found is None:
            self._pos = len(self._text)
            return Token(Kind.END, self._pos)
        start = found.start()
        char = self._text[start]
        if char == "(":
            return self._open(start)
        if char == ")":
            return self._close(start)
        if char in "-~":
            return self._prefix(start)
        return self._term(start)

    def _open(self, start: int) -> Token:
        self._depth += 1
        if self._depth > self._max_depth:
            message = f"parentheses nest more than {self._max_depth} deep"
            raise QueryError(ErrorCode.TOO_DEEP, message, start)
        self._pos = start + 1
        return Token(Kind.LPAREN, start)

    def _close(self, start: int) -> Token:
        if self._depth == 0:
            raise QueryError(ErrorCode.UNBALANCED_PARENS, "this ')' closes no '('", start)
        self._depth -= 1
        self._pos = start + 1
        return Token(Kind.RPAREN, start)

    def _prefix(self, start: int) -> Token:
        char = self._text[start]
        after = start + 1
        following = self._text[after : after + 1]
        if following in ("-", "~"):
            message = f"only one prefix per term: '{char}{following}' is not allowed"
            raise QueryError(ErrorCode.SYNTAX, message, after)
        if not following or following == ")" or is_separator(following):
            message = f"'{char}' must be directly followed by a term or '('"
            raise QueryError(ErrorCode.SYNTAX, message, start)
        self._pos = after
        return Token(Kind.NOT if char == "-" else Kind.OPT, start)

    def _term(self, start: int) -> Token:
        end = self._word_end(start)
        colon = self._text.find(":", start, end)
        if colon > start:
            name = self._text[start:colon].lower()
            if name in KNOWN_METATAGS:
                return self._metatag(start, name, colon + 1)
            self._check_unknown(start, name, colon + 1, end)
        word = self._give_back_parens(self._text[start:end])
        self._pos = start + len(word)
        keyword = word.lower()
        if keyword == "and":
            return Token(Kind.AND, start)
        if keyword == "or":
            return Token(Kind.OR, start)
        return Token(Kind.TERM, start, word)

    def _word_end(self, start: int) -> int:
        found = _SEPARATOR.search(self._text, start)
        return len(self._text) if found is None else found.start()

    def _check_unknown(self, start: int, name: str, value_start: int, end: int) -> None:
        quoted = self._text[value_start : value_start + 1] in ('"', "'")
        value = self._give_back_parens(self._text[value_start:end])
        check_unknown_name(name, value, quoted, start)

    def _metatag(self, start: int, name: str, value_start: int) -> Token:
        if self._text[value_start : value_start + 1] in _QUOTED:
            meta, end = self._quoted_value(name, value_start)
        else:
            meta, end = self._bare_value(name, value_start)
        self._pos = end
        return Token(Kind.TERM, start, self._text[start:end], meta)

    def _quoted_value(self, name: str, at: int) -> tuple[MetaText, int]:
        found = _QUOTED[self._text[at]].match(self._text, at)
        if found is None:
            message = "this quote is never closed"
            raise QueryError(ErrorCode.UNTERMINATED_QUOTE, message, at)
        end = found.end()
        following = self._text[end : end + 1]
        if following and following != ")" and not is_separator(following):
            message = "a closing quote must be followed by a space, ')' or the end"
            raise QueryError(ErrorCode.SYNTAX, message, end)
        value, escapes = _unescape(found[1], _QUOTED_ESCAPE)
        return MetaText(name, value, at + 1, escapes), end

    def _bare_value(self, name: str, at: int) -> tuple[MetaText, int]:
        found = _BARE.match(self._text, at)
        raw = self._give_back_parens(found[0] if found else "")
        value, escapes = _unescape(raw, _BARE_ESCAPE)
        return MetaText(name, value, at, escapes), at + len(raw)

    def _give_back_parens(self, word: str) -> str:
        """Drop the trailing ``)`` that close open groups (see the module docstring)."""
        if self._depth == 0 or not word.endswith(")"):
            return word
        body = word.rstrip(")")
        trailing = len(word) - len(body)
        returnable = min(trailing, self._depth)
        total, lowest = _paren_balance(body)
        for given in range(returnable):
            kept = word[: len(word) - given]
            balanced = lowest >= 0 and total == trailing - given
            if balanced or (len(kept) <= _LONGEST_EMOTICON and kept in EMOTICONS):
                return kept
        return word[: len(word) - returnable]


def _paren_balance(body: str) -> tuple[int, int]:
    """Final and lowest running count of '(' minus ')'; balanced means (0, >= 0).

    Computed once per word, so giving back up to max_depth parens stays linear.
    """
    total = lowest = 0
    for paren in _PARENS.finditer(body):
        total += 1 if paren[0] == "(" else -1
        lowest = min(lowest, total)
    return total, lowest


def _unescape(raw: str, escape: re.Pattern[str]) -> tuple[str, tuple[int, ...]]:
    """The text with escapes resolved, and the output index of each escaped character."""
    pieces: list[str] = []
    escapes: list[int] = []
    last = 0
    for found in escape.finditer(raw):
        pieces += (raw[last : found.start()], found[1])
        escapes.append(found.start() - len(escapes))
        last = found.end()
    pieces.append(raw[last:])
    return "".join(pieces), tuple(escapes)

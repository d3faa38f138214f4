"""Small pieces of English for messages: "1 image", "2 images", "an AVIF", "a PNG"."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and the noun, singular for exactly one: ``plural(1, "image")`` is
    "1 image", ``plural(3, "image")`` "3 images" (``many`` for an irregular plural)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def article(word: str) -> str:
    """The word with "a" or "an" by its first letter: "an AVIF", "a PNG"."""
    return f"{'an' if word[:1].upper() in 'AEIOU' else 'a'} {word}"

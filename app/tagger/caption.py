"""Danbooru-style comma-separated captions, as used to curate training sets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from app.tagger.policy import TagScore
from app.tagger.vocab import CHARACTER, COPYRIGHT, GENERAL, RATING

# Emoticon tags whose underscores are part of the face, not word separators.
KAOMOJI = frozenset(
    {
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
        "^_-",
        "-_-",
        "t_t",
        "._.;",
        ";_;",
        "*_*",
        ">_>",
        "<_<",
        "0_o",
        "o_0",
    }
)

DEFAULT_ORDER: tuple[str, ...] = (CHARACTER, COPYRIGHT, GENERAL)


def caption_tag(tag: str, *, underscores: bool) -> str:
    if underscores or tag in KAOMOJI:
        return tag
    return tag.replace("_", " ")


def format_caption(
    tags: Iterable[TagScore],
    *,
    order: Sequence[str] = DEFAULT_ORDER,
    underscores: bool = False,
) -> str:
    """Tags grouped in ``order`` (by score inside a group); groups not listed are left out.

    Rating is left out by default because training captions usually carry it separately.
    """
    rank = {group: position for position, group in enumerate(order)}
    chosen = [t for t in tags if t.group in rank]
    chosen.sort(key=lambda t: (rank[t.group], -t.score, t.tag))
    return ", ".join(caption_tag(t.tag, underscores=underscores) for t in chosen)


__all__ = ["DEFAULT_ORDER", "KAOMOJI", "RATING", "caption_tag", "format_caption"]

"""Generated query strings: the grammar's own pieces glued at random (the reliability test
and its benchmark share them)."""

from __future__ import annotations

import random
from collections.abc import Iterator

PIECES = [
    "1girl",
    "solo",
    "hu_tao_(genshin_impact)",
    "long_hair",
    "~",
    "-",
    "(",
    ")",
    "*",
    "or",
    "and",
    "order:",
    "score",
    "id:",
    "width:",
    ">=",
    "<",
    "..",
    ",",
    "0.5",
    "0.9",
    "1e9",
    "similar:",
    "rating:",
    "g",
    "e",
    "date:",
    "2024-01-01",
    "age:",
    "2d",
    "path:",
    '"',
    "'",
    "\\",
    "limit:",
    "tagcount:",
    "filetype:",
    "png",
    "sha256:",
    "md5:",
    "ratio:",
    "16:9",
    "mpixels:",
    "-1",
    "NaN",
    "inf",
    "  ",
    "\t",
    "\u3042",
    "\U0001f600",
    "\x00",
    ":",
    "::",
    "order:score:1girl",
    "unaliased:",
    "true",
    "copytags:",
    ">",
    "<=",
    "=",
    "%",
    "_",
    "%20",
]


def generated_queries(count: int, seed: int = 0) -> Iterator[str]:
    """Random sequences of the grammar's own pieces, glued with and without spaces, plus
    random printable and non-printable characters."""
    rng = random.Random(seed)
    for _ in range(count):
        if rng.random() < 0.1:
            yield "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 40)))
            continue
        parts = [rng.choice(PIECES) for _ in range(rng.randrange(0, 14))]
        glue = rng.choice(["", " ", " ", " "])
        yield glue.join(parts)

"""Pillow's per-file warnings as Sagashi's own one-line messages.

Pillow warns about a file it can still decode (``Invalid APNG, will use default PNG image if
possible``) with :func:`warnings.warn`, which Python prints as two raw lines naming Pillow's
source file in site-packages, once per process whatever the number of files. While
:func:`noting` is active for a file, a warning Pillow raises in that thread becomes one log
line naming the file instead; decoding runs in many threads at once, so the file in hand is
kept per thread (``warnings.catch_warnings`` changes process-wide state, and is not safe
across threads before Python 3.14).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("sagashi")

# Pillow's wording, reworded where it names what happens in Pillow's terms.
_REWORDED = {
    "Invalid APNG, will use default PNG image if possible": (
        "invalid APNG animation data; the still PNG image in the file was used"
    ),
}

_current = threading.local()
_shown = warnings.showwarning


def _route(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    name = getattr(_current, "name", None)
    if name is None or not _from_pillow(filename):
        _shown(message, category, filename, lineno, file, line)
        return
    text = str(message)
    level = getattr(_current, "level", logging.WARNING)
    log.log(level, "%s: %s", name, _REWORDED.get(text, text))


def _from_pillow(filename: str) -> bool:
    return "/PIL/" in filename.replace("\\", "/")


def install() -> None:
    """Route Pillow's warnings (each time, not once per process) through :func:`_route`."""
    global _shown
    if warnings.showwarning is not _route:
        _shown = warnings.showwarning
        warnings.showwarning = _route
    warnings.filterwarnings("always", category=UserWarning, module=r"PIL\.")


@contextmanager
def noting(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Pillow's warnings in this thread name ``name`` (a path) while the block runs, logged
    at ``level`` (DEBUG for a second decode of a file whose first decode already said it);
    a name and level already given by a caller (the path behind the bytes being decoded)
    are kept."""
    previous = getattr(_current, "name", None)
    previous_level = getattr(_current, "level", logging.WARNING)
    _current.name = previous or name
    _current.level = previous_level if previous else level
    try:
        yield
    finally:
        _current.name = previous
        _current.level = previous_level

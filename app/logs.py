"""Logging set-up for the entry points: human-readable lines on stderr."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


class CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream it was
    at set-up: while a progress bar is live, rich swaps ``sys.stderr`` for a proxy that
    prints each line above the bar, so a log line no longer lands inside the bar."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # always the current sys.stderr


def configure_logging(level: str = "INFO") -> None:
    handler = CurrentStderr()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Alembic narrates every schema check at INFO; only its warnings matter to a user.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))

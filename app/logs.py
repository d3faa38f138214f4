"""Logging set-up for the entry points: human-readable lines on stderr."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # Alembic narrates every schema check at INFO; only its warnings matter to a user.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))

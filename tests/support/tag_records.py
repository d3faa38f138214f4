"""The records ``sagashi tag`` prints in its JSON format, one a line (indexer/cli.py)."""

from __future__ import annotations

import json
from typing import NotRequired, TypedDict


class TagResult(TypedDict):
    tag: str
    score: float
    group: str


class TagError(TypedDict):
    code: str
    message: str


class TagRecord(TypedDict):
    path: str
    results: list[TagResult]
    embedding: NotRequired[list[float]]  # with --embedding
    error: NotRequired[TagError]  # a file that could not be tagged


def tag_records(stdout: str) -> list[TagRecord]:
    """The records of a ``sagashi tag`` run's standard output."""
    return [json.loads(line) for line in stdout.splitlines()]

"""Per-image reads that a search result page needs: an image's tags, the top tags of a page
of hits, and tag co-occurrence counted over a sample of a tag's images."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import Image, ImageTag, Tag
from app.store.repository import chunks
from app.tagger.vocab import GROUPS

# IN lists are sent in chunks; SQLite allows 32k parameters, PostgreSQL 65k.
IN_CHUNK = 1000


@dataclass(frozen=True)
class ScoredTag:
    name: str
    score: float
    group: str


def image_row(session: Session, image_id: int) -> Image | None:
    image = session.get(Image, image_id)
    return image if image is not None and image.deleted_at is None else None


def tags_of(
    session: Session,
    generation_id: int,
    image_ids: Sequence[int],
    thresholds: Mapping[str, float] | None = None,
    per_image: int | None = None,
    names: Mapping[int, tuple[str, str]] | None = None,
) -> dict[int, list[ScoredTag]]:
    """Each image's tags by score, at or above ``thresholds`` (all stored tags when None),
    at most ``per_image`` each. ``names`` (tag id -> name, group), from the search catalog,
    saves the join with the tags table."""
    floor = min(thresholds.values()) if thresholds else None
    rows: list[Any] = []
    connection = session.connection()  # Core rows: the ORM's row processing doubled the cost
    for part in chunks(list(image_ids), IN_CHUNK):
        statement = select(ImageTag.image_id, ImageTag.tag_id, ImageTag.score).where(
            ImageTag.generation_id == generation_id, ImageTag.image_id.in_(part)
        )
        if floor is not None:  # most stored scores lie between the floor and the thresholds
            statement = statement.where(ImageTag.score >= floor)
        rows.extend(connection.execute(statement).all())
    known = names if names is not None else _names(session, {tag for _, tag, _ in rows})
    levels = thresholds  # every group, the defaults already filled in by the caller
    kept: dict[int, list[tuple[float, str, str]]] = defaultdict(list)
    for image_id, tag_id, score in rows:
        entry = known.get(tag_id)
        if entry is not None and (levels is None or score >= levels[entry[1]]):
            kept[image_id].append((-score, entry[0], entry[1]))
    found: dict[int, list[ScoredTag]] = {}
    for image_id, tags in kept.items():
        tags.sort()  # by score, highest first, then by name
        found[image_id] = [
            ScoredTag(name, round(-negative, 6), group)
            for negative, name, group in tags[:per_image]
        ]
    return found


def _names(session: Session, tag_ids: set[int]) -> dict[int, tuple[str, str]]:
    found: dict[int, tuple[str, str]] = {}
    for part in chunks(sorted(tag_ids), IN_CHUNK):
        for tag_id, name, group in session.execute(
            select(Tag.id, Tag.name, Tag.group).where(Tag.id.in_(part))
        ):
            found[tag_id] = (name, GROUPS[group])
    return found


def sample(ids: Sequence[int], size: int) -> list[int]:
    """An evenly spaced, deterministic sample: the same tag gives the same related tags."""
    if len(ids) <= size:
        return list(ids)
    step = len(ids) / size
    return [ids[int(i * step)] for i in range(size)]


def co_occurrences(
    session: Session,
    generation_id: int,
    image_ids: Sequence[int],
    thresholds: Mapping[str, float],
    names: Mapping[int, tuple[str, str]] | None = None,
) -> tuple[Counter[str], dict[str, str]]:
    """How many of ``image_ids`` carry each tag at the thresholds, and each tag's group."""
    counts: Counter[str] = Counter()
    groups: dict[str, str] = {}
    for tags in tags_of(session, generation_id, image_ids, thresholds, names=names).values():
        for tag in tags:
            counts[tag.name] += 1
            groups[tag.name] = tag.group
    return counts, groups

"""Per-image reads that a search result page needs: an image's tags, the top tags of a page
of hits, and tag co-occurrence counted over a sample of a tag's images."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import Image, ImageTag, Tag
from app.store.repository import chunks
from app.tagger.vocab import DEFAULT_THRESHOLDS, GROUPS

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
) -> dict[int, list[ScoredTag]]:
    """Each image's tags by score, at or above ``thresholds`` (all stored tags when None),
    at most ``per_image`` each."""
    found: dict[int, list[ScoredTag]] = defaultdict(list)
    for part in chunks(list(image_ids), IN_CHUNK):
        statement = (
            select(ImageTag.image_id, Tag.name, Tag.group, ImageTag.score)
            .join(Tag, Tag.id == ImageTag.tag_id)
            .where(ImageTag.generation_id == generation_id, ImageTag.image_id.in_(part))
        )
        for image_id, name, group_code, score in session.execute(statement):
            group = GROUPS[group_code]
            if thresholds is None or score >= thresholds.get(group, DEFAULT_THRESHOLDS[group]):
                found[image_id].append(ScoredTag(name, round(float(score), 6), group))
    for tags in found.values():
        tags.sort(key=lambda t: (-t.score, t.name))
        if per_image is not None:
            del tags[per_image:]
    return found


def sample(ids: Sequence[int], size: int) -> list[int]:
    """An evenly spaced, deterministic sample: the same tag gives the same related tags."""
    if len(ids) <= size:
        return list(ids)
    step = len(ids) / size
    return [ids[int(i * step)] for i in range(size)]


def co_occurrences(
    session: Session, generation_id: int, image_ids: Sequence[int], thresholds: Mapping[str, float]
) -> tuple[Counter[str], dict[str, str]]:
    """How many of ``image_ids`` carry each tag at the thresholds, and each tag's group."""
    counts: Counter[str] = Counter()
    groups: dict[str, str] = {}
    for tags in tags_of(session, generation_id, image_ids, thresholds).values():
        for tag in tags:
            counts[tag.name] += 1
            groups[tag.name] = tag.group
    return counts, groups

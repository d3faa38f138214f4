"""Danbooru post objects for a page of image ids: the fields its clients read, from one
read of the images' rows and one of their tags.

Tag strings hold the tags at the thresholds in force (the server's defaults, or the
request's ``threshold_*``), sorted by name as Danbooru's are; general, character and
copyright come from our groups, artist and meta are empty. ``rating`` is the most likely of
the model's four rating tags (ties to the milder one, as ``rating:`` searches decide), or
null when the model predicts none. Files are served from ``/data/original/{id}/{md5}.{ext}``
and thumbnails from ``/data/preview/{id}/{md5}.webp``, so clients that name files after
the URL (gallery-dl) name them by md5 as they do on Danbooru.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.api.danbooru.contract import CATEGORY, RATING_LETTER
from app.search.catalog import Catalog
from app.search.plan import RATING_TAGS
from app.store.models import Image, ImageTag
from app.store.repository import chunks

IN_CHUNK = 1000
# Danbooru's file_ext for our canonical format names, where they differ.
EXTENSIONS = {"jpeg": "jpg", "tiff": "tif"}


def file_name(image_id: int, md5: str | None, sha256: str, image_format: str) -> str:
    """The file's name in its URL: the md5, as Danbooru's CDN names it (sha256 without)."""
    return f"{md5 or sha256}.{EXTENSIONS.get(image_format, image_format)}"


def build_posts(
    session: Session,
    catalog: Catalog,
    generation_id: int,
    ids: Sequence[int],
    thresholds: Mapping[str, float],
    base_url: str,
) -> dict[int, dict[str, Any]]:
    """Post objects by image id (live images only; a vanished id is left out)."""
    if not ids:
        return {}
    names = catalog.names_by_id()
    rating_ids = [info.id for name in RATING_TAGS if (info := catalog.tags.get(name))]
    rating_ids = [i for i in rating_ids if names[i][1] == "rating"]
    images = _images(session, ids)
    tags = _tags(session, generation_id, ids, thresholds, rating_ids, names)
    return {
        image_id: _post(row, tags.get(image_id, ([], [])), base_url, bool(rating_ids))
        for image_id, row in images.items()
    }


def _images(session: Session, ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
    found: dict[int, tuple[Any, ...]] = {}
    connection = session.connection()
    columns = (
        Image.id,
        Image.md5,
        Image.sha256,
        Image.size_bytes,
        Image.format,
        Image.width,
        Image.height,
        Image.indexed_at,
    )
    for part in chunks(list(ids), IN_CHUNK):
        statement = select(*columns).where(Image.id.in_(part), Image.deleted_at.is_(None))
        found.update((int(row[0]), tuple(row)) for row in connection.execute(statement))
    return found


Tagged = tuple[list[tuple[str, str]], list[tuple[float, str]]]  # (name, group); ratings


def _tags(
    session: Session,
    generation_id: int,
    ids: Sequence[int],
    thresholds: Mapping[str, float],
    rating_ids: list[int],
    names: Mapping[int, tuple[str, str]],
) -> dict[int, Tagged]:
    """Each image's tags at the thresholds, and its stored rating scores, in one read."""
    floor = min(value for group, value in thresholds.items() if group != "rating")
    kept: dict[int, Tagged] = defaultdict(lambda: ([], []))
    connection = session.connection()
    for part in chunks(list(ids), IN_CHUNK):
        wanted = ImageTag.score >= floor
        if rating_ids:
            wanted = or_(wanted, ImageTag.tag_id.in_(rating_ids))
        statement = select(ImageTag.image_id, ImageTag.tag_id, ImageTag.score).where(
            ImageTag.generation_id == generation_id, ImageTag.image_id.in_(part), wanted
        )
        for image_id, tag_id, score in connection.execute(statement):
            entry = names.get(tag_id)
            if entry is None:
                continue
            name, group = entry
            tagged, ratings = kept[image_id]
            if group == "rating":
                ratings.append((float(score), name))
            elif score >= thresholds[group]:
                tagged.append((name, group))
    return kept


def _rating(ratings: list[tuple[float, str]], predicted: bool) -> str | None:
    if not predicted or not ratings:
        return None
    order = list(RATING_TAGS)  # ties go to the milder rating
    best = max(ratings, key=lambda item: (item[0], -order.index(item[1])))
    return RATING_LETTER[best[1]]


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:  # SQLite hands back naive datetimes, which are UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds")


def _post(row: tuple[Any, ...], tagged: Tagged, base_url: str, predicted: bool) -> dict[str, Any]:
    image_id, md5, sha256, size, image_format, width, height, indexed_at = row
    tags, ratings = tagged
    by_group: dict[str, list[str]] = {group: [] for group in CATEGORY}
    for name, group in tags:
        by_group.setdefault(group, []).append(name)
    general = sorted(by_group["general"])
    character = sorted(by_group["character"])
    copyright_ = sorted(by_group["copyright"])
    everything = sorted([*general, *character, *copyright_])
    name = file_name(image_id, md5, sha256, image_format)
    stem = name.rsplit(".", 1)[0]
    file_url = f"{base_url}data/original/{image_id}/{name}"
    stamp = _iso(indexed_at)
    return {
        "id": image_id,
        "created_at": stamp,
        "updated_at": stamp,
        "uploader_id": None,
        "approver_id": None,
        "score": 0,
        "up_score": 0,
        "down_score": 0,
        "fav_count": 0,
        "source": "",
        "md5": md5,
        "rating": _rating(ratings, predicted),
        "image_width": width,
        "image_height": height,
        "file_ext": name.rsplit(".", 1)[1],
        "file_size": size,
        "tag_string": " ".join(everything),
        "tag_string_general": " ".join(general),
        "tag_string_character": " ".join(character),
        "tag_string_copyright": " ".join(copyright_),
        "tag_string_artist": "",
        "tag_string_meta": "",
        "tag_count": len(everything),
        "tag_count_general": len(general),
        "tag_count_character": len(character),
        "tag_count_copyright": len(copyright_),
        "tag_count_artist": 0,
        "tag_count_meta": 0,
        "file_url": file_url,
        "large_file_url": file_url,
        "preview_file_url": f"{base_url}data/preview/{image_id}/{stem}.webp",
        "has_large": False,
        "parent_id": None,
        "has_children": False,
        "has_active_children": False,
        "has_visible_children": False,
        "is_pending": False,
        "is_flagged": False,
        "is_deleted": False,
        "is_banned": False,
        "pixiv_id": None,
        "bit_flags": 0,
        "last_comment_bumped_at": None,
        "last_commented_at": None,
        "last_noted_at": None,
    }

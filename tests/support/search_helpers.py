"""Fixtures for search tests: a small index written through the store, a brute-force
evaluator of bound plans over plain dictionaries (the oracle), and random images and queries
to hold the engines against it."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from typing import TypedDict

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.query import ErrorCode, QueryError, parse
from app.search.binder import bind
from app.search.catalog import Catalog
from app.search.epoch import micros
from app.search.plan import (
    PAll,
    PAnd,
    PAttr,
    PFormat,
    PlanNode,
    PMd5,
    PNot,
    PNothing,
    POr,
    PPath,
    PRating,
    PSha,
    PTag,
    PTagCount,
)
from app.store import repository as repo
from app.store.db import session_factory
from app.store.models import Image, Tag
from app.tagger.preprocess import Preprocess
from app.tagger.protocol import ModelInfo
from app.tagger.vocab import GROUP_CODE

INFO = ModelInfo(
    name="fixture",
    family="pixai",
    vocabulary_digest="f" * 64,
    embedding_dim=4,
    num_tags=0,
    preprocess=Preprocess(56, "stretch", "bilinear", (0.5,) * 3, (0.5,) * 3, "RGB"),
)


def build_index(
    engine: Engine, images: Sequence[Mapping[str, float]], groups: Mapping[str, str] | None = None
) -> tuple[int, FixtureImages, Catalog]:
    """Write images (tag name -> score) and return (generation, {image: {tag id: score}}
    with the images' properties, catalog). Scores are stored as float32, as the tagger stores
    them."""
    groups = groups or {}
    names = sorted({n for tags in images for n in tags})
    with session_factory(engine)() as session:
        generation = repo.generation_for_index(session, INFO)
        ids = repo.ensure_tags(session, {n: GROUP_CODE[groups.get(n, "general")] for n in names})
        items = []
        for i, tags in enumerate(images):
            tag_ids = np.array([ids[n] for n in tags], dtype=np.int64)
            scores = np.array(list(tags.values()), dtype=np.float32)
            facts = repo.FileFacts(
                fixture_path(i),
                fixture_sha(i),
                1000 + 37 * i,
                1,
                100 + (13 * i) % 400,
                100 + (29 * i) % 300,
                FORMATS[i % 3],
                fixture_md5(i),
            )
            items.append(
                (facts, repo.StoredPrediction(tag_ids, scores, np.ones(4, np.float32) / 2), None)
            )
        image_ids = repo.write_images(session, generation.id, items)
        repo.refresh_tag_counts(session, generation.id)
        session.commit()
        rows = session.execute(select(Tag.id, Tag.name, Tag.group, Tag.image_count)).all()
        indexed = dict(session.execute(select(Image.id, Image.indexed_at)).all())
    by_image = {
        image_id: {ids[n]: float(np.float32(s)) for n, s in tags.items()}
        for image_id, tags in zip(image_ids, images, strict=True)
    }
    attributes: dict[int, FixtureAttributes] = {
        image_id: {
            "id": image_id,
            "size_bytes": 1000 + 37 * i,
            "width": 100 + (13 * i) % 400,
            "height": 100 + (29 * i) % 300,
            "sha256": fixture_sha(i),
            "md5": fixture_md5(i),
            "format": FORMATS[i % 3],
            "path": fixture_path(i),
            "mpixels": (100 + (13 * i) % 400) * (100 + (29 * i) % 300) / 1_000_000.0,
            "ratio": (100 + (13 * i) % 400) / (100 + (29 * i) % 300),
            "indexed_us": micros(indexed[image_id]),
        }
        for i, image_id in enumerate(image_ids)
    }
    tag_groups = {int(r[0]): int(r[2]) for r in rows}
    data = FixtureImages(by_image, attributes, tag_groups)
    return generation.id, data, Catalog.from_rows([(r[0], r[1], r[2], r[3]) for r in rows], {})


def fixture_sha(i: int) -> str:
    return f"{i:064x}"


def fixture_md5(i: int) -> str | None:
    """Every third image has no md5 (imported without its file): md5: never matches it."""
    return None if i % 3 == 2 else f"{i:032x}"


FORMATS = ("png", "jpeg", "webp")


def fixture_path(i: int) -> str:
    folder = ("art", "Art_[1]", "photos")[i % 5 % 3]
    return f"/fixture/{folder}/{i:05d}.{('png', 'jpg', 'webp')[i % 3]}"


class FixtureAttributes(TypedDict):
    """The properties of a fixture image, as the metatag terms read them."""

    id: int
    size_bytes: int
    width: int
    height: int
    sha256: str
    md5: str | None
    format: str
    path: str
    mpixels: float
    ratio: float
    indexed_us: int


class FixtureImages(dict[int, dict[int, float]]):
    """A fixture index's images, {image id: {tag id: score}}, with what the oracle's metatag
    terms read: each image's properties and each tag's group."""

    def __init__(
        self,
        scores: Mapping[int, dict[int, float]],
        attributes: dict[int, FixtureAttributes],
        tag_groups: dict[int, int],
    ) -> None:
        super().__init__(scores)
        self.attributes = attributes
        self.tag_groups = tag_groups

    def without(self, gone: Collection[int]) -> FixtureImages:
        """These images but ``gone``."""
        kept = {i: tags for i, tags in self.items() if i not in gone}
        return FixtureImages(kept, self.attributes, self.tag_groups)


def brute(
    plan: PlanNode,
    data: FixtureImages,
    implying: Mapping[int, set[int]] | None = None,
) -> list[int]:
    """The images ``plan`` matches. With ``implying`` (tag id -> ids of the tags implying
    it), a tag range holds the highest stored score of the tag and the tags implying it:
    the meaning of a query with implications, evaluated on a plan bound without them."""
    return sorted(
        i
        for i, tags in data.items()
        if _matches(plan, tags, data.attributes[i], data.tag_groups, implying or {})
    )


def _matches(
    plan: PlanNode,
    tags: Mapping[int, float],
    attrs: Mapping[str, object],
    groups: Mapping[int, int],
    implying: Mapping[int, set[int]],
) -> bool:
    if isinstance(plan, PAll):
        return True
    if isinstance(plan, PNothing):
        return False
    if isinstance(plan, PTag):
        scores = [tags[t] for t in {plan.tag_id, *implying.get(plan.tag_id, ())} if t in tags]
        return bool(scores) and plan.contains(max(scores))
    if isinstance(plan, PAttr):
        return plan.ranges.contains(attrs[plan.column])  # type: ignore[arg-type]
    if isinstance(plan, PRating):
        return _rating(plan, tags) in plan.wanted
    if isinstance(plan, PTagCount):
        thresholds = dict(plan.groups)
        count = sum(
            1
            for tag_id, score in tags.items()
            if groups[tag_id] in thresholds and score >= thresholds[groups[tag_id]]
        )
        return plan.ranges.contains(count)
    if isinstance(plan, PSha):
        return attrs["sha256"] == plan.sha256
    if isinstance(plan, PMd5):
        return attrs["md5"] == plan.md5
    if isinstance(plan, PFormat):
        return attrs["format"] in plan.formats
    if isinstance(plan, PPath):
        return plan.regex().fullmatch(str(attrs["path"])) is not None
    if isinstance(plan, PNot):
        return not _matches(plan.child, tags, attrs, groups, implying)
    if isinstance(plan, PAnd):
        return all(_matches(c, tags, attrs, groups, implying) for c in plan.children)
    assert isinstance(plan, POr)
    return any(_matches(c, tags, attrs, groups, implying) for c in plan.children)


def _rating(plan: PRating, tags: Mapping[int, float]) -> int:
    """The index of the highest-scoring stored rating tag, ties to the first; -1 if none."""
    best, best_score = -1, -1.0
    for index, tag_id in enumerate(plan.tag_ids):
        if tag_id is not None and tag_id in tags and tags[tag_id] > best_score:
            best, best_score = index, tags[tag_id]
    return best


RATING_GROUPS = {r: "rating" for r in ("general", "sensitive", "questionable", "explicit")}


TAGS = ["a", "b", "c", "ab", "abc", "bc", "d", "dd", "e", "f_(x)", "char_a", "copy_b"]


RATINGS = ["general", "sensitive", "questionable", "explicit"]


GROUPS = {"char_a": "character", "copy_b": "copyright", **RATING_GROUPS}


METATAGS = [
    "width:>300", "height:100..200", "filesize:<3000", "id:3,5,7", "width:<=150,>=450",
    f"sha256:{7:064x}", f"md5:{7:032x}", f"md5:{8:032x}", "unaliased:ab", "height:250...350",
    "filesize:>=5kb",
    "filetype:jpg", "filetype:png,webp", "path:/fixture/art/*", "path:*[1]*", "path:*0?.png",
    "path:/FIXTURE/*", "path:*_*",
    "rating:g", "rating:s,q", "rating:e", "mpixels:<0.03", "mpixels:0.02..0.05", "ratio:1",
    "ratio:>1.2", "ratio:4:3,<0.8", "date:2020-01-01..", "date:<2020-01-01", "age:<1d",
    "age:>1h", "tagcount:2..4", "gentags:0", "chartags:>=1", "copytags:1", "tagcount:<=1,>=5",
]  # fmt: skip


def random_images(rng: random.Random, count: int = 150) -> list[dict[str, float]]:
    """Random general, character and copyright tags, and 0 to 4 rating tags (ties too)."""
    images = []
    for _ in range(count):
        names = [*rng.sample(TAGS, rng.randint(0, 6)), *rng.sample(RATINGS, rng.randint(0, 4))]
        images.append({t: round(rng.choice([0.5, rng.uniform(0.05, 1.0)]), 3) for t in names})
    return images


CONTROLS = ["\x00", "\x01", "\x1b", "\x7f", "\x9b"]


def random_query(rng: random.Random, depth: int = 0) -> str:
    text = _random_query(rng, depth)
    if rng.random() < 0.03:  # a control character somewhere: refused before any engine
        cut = rng.randint(0, len(text))
        text = text[:cut] + rng.choice(CONTROLS) + text[cut:]
    return text


def bound(text: str, catalog: Catalog) -> PlanNode | None:
    """The query's plan, or None when it is refused (a control character must be)."""
    try:
        return bind(parse(text).root, catalog)
    except QueryError as exc:
        if any(char in text for char in CONTROLS):
            assert exc.code is ErrorCode.BAD_CHARACTER, text
        return None  # e.g. "~" on a group; the parser's own tests cover these


def _random_query(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth >= 3 or roll < 0.4:
        if rng.random() < 0.15:
            return rng.choice(["", "-"]) + rng.choice(METATAGS)
        term = rng.choice([*TAGS, "a*", "*c", "b*", "zz*", "nope"])
        if rng.random() < 0.3:
            term += rng.choice([",>=0.5", ",0.2..0.7", ",<0.4", ",0.9", ",>0.05"])
        return rng.choice(["", "", "-", "~"]) + term
    parts = [_random_query(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    joiner = rng.choice([" ", " and ", " or "])
    text = joiner.join(parts)
    return rng.choice(["", "-"]) + f"({text})" if rng.random() < 0.5 else text


def write_fixture_images(
    session: Session,
    generation_id: int,
    images: Sequence[Mapping[str, float]],
    start: int,
    existing: Sequence[int] | None = None,
) -> list[int]:
    names = sorted({n for tags in images for n in tags})
    ids = repo.ensure_tags(session, {n: GROUP_CODE[GROUPS.get(n, "general")] for n in names})
    items: list[tuple[repo.FileFacts, repo.StoredPrediction, int | None]] = []
    for offset, tags in enumerate(images):
        i = start + offset
        facts = repo.FileFacts(f"/more/{i:05d}.png", f"{i:064x}", 500 + i, 1, 64 + i, 80, "png")
        prediction = repo.StoredPrediction(
            np.array([ids[n] for n in tags], dtype=np.int64),
            np.array(list(tags.values()), dtype=np.float32),
            np.ones(4, np.float32) / 2,
        )
        items.append((facts, prediction, None if existing is None else existing[offset]))
    return repo.write_images(session, generation_id, items)

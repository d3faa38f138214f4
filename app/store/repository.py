"""Reads and writes of the index, in batches, each batch one transaction.

A batch makes its images, tags, scores and embeddings visible together or not at all,
which is what makes ``sagashi index`` safe to kill at any moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar, cast

import numpy as np
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.errors import SagashiError
from app.store import bulk
from app.store.aliases import canonical
from app.store.models import (
    Embedding,
    Image,
    ImageChange,
    ImageTag,
    IndexState,
    ModelGeneration,
    Tag,
)
from app.tagger.defaults import CARD
from app.tagger.protocol import ModelInfo
from app.tagger.vocab import GROUP_CODE, GROUPS, TagVocabulary

T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FileFacts:
    """What the scanner learned about one file on disk."""

    path: str
    sha256: str
    size_bytes: int
    mtime_ns: int
    width: int
    height: int
    format: str
    md5: str | None = None  # from the same bytes as sha256; None when not known


@dataclass(frozen=True)
class StoredPrediction:
    """One image's stored prediction: tag ids with scores (above the floor) and embedding."""

    tag_ids: np.ndarray
    scores: np.ndarray
    embedding: np.ndarray


class GenerationMismatch(SagashiError):
    """The model given does not match the generation the index serves."""

    http_status = 409
    error_code = "generation_mismatch"


def active_generation(session: Session) -> ModelGeneration | None:
    return session.scalars(
        select(ModelGeneration).where(ModelGeneration.state == "active")
    ).one_or_none()


@dataclass(frozen=True)
class GenerationIdentity:
    """What makes two sets of scores and embeddings comparable: same model output space."""

    model_name: str
    family: str
    vocabulary_digest: str
    embedding_dim: int
    preprocess: str

    @classmethod
    def of(cls, info: ModelInfo) -> GenerationIdentity:
        return cls(
            info.name,
            info.family,
            info.vocabulary_digest,
            info.embedding_dim,
            info.preprocess_description(),
        )

    def matches(self, generation: ModelGeneration) -> bool:
        return not self.differences(generation)

    def differences(self, generation: ModelGeneration) -> list[str]:
        """What differs from ``generation``, in words (empty when the two are comparable)."""
        found = []
        if generation.vocabulary_digest != self.vocabulary_digest:
            found.append(
                f"its vocabulary (tags, groups, copyrights; sha256 {self.vocabulary_digest[:12]}) "
                f"is not the index's ({generation.vocabulary_digest[:12]})"
            )
        if generation.embedding_dim != self.embedding_dim:
            found.append(
                f"its embeddings are {self.embedding_dim}-d, the index's "
                f"{generation.embedding_dim}-d"
            )
        if generation.preprocess != self.preprocess:
            found.append(
                f"its preprocessing is '{self.preprocess}', the index's '{generation.preprocess}'"
            )
        return found


def create_generation(
    session: Session, identity: GenerationIdentity | ModelInfo, state: str
) -> ModelGeneration:
    if isinstance(identity, ModelInfo):
        identity = GenerationIdentity.of(identity)
    generation = ModelGeneration(
        model_name=identity.model_name,
        family=identity.family,
        vocabulary_digest=identity.vocabulary_digest,
        embedding_dim=identity.embedding_dim,
        preprocess=identity.preprocess,
        state=state,
        created_at=now(),
        activated_at=now() if state == "active" else None,
    )
    session.add(generation)
    session.flush()
    session.add(IndexState(generation_id=generation.id, version=0))
    return generation


def generation_for_index(
    session: Session, identity: GenerationIdentity | ModelInfo
) -> ModelGeneration:
    """The active generation, created on first use; refuse a different model."""
    if isinstance(identity, ModelInfo):
        identity = GenerationIdentity.of(identity)
    generation = active_generation(session)
    if generation is None:
        generation = create_generation(session, identity, "active")
        session.commit()
        return generation
    differences = identity.differences(generation)
    if differences:
        raise GenerationMismatch(
            f"the index serves model '{generation.model_name}' (generation {generation.id}); "
            f"'{identity.model_name}' differs in vocabulary, embedding size or preprocessing: "
            f"{'; '.join(differences)}. Use 'sagashi reindex --model-dir DIR' to switch models"
        )
    return generation


class TagMap:
    """Vocabulary index -> tag id, through the alias table. Two vocabulary entries that
    alias to one tag keep the higher score. Characters add their copyright tags, each with
    the best score of its characters."""

    def __init__(self, tag_ids: np.ndarray, copyrights: Mapping[int, Sequence[int]]) -> None:
        self.tag_ids = tag_ids
        self.copyrights = copyrights
        known = tag_ids[tag_ids >= 0]
        self.has_duplicates = len(np.unique(known)) != len(known)

    @classmethod
    def ensure(cls, session: Session, vocab: TagVocabulary, aliases: Mapping[str, str]) -> TagMap:
        """The map onto the database's tag ids, inserting the tags it lacks."""
        return cls.of(vocab, aliases, ensure_tags(session, cls.wanted(vocab, aliases)))

    @staticmethod
    def wanted(vocab: TagVocabulary, aliases: Mapping[str, str]) -> dict[str, int]:
        """Every tag the vocabulary can give, by stored (canonical) name, with its group
        code: the vocabulary's own names and the copyrights its characters imply."""
        names = [canonical(n, aliases) for n in vocab.names]
        groups = [int(c) for c in vocab.group_codes]
        copyrights = {ip for ips in vocab.char_to_copyrights.values() for ip in ips}
        # PixAI v0.9's vocabulary has one empty name (index 8968): it is never stored.
        wanted = {n: g for n, g in zip(names, groups, strict=True) if n.strip()}
        for ip in copyrights:
            wanted.setdefault(canonical(ip, aliases), GROUP_CODE["copyright"])
        return wanted

    @classmethod
    def of(cls, vocab: TagVocabulary, aliases: Mapping[str, str], ids: Mapping[str, int]) -> TagMap:
        """The map onto ``ids`` (every name :meth:`wanted` gives -> its id): the database's,
        or numbers of the caller's own when there is no database (``sagashi tag-dataset``)."""
        names = [canonical(n, aliases) for n in vocab.names]
        copyright_ids = {
            ids[canonical(char, aliases)]: [ids[canonical(ip, aliases)] for ip in ips]
            for char, ips in vocab.char_to_copyrights.items()
            if canonical(char, aliases) in ids
        }
        return cls(np.array([ids.get(n, -1) for n in names], dtype=np.int64), copyright_ids)

    def postings(self, probs: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """(tag ids, scores) of one image's tags scoring at least ``floor``."""
        return self.batch_postings(probs[np.newaxis], floor)[0]

    def batch_postings(
        self, probs: np.ndarray, floor: float
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`postings` of each row of an (N, tags) batch, in a few array operations
        over the whole batch: numpy gives the GIL up in each operation on a large array, and
        a writer that gives it up once an image waits out another thread's switch interval
        once an image (docs/benchmarks.md)."""
        if not len(probs):
            return []
        rows, columns = np.nonzero((probs >= floor) & (self.tag_ids >= 0))
        tag_ids, scores = self.tag_ids[columns], probs[rows, columns].astype(np.float32)
        if self.has_duplicates and len(tag_ids):
            # By image, then tag, the best score first: the first of each (image, tag) stays.
            order = np.lexsort((-scores, tag_ids, rows))
            rows, tag_ids, scores = rows[order], tag_ids[order], scores[order]
            first = np.concatenate(
                ([True], (tag_ids[1:] != tag_ids[:-1]) | (rows[1:] != rows[:-1]))
            )
            rows, tag_ids, scores = rows[first], tag_ids[first], scores[first]
        bounds = np.searchsorted(rows, np.arange(1, len(probs)))
        each = list(zip(np.split(tag_ids, bounds), np.split(scores, bounds), strict=True))
        if self.copyrights:
            each = [self._with_copyrights(ids, values) for ids, values in each]
        return each

    def _with_copyrights(
        self, tag_ids: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        best: dict[int, float] = {}
        for tag_id, score in zip(tag_ids.tolist(), scores.tolist(), strict=True):
            for ip in self.copyrights.get(tag_id, ()):
                if score > best.get(ip, -1.0):
                    best[ip] = score
        if not best:
            return tag_ids, scores
        present = dict(zip(tag_ids.tolist(), scores.tolist(), strict=True))
        for ip, score in best.items():
            present[ip] = max(score, present.get(ip, -1.0))
        keys = np.fromiter(present.keys(), dtype=np.int64, count=len(present))
        values = np.fromiter(present.values(), dtype=np.float32, count=len(present))
        return keys, values


def ensure_tags(session: Session, wanted: Mapping[str, int]) -> dict[str, int]:
    """Tag ids for every name, inserting the missing ones."""
    existing = dict(session.execute(select(Tag.name, Tag.id)).all())
    missing = [
        {"name": n, "group": g, "image_count": 0} for n, g in wanted.items() if n not in existing
    ]
    if missing:
        session.execute(insert(Tag), missing)
        existing = dict(session.execute(select(Tag.name, Tag.id)).all())
    return {n: existing[n] for n in wanted}


def bump_version(session: Session, generation_id: int) -> None:
    session.execute(
        update(IndexState)
        .where(IndexState.generation_id == generation_id)
        .values(version=IndexState.version + 1)
    )


# Enough for any reader that refreshes now and then; one further behind reloads in full.
CHANGES_KEPT = 2_000_000


def record_changes(session: Session, image_ids: Sequence[int]) -> None:
    """Log images whose searchable state changed, in the caller's transaction."""
    if image_ids:
        changes = {"image_id": np.asarray(image_ids, dtype=np.int64)}
        bulk.insert_columns(session, cast(Table, ImageChange.__table__), changes)


def prune_changes(session: Session, keep: int = CHANGES_KEPT) -> None:
    newest = session.scalar(select(func.max(ImageChange.seq)))
    if newest is not None and newest > keep:
        session.execute(delete(ImageChange).where(ImageChange.seq <= newest - keep))


def index_version(session: Session, generation_id: int) -> int:
    return int(
        session.scalar(select(IndexState.version).where(IndexState.generation_id == generation_id))
        or 0
    )


def write_images(
    session: Session,
    generation_id: int,
    items: Sequence[tuple[FileFacts, StoredPrediction, int | None]],
) -> list[int]:
    """Insert new images (or re-tag existing ones, by id) with their postings and
    embeddings. The caller commits."""
    stamp = now()
    rows = [_image_values(facts, stamp, generation_id) for facts, _p, _e in items]
    fresh = [row for row, (_f, _p, e) in zip(rows, items, strict=True) if e is None]
    new_ids = _insert_images(session, fresh)
    ids: list[int] = []
    for row, (_facts, _prediction, existing_id) in zip(rows, items, strict=True):
        if existing_id is None:
            ids.append(new_ids[str(row["path"])])
        else:
            session.execute(update(Image).where(Image.id == existing_id).values(**row))
            ids.append(existing_id)
    retagged = [i for (_f, _p, e), i in zip(items, ids, strict=True) if e is not None]
    if retagged:
        clear_predictions(session, generation_id, retagged)
    insert_predictions(
        session, generation_id, [(i, p) for (_f, p, _e), i in zip(items, ids, strict=True)]
    )
    bump_version(session, generation_id)
    record_changes(session, ids)
    return ids


def _insert_images(session: Session, rows: list[dict[str, object]]) -> dict[str, int]:
    """Insert image rows; their ids by path. Through the bulk path (one step a statement
    on SQLite, see app.store.bulk), then the ids by the live-path key: on SQLite, INSERT
    ... RETURNING in parameter order ran one statement per row, about a tenth of a large
    import's time."""
    if not rows:
        return {}
    bulk.insert_records(session, cast(Table, Image.__table__), rows)
    return live_ids_by_path(session, [str(row["path"]) for row in rows])


def live_ids_by_path(session: Session, paths: Sequence[str]) -> dict[str, int]:
    """The ids of the live images at these paths (a path has at most one)."""
    found: dict[str, int] = {}
    live = Image.deleted_at.is_(None)
    for chunk in chunks(paths, 1000):
        query = select(Image.path, Image.id).where(live, Image.path.in_(chunk))
        found.update((path, image_id) for path, image_id in session.execute(query))
    return found


def _image_values(facts: FileFacts, stamp: datetime, generation_id: int) -> dict[str, object]:
    return {
        "path": facts.path,
        "sha256": facts.sha256,
        "md5": facts.md5,
        "size_bytes": facts.size_bytes,
        "mtime_ns": facts.mtime_ns,
        "width": facts.width,
        "height": facts.height,
        "format": facts.format,
        "indexed_at": stamp,
        "generation_id": generation_id,
        "deleted_at": None,
    }


def insert_predictions(
    session: Session, generation_id: int, rows: Sequence[tuple[int, StoredPrediction]]
) -> None:
    """Postings and embeddings of many images, through the bulk path."""
    if not rows:
        return
    counts = [len(p.tag_ids) for _, p in rows]
    tag_ids = np.concatenate([p.tag_ids for _, p in rows]).astype(np.int64)
    scores = np.concatenate([p.scores for _, p in rows]).astype(np.float32)
    ids = np.array([i for i, _ in rows], dtype=np.int64)
    image_ids = np.repeat(ids, counts)
    order = np.lexsort((image_ids, scores, tag_ids))  # the clustered key's order
    postings: dict[str, np.ndarray | int] = {
        "generation_id": generation_id,
        "tag_id": tag_ids[order],
        "score": scores[order],
        "image_id": image_ids[order],
    }
    bulk.insert_columns(session, cast(Table, ImageTag.__table__), postings)
    vectors: dict[str, np.ndarray | int] = {
        "generation_id": generation_id,
        "image_id": ids,
        "vector": stored_vectors(np.stack([p.embedding for _, p in rows])),
    }
    bulk.insert_columns(session, cast(Table, Embedding.__table__), vectors)


def clear_predictions(session: Session, generation_id: int, image_ids: Sequence[int]) -> None:
    for chunk in chunks(image_ids, 500):
        session.execute(
            delete(ImageTag).where(
                ImageTag.generation_id == generation_id, ImageTag.image_id.in_(chunk)
            )
        )
        session.execute(
            delete(Embedding).where(
                Embedding.generation_id == generation_id, Embedding.image_id.in_(chunk)
            )
        )


def move_image(session: Session, image_id: int, path: str, size_bytes: int, mtime_ns: int) -> None:
    """A file found at a new path with known content keeps its id, tags and embedding."""
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(path=path, size_bytes=size_bytes, mtime_ns=mtime_ns)
    )
    record_changes(session, [image_id])


def touch_image(
    session: Session, image_id: int, size_bytes: int, mtime_ns: int, md5: str | None = None
) -> None:
    """Record a new size and mtime for the same content; ``md5`` fills in a digest the row
    lacked (migration 0006 could not read the file), which md5: searches then see."""
    values: dict[str, object] = {"size_bytes": size_bytes, "mtime_ns": mtime_ns}
    if md5 is not None:
        values["md5"] = md5
    session.execute(update(Image).where(Image.id == image_id).values(**values))
    if md5 is not None:
        record_changes(session, [image_id])


def mark_deleted(session: Session, image_ids: Sequence[int]) -> None:
    """Keep the row as a tombstone; drop its postings and embeddings in every generation."""
    stamp = now()
    for chunk in chunks(image_ids, 500):
        session.execute(update(Image).where(Image.id.in_(chunk)).values(deleted_at=stamp))
        session.execute(delete(ImageTag).where(ImageTag.image_id.in_(chunk)))
        session.execute(delete(Embedding).where(Embedding.image_id.in_(chunk)))
    for generation_id in session.scalars(select(IndexState.generation_id)).all():
        bump_version(session, generation_id)
    record_changes(session, image_ids)


def refresh_tag_counts(
    session: Session, generation_id: int, thresholds: Mapping[str, float] | None = None
) -> None:
    """image_count: images of the generation tagged at the group's default threshold (the
    indexer passes its settings' thresholds; the card's when none are given)."""
    session.execute(update(Tag).values(image_count=0))
    for group, threshold in (thresholds or CARD.thresholds()).items():
        counts = (
            select(ImageTag.tag_id, func.count().label("n"))
            .join(Tag, Tag.id == ImageTag.tag_id)
            .where(
                ImageTag.generation_id == generation_id,
                ImageTag.score >= threshold,
                Tag.group == GROUPS.index(group),
            )
            .group_by(ImageTag.tag_id)
        )
        rows = session.execute(counts).all()
        if rows:
            session.execute(
                update(Tag),
                [{"id": tag_id, "image_count": n} for tag_id, n in rows],
            )


def encode_vector(vector: np.ndarray) -> bytes:
    return bytes(stored_vectors(np.asarray(vector)[np.newaxis])[0].tobytes())


def stored_vectors(matrix: np.ndarray) -> np.ndarray:
    """An (N, D) matrix as its rows are stored (little-endian float16), converted in one
    operation (see :meth:`TagMap.batch_postings` for why one)."""
    return np.ascontiguousarray(matrix, dtype="<f2")


def decode_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), dim).astype(np.float32)


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

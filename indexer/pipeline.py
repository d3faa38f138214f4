"""``sagashi index``: turn folders of images into index rows, incrementally and crash-safely.

Every write is part of a batch transaction that holds images, postings, embeddings and
file moves together, so a run killed at any moment leaves the database as it was after
the last committed batch; rerunning picks up the rest. The FAISS index is rebuilt from
the embeddings table when the run finishes (and at start-up of any reader that finds it
stale), so it always agrees with the database.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.store import repository as repo
from app.store.db import session_factory
from app.store.digests import of_bytes
from app.store.formats import canonical_format
from app.store.models import Image
from app.store.roots import add_roots, library_roots
from app.tagger import pillow_notes
from app.tagger.batching import lookahead, ordered_map, predict_stacked
from app.tagger.decode import decode_with_meta
from app.tagger.defaults import CARD
from app.tagger.errors import ImageDecodeError
from app.tagger.preprocess import ImagePreprocess
from app.tagger.protocol import Prediction, Tagger
from indexer.scan import Found, Problem, walk

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Existing:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    generation_id: int | None
    md5: str | None = None


@dataclass
class Loaded:
    """A candidate file read, hashed and (unless its content is already known) decoded."""

    found: Found
    sha256: str = ""
    md5: str = ""
    tensor: torch.Tensor | None = None
    facts: repo.FileFacts | None = None
    error: ImageDecodeError | None = None


@dataclass
class IndexSummary:
    new: int = 0
    modified: int = 0
    unchanged: int = 0
    moved: int = 0
    deleted: int = 0
    failures: list[Problem] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def as_dict(self) -> dict[str, object]:
        return {
            "new": self.new,
            "modified": self.modified,
            "unchanged": self.unchanged,
            "moved": self.moved,
            "deleted": self.deleted,
            "failed": self.failed,
            "failed_by_reason": dict(Counter(p.code for p in self.failures)),
        }


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int
    workers: int
    max_pixels: int
    jpeg_draft: bool
    score_floor: float
    aliases: dict[str, str]
    # Folders outside the indexed roots that the server also serves (SAGASHI_MEDIA_ROOTS):
    # a symlink may lead into them and still be indexed.
    media_roots: tuple[str, ...] = ()
    # The thresholds tag counts are taken at (autocomplete, wildcard ranking): the server's.
    count_thresholds: Mapping[str, float] = field(default_factory=CARD.thresholds)


Progress = Callable[[int, int], None]  # (files done, files total)


class Indexer:
    def __init__(self, engine: Engine, tagger: Tagger, options: IndexOptions) -> None:
        self.engine = engine
        self.tagger = tagger
        self.options = options
        self.sessions = session_factory(engine)

    def run(self, roots: Sequence[Path], progress: Progress | None = None) -> IndexSummary:
        summary = IndexSummary()
        found: list[Found] = []
        with self.sessions() as session:
            served = [*library_roots(session), *self.options.media_roots]
        for item in walk(roots, served):
            (found if isinstance(item, Found) else summary.failures).append(item)  # type: ignore[arg-type]
        with (
            self.sessions() as session,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sagashi-model") as model,
        ):
            generation = repo.generation_for_index(session, self.tagger.info)
            tag_map = repo.TagMap.ensure(session, self.tagger.vocab, self.options.aliases)
            add_roots(session, roots)
            session.commit()
            existing = self._existing(session, roots)
            batch = _Batch(session, generation.id, tag_map, self.options.score_floor, model)
            candidates, missing = self._classify(found, existing, generation.id, summary)
            total = len(found)
            done = summary.unchanged
            if progress:
                progress(done, total)
            for loaded in self._load(candidates, existing, missing):
                self._place(loaded, existing, missing, batch, summary)
                if len(batch.to_tag) >= self.options.batch_size:
                    batch.flush(self.tagger)
                done += 1
                if progress:
                    progress(done, total)
            batch.flush(self.tagger)
            batch.drain()
            gone = [row.id for rows in missing.values() for row in rows]
            if gone:
                repo.mark_deleted(session, gone)
                summary.deleted = len(gone)
            repo.refresh_tag_counts(session, generation.id, self.options.count_thresholds)
            repo.prune_changes(session)
            session.commit()
        summary.new, summary.modified = batch.new, batch.modified
        return summary

    def _existing(self, session: Session, roots: Sequence[Path]) -> dict[str, Existing]:
        rows: dict[str, Existing] = {}
        for root in roots:
            prefix = os.path.abspath(root)
            under = (Image.path == prefix) | (
                (Image.path >= prefix + os.sep) & (Image.path < prefix + chr(ord(os.sep) + 1))
            )
            query = select(
                Image.id,
                Image.path,
                Image.size_bytes,
                Image.mtime_ns,
                Image.sha256,
                Image.generation_id,
                Image.md5,
            ).where(Image.deleted_at.is_(None), under)
            for row in session.execute(query):
                rows[row.path] = Existing(*row)
        return rows

    @staticmethod
    def _classify(
        found: list[Found], existing: dict[str, Existing], generation_id: int, summary: IndexSummary
    ) -> tuple[list[Found], dict[str, list[Existing]]]:
        seen = {f.path for f in found}
        missing: dict[str, list[Existing]] = {}
        for row in existing.values():
            if row.path not in seen:
                missing.setdefault(row.sha256, []).append(row)
        candidates = []
        for item in found:
            current = existing.get(item.path)
            if (
                current is not None
                and current.size == item.size
                and current.mtime_ns == item.mtime_ns
                and current.generation_id == generation_id
                and current.md5 is not None  # else read again: the md5 it lacks
            ):
                summary.unchanged += 1
            else:
                candidates.append(item)
        return candidates, missing

    def _load(
        self,
        candidates: list[Found],
        existing: dict[str, Existing],
        missing: dict[str, list[Existing]],
    ) -> Iterable[Loaded]:
        known = {row.sha256 for rows in missing.values() for row in rows}
        known |= {existing[c.path].sha256 for c in candidates if c.path in existing}
        options = self.options
        preprocess = self.tagger.preprocess

        def load(item: Found) -> Loaded:
            return load_candidate(item, preprocess, options, skip_decode=known)

        workers = options.workers
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sagashi-index") as pool:
            for _item, loaded in ordered_map(
                pool, load, candidates, lookahead(options.batch_size, workers)
            ):
                yield loaded

    def _place(
        self,
        loaded: Loaded,
        existing: dict[str, Existing],
        missing: dict[str, list[Existing]],
        batch: _Batch,
        summary: IndexSummary,
    ) -> None:
        found = loaded.found
        if loaded.error is not None:
            summary.failures.append(Problem(found.path, loaded.error.code, loaded.error.message))
            return
        row = existing.get(found.path)
        if (
            row is not None
            and row.sha256 == loaded.sha256
            and row.generation_id == batch.generation_id
        ):
            md5 = loaded.md5 if row.md5 is None else None
            repo.touch_image(batch.session, row.id, found.size, found.mtime_ns, md5)
            summary.unchanged += 1
            return
        movers = missing.get(loaded.sha256)
        if movers:
            source = movers.pop(0)
            if row is not None:  # the file at this path was replaced by a moved one
                repo.mark_deleted(batch.session, [row.id])
                summary.deleted += 1
            repo.move_image(batch.session, source.id, found.path, found.size, found.mtime_ns)
            summary.moved += 1
            return
        if loaded.tensor is None:  # content was expected to be known; decode it now
            loaded = load_candidate(found, self.tagger.preprocess, self.options, skip_decode=set())
            if loaded.error is not None:
                summary.failures.append(
                    Problem(found.path, loaded.error.code, loaded.error.message)
                )
                return
        batch.add(loaded, row.id if row is not None else None)


Waiting = list[tuple[Loaded, int | None]]


class _Batch:
    """Files waiting for one forward pass and one transaction.

    The forward of a batch runs in the model thread while the main thread writes the batch
    before it, so the accelerator is not idle during database work. Writes stay in input
    order, each batch one transaction."""

    def __init__(
        self,
        session: Session,
        generation_id: int,
        tag_map: repo.TagMap,
        floor: float,
        model: Executor,
    ) -> None:
        self.session = session
        self.generation_id = generation_id
        self.tag_map = tag_map
        self.floor = floor
        self.model = model
        self.to_tag: Waiting = []
        self.in_flight: tuple[Waiting, Future[Prediction]] | None = None
        self.new = 0
        self.modified = 0

    def add(self, loaded: Loaded, existing_id: int | None) -> None:
        self.to_tag.append((loaded, existing_id))

    def flush(self, tagger: Tagger) -> None:
        """Start the forward of the files waiting, then write the batch before them."""
        waiting, self.to_tag = self.to_tag, []
        future = None
        if waiting:
            tensors = [item.tensor for item, _ in waiting]
            future = self.model.submit(predict_stacked, tagger, tensors)  # type: ignore[arg-type]
        self.drain()
        if future is not None:
            self.in_flight = (waiting, future)

    def drain(self) -> None:
        """Write the batch in flight, if any, and commit what the session holds."""
        if self.in_flight is not None:
            waiting, future = self.in_flight
            self.in_flight = None
            self._write(waiting, future.result())
        self.session.commit()

    def _write(self, waiting: Waiting, prediction: Prediction) -> None:
        items = []
        for row, (loaded, existing_id) in enumerate(waiting):
            tag_ids, scores = self.tag_map.postings(prediction.probs[row], self.floor)
            stored = repo.Prediction(tag_ids, scores, prediction.embeddings[row])
            assert loaded.facts is not None
            items.append((loaded.facts, stored, existing_id))
            if existing_id is None:
                self.new += 1
            else:
                self.modified += 1
        repo.write_images(self.session, self.generation_id, items)


def load_candidate(
    item: Found, preprocess: ImagePreprocess, options: IndexOptions, skip_decode: set[str]
) -> Loaded:
    """Read, hash and decode one file from the same bytes, so the hash always describes
    the pixels that were tagged. A file that changes while it is read is skipped."""
    loaded = Loaded(item)
    try:
        with open(item.path, "rb") as handle:
            before = os.fstat(handle.fileno())
            data = handle.read()
            after = os.fstat(handle.fileno())
    except FileNotFoundError:
        loaded.error = ImageDecodeError("not_found", "file vanished during the scan")
        return loaded
    except OSError as exc:
        loaded.error = ImageDecodeError("unreadable", f"cannot read file: {exc.strerror or exc}")
        return loaded
    stamp = (before.st_size, before.st_mtime_ns)
    if stamp != (after.st_size, after.st_mtime_ns) or stamp != (item.size, item.mtime_ns):
        loaded.error = ImageDecodeError(
            "changed", "file changed during the scan; it will be indexed on the next run"
        )
        return loaded
    digests = of_bytes(data)  # the same bytes as the pixels tagged
    loaded.sha256, loaded.md5 = digests.sha256, digests.md5
    if loaded.sha256 in skip_decode:
        return loaded
    try:
        draft = preprocess.draft_request if options.jpeg_draft else None
        with pillow_notes.noting(item.path):  # Pillow's warnings name the file
            image, meta = decode_with_meta(data, max_pixels=options.max_pixels, draft=draft)
        loaded.tensor = preprocess.tensor(image)
    except ImageDecodeError as exc:
        loaded.error = exc
        return loaded
    loaded.facts = repo.FileFacts(
        item.path,
        loaded.sha256,
        item.size,
        item.mtime_ns,
        meta.width,
        meta.height,
        canonical_format(meta.format),
        loaded.md5,
    )
    return loaded

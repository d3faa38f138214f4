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
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.settings import DEVICE_INPUT_MEMORY_MB
from app.store import repository as repo
from app.store.db import session_factory
from app.store.formats import canonical_format
from app.store.models import Image
from app.store.roots import add_roots, library_roots
from app.tagger.batching import Pixels, lookahead, runs_on_gpu
from app.tagger.defaults import CARD
from app.tagger.device_decode import supports
from app.tagger.errors import ImageDecodeError
from app.tagger.protocol import Prediction, Tagger
from indexer.forwarding import InFlight
from indexer.readers import Readers, readers_for
from indexer.reading import DeviceInputBudget, Read, ReadSpec, read_file
from indexer.scan import Found, Problem, walk

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
    pixels: Pixels | None = field(default=None, repr=False)
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
    # Read files in worker processes instead of threads (see indexer.readers; threads
    # measured faster on a 16-core H200 host, docs/benchmarks.md).
    read_processes: bool = False
    # Hand JPEGs to the model's device to decode, and other images to pad and resize
    # (app.tagger.device_decode); None: when the model runs on a GPU and its preprocessing
    # can run there.
    device_jpeg: bool | None = None
    device_resize: bool | None = None
    # What the inputs waiting for the device may hold at once (indexer.reading).
    device_input_bytes: int = DEVICE_INPUT_MEMORY_MB << 20

    def read_spec(self, tagger: Tagger, skip_decode: frozenset[str] = frozenset()) -> ReadSpec:
        able = supports(tagger.preprocess) and hasattr(tagger, "device")

        def on_device(choice: bool | None) -> bool:
            return able and (runs_on_gpu(tagger) if choice is None else choice)

        return ReadSpec(
            tagger.preprocess,
            self.max_pixels,
            self.jpeg_draft,
            skip_decode,
            device_jpeg=on_device(self.device_jpeg),
            device_resize=on_device(self.device_resize),
        )

    def readers(self, tagger: Tagger, skip_decode: frozenset[str] = frozenset()) -> Readers:
        ahead = lookahead(self.batch_size, self.workers)
        spec = self.read_spec(tagger, skip_decode)
        budget = DeviceInputBudget(self.device_input_bytes)
        return readers_for(spec, self.workers, ahead, self.read_processes, budget)


Progress = Callable[[int, int], None]  # (files done, files total)


class Indexer:
    def __init__(self, engine: Engine, tagger: Tagger, options: IndexOptions) -> None:
        self.engine = engine
        self.tagger = tagger
        self.options = options
        self.sessions = session_factory(engine)

    def run(self, roots: Sequence[Path], progress: Progress | None = None) -> IndexSummary:
        summary = IndexSummary()
        found = self._scan(roots, summary)
        with self.sessions() as session:
            generation = repo.generation_for_index(session, self.tagger.info)
            tag_map = repo.TagMap.ensure(session, self.tagger.vocab, self.options.aliases)
            add_roots(session, roots)
            session.commit()
            existing = self._existing(session, roots)
            batch = _Batch(session, generation.id, tag_map, self.options.score_floor)
            candidates, missing = self._classify(found, existing, generation.id, summary)
            total = len(found)
            done = summary.unchanged
            if progress:
                progress(done, total)
            with InFlight(self.tagger, batch.write) as model:
                for loaded in self._load(candidates, existing, missing):
                    self._place(loaded, existing, missing, batch, summary)
                    if len(batch.to_tag) >= self.options.batch_size:
                        batch.flush(model)
                    done += 1
                    if progress:
                        progress(done, total)
                batch.flush(model)
                model.drain()
            session.commit()
            self._finish(session, generation.id, missing, summary)
        summary.new, summary.modified = batch.new, batch.modified
        summary.failures.extend(batch.failures)
        return summary

    def _scan(self, roots: Sequence[Path], summary: IndexSummary) -> list[Found]:
        """The files under ``roots``; what cannot be indexed goes to the summary's failures."""
        found: list[Found] = []
        with self.sessions() as session:
            served = [*library_roots(session), *self.options.media_roots]
        for item in walk(roots, served):
            (found if isinstance(item, Found) else summary.failures).append(item)  # type: ignore[arg-type]
        return found

    def _finish(
        self,
        session: Session,
        generation_id: int,
        missing: dict[str, list[Existing]],
        summary: IndexSummary,
    ) -> None:
        """Mark the files gone from the folders deleted, refresh tag counts, prune the
        change log, commit."""
        gone = [row.id for rows in missing.values() for row in rows]
        if gone:
            repo.mark_deleted(session, gone)
            summary.deleted += len(gone)  # files replaced by moved ones are counted already
        repo.refresh_tag_counts(session, generation_id, self.options.count_thresholds)
        repo.prune_changes(session)
        session.commit()

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
        readers = self.options.readers(self.tagger, frozenset(known))
        tasks = ((c.path, (c.size, c.mtime_ns)) for c in candidates)
        for item, read in zip(candidates, readers.map(tasks), strict=True):
            yield loaded_from(item, read)

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
        if loaded.pixels is None:  # content was expected to be known; read it now
            spec = self.options.read_spec(self.tagger)
            loaded = loaded_from(found, read_file(spec, found.path, (found.size, found.mtime_ns)))
            if loaded.error is not None:
                summary.failures.append(
                    Problem(found.path, loaded.error.code, loaded.error.message)
                )
                return
        batch.add(loaded, row.id if row is not None else None)


Waiting = list[tuple[Loaded, int | None]]


class _Batch:
    """Files waiting for one forward pass and one transaction (written in input order)."""

    def __init__(self, session: Session, generation_id: int, tag_map: repo.TagMap, floor: float):
        self.session = session
        self.generation_id = generation_id
        self.tag_map = tag_map
        self.floor = floor
        self.to_tag: Waiting = []
        self.new = 0
        self.modified = 0
        self.failures: list[Problem] = []

    def add(self, loaded: Loaded, existing_id: int | None) -> None:
        self.to_tag.append((loaded, existing_id))

    def flush(self, model: InFlight[tuple[Loaded, int | None]]) -> None:
        """Hand the files waiting to the model; earlier batches are written meanwhile."""
        waiting, self.to_tag = self.to_tag, []
        model.submit(waiting, handed_over([item for item, _ in waiting]))

    def write(self, waiting: Waiting, prediction: Prediction) -> None:
        items = []
        postings = self.tag_map.batch_postings(prediction.probs, self.floor)
        for row, (loaded, existing_id) in enumerate(waiting):
            error = prediction.errors.get(row)
            if error is not None:  # a JPEG the device and then the CPU could not decode
                self.failures.append(Problem(loaded.found.path, error.code, error.message))
                continue
            tag_ids, scores = postings[row]
            stored = repo.StoredPrediction(tag_ids, scores, prediction.embeddings[row])
            assert loaded.facts is not None
            items.append((loaded.facts, stored, existing_id))
            if existing_id is None:
                self.new += 1
            else:
                self.modified += 1
        repo.write_images(self.session, self.generation_id, items)
        self.session.commit()


def handed_over(files: Sequence[Loaded]) -> list[Pixels]:
    """The files' model input, taken off them for the staging, which drops it once the batch
    is on the device: a batch waiting for its write then holds no frames or JPEG bytes."""
    pixels = []
    for loaded in files:
        assert loaded.pixels is not None  # decoded: only such files are batched
        pixels.append(loaded.pixels)
        loaded.pixels = None
    return pixels


def loaded_from(item: Found, read: Read) -> Loaded:
    """The indexer's view of one read file: its facts for the images table."""
    pixels = read.model_input()
    loaded = Loaded(item, read.sha256, read.md5, pixels, error=read.error)
    if pixels is not None:
        loaded.facts = repo.FileFacts(
            item.path,
            read.sha256,
            item.size,
            item.mtime_ns,
            read.width,
            read.height,
            canonical_format(read.format),
            read.md5,
        )
    return loaded

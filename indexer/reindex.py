"""``sagashi reindex``: re-tag the collection with a new or updated model, side by side.

The new model's scores and embeddings go into a *building* generation while search keeps
serving the active one. When every live image has been re-tagged, one transaction retires
the old generation and activates the new one (its FAISS index is built first), so readers
switch from one complete index to the other. A killed reindex resumes where it stopped:
images already in the building generation are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, delete, exists, func, select, update
from sqlalchemy.orm import Session

from app.errors import SagashiError
from app.query import ErrorCode, QueryError, parse
from app.search.binder import Binder
from app.search.catalog import Catalog
from app.search.sql_engine import execute
from app.store import repository as repo
from app.store import vectors
from app.store.db import session_factory
from app.store.models import Embedding, Image, ImageTag, IndexState, ModelGeneration, Tag
from app.tagger.batching import Pixels
from app.tagger.protocol import Prediction, Tagger
from indexer.forwarding import InFlight
from indexer.pipeline import IndexOptions
from indexer.scan import Problem

log = logging.getLogger(__name__)

CHUNK = 2000


class ReindexError(SagashiError):
    """The reindex cannot start or cannot switch; the message says what to do."""

    http_status = 409
    error_code = "reindex_refused"


@dataclass
class ReindexSummary:
    generation_id: int = 0
    retagged: int = 0
    already_done: int = 0
    switched: bool = False
    failures: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "generation": self.generation_id,
            "retagged": self.retagged,
            "already_done": self.already_done,
            "switched": self.switched,
            "failed": len(self.failures),
        }


class Reindexer:
    def __init__(
        self,
        engine: Engine,
        tagger: Tagger,
        options: IndexOptions,
        data_dir: Path,
        where: str | None = None,
    ) -> None:
        self.engine = engine
        self.tagger = tagger
        self.options = options
        self.data_dir = data_dir
        self.where = where
        self.sessions = session_factory(engine)

    def run(self, progress: Callable[[int, int], None] | None = None) -> ReindexSummary:
        if self.where is not None:
            return self._run_where(self.where, progress)
        summary = ReindexSummary()
        with self.sessions() as session:
            generation = self._building_generation(session)
            summary.generation_id = generation.id
            tag_map = repo.TagMap.ensure(session, self.tagger.vocab, self.options.aliases)
            session.commit()
            total = self._live_count(session)
            summary.already_done = total - self._todo_count(session, generation.id)
            failed: set[int] = set()
            while True:  # images indexed meanwhile into the old generation join the next pass
                todo = [t for t in self._todo(session, generation.id) if t[0] not in failed]
                if not todo:
                    break
                failed |= self._retag(
                    session, generation.id, tag_map, todo, summary, progress, total
                )
            if summary.failures:
                return summary
            vectors.rebuild(self.engine, self.data_dir, generation.id)
            self._switch(session, generation.id)
            summary.switched = True
        return summary

    def _run_where(self, where: str, progress: Callable[[int, int], None] | None) -> ReindexSummary:
        """Re-tag the images a query matches, in place in the active generation. Only the
        model that built that generation may do this: another model's scores and embeddings
        must not mix with the rest, so it re-tags everything, side by side."""
        summary = ReindexSummary()
        with self.sessions() as session:
            active = repo.active_generation(session)
            if active is None:
                raise ReindexError("the index is empty; run 'sagashi index' first")
            identity = repo.GenerationIdentity.of(self.tagger.info)
            if active.model_name != identity.model_name or not identity.matches(active):
                raise ReindexError(
                    f"--where re-tags part of the index with the model that built it "
                    f"('{active.model_name}'); '{identity.model_name}' must re-tag every "
                    "image: run reindex without --where"
                )
            summary.generation_id = active.id
            tag_map = repo.TagMap.ensure(session, self.tagger.vocab, self.options.aliases)
            session.commit()
            todo = matching_images(session, active.id, where, self.options.aliases)
            self._retag(session, active.id, tag_map, todo, summary, progress, len(todo))
            repo.refresh_tag_counts(session, active.id, self.options.count_thresholds)
            session.commit()
        vectors.rebuild(self.engine, self.data_dir, summary.generation_id)
        return summary

    def _building_generation(self, session: Session) -> ModelGeneration:
        identity = repo.GenerationIdentity.of(self.tagger.info)
        active = repo.active_generation(session)
        if active is None:
            raise ReindexError("the index is empty; run 'sagashi index' first")
        building = session.scalars(
            select(ModelGeneration).where(ModelGeneration.state == "building")
        ).all()
        for generation in building:
            if identity.matches(generation):
                log.info("resuming generation %d", generation.id)
                return generation
        if building:
            ids = ", ".join(str(g.id) for g in building)
            raise ReindexError(
                f"another reindex (generation {ids}) is unfinished with a different model; "
                f"finish it, or drop it with 'sagashi generations drop {building[0].id}'"
            )
        generation = repo.create_generation(session, identity, "building")
        session.commit()
        return generation

    @staticmethod
    def _live_count(session: Session) -> int:
        return int(session.scalar(select(func.count()).where(Image.deleted_at.is_(None))) or 0)

    def _todo_count(self, session: Session, generation_id: int) -> int:
        return len(self._todo(session, generation_id))

    @staticmethod
    def _todo(session: Session, generation_id: int) -> list[tuple[int, str]]:
        done = exists().where(
            Embedding.generation_id == generation_id, Embedding.image_id == Image.id
        )
        rows = session.execute(
            select(Image.id, Image.path).where(Image.deleted_at.is_(None), ~done).order_by(Image.id)
        ).all()
        return [(row.id, row.path) for row in rows]

    def _retag(
        self,
        session: Session,
        generation_id: int,
        tag_map: repo.TagMap,
        todo: Sequence[tuple[int, str]],
        summary: ReindexSummary,
        progress: Callable[[int, int], None] | None,
        total: int,
    ) -> set[int]:
        """Re-tag ``todo``; returns the ids that failed. The same readers and model
        threads as ``sagashi index``: files are read ahead while the model runs one batch
        and the batch before is written."""
        options = self.options
        failed: set[int] = set()
        handled = 0

        def report() -> None:
            if progress:
                progress(summary.already_done + handled, total)

        def write(batch: list[tuple[int, str]], prediction: Prediction) -> None:
            kept = []
            for row, (image_id, path) in enumerate(batch):
                error = prediction.errors.get(row)
                if error is None:
                    kept.append((row, image_id))
                else:  # a JPEG the device and then the CPU could not decode
                    summary.failures.append(Problem(path, error.code, error.message))
                    failed.add(image_id)
            self._write(session, generation_id, tag_map, kept, prediction)
            summary.retagged += len(kept)

        readers = options.readers(self.tagger)
        ids: list[tuple[int, str]] = []
        pixels: list[Pixels] = []
        with InFlight(self.tagger, write) as model:
            for (image_id, _path), read in zip(
                todo, readers.map((path, None) for _id, path in todo), strict=True
            ):
                model_input = read.model_input()
                if read.error is not None or model_input is None:
                    error = read.error
                    summary.failures.append(
                        Problem(
                            read.path,
                            error.code if error else "corrupt",
                            error.message if error else "not decodable",
                        )
                    )
                    failed.add(image_id)
                else:
                    ids.append((image_id, read.path))
                    pixels.append(model_input)
                if len(ids) >= options.batch_size:
                    model.submit(ids, pixels)
                    ids, pixels = [], []
                handled += 1
                report()
            model.submit(ids, pixels)
            model.drain()
        report()  # a finished run is done == total
        return failed

    def _write(
        self,
        session: Session,
        generation_id: int,
        tag_map: repo.TagMap,
        batch: list[tuple[int, int]],
        prediction: Prediction,
    ) -> None:
        """Write the (row, image id) pairs of ``batch`` from the prediction's rows."""
        if not batch:
            return
        rows = []
        postings = tag_map.batch_postings(prediction.probs, self.options.score_floor)
        for row, image_id in batch:
            tag_ids, scores = postings[row]
            rows.append(
                (image_id, repo.StoredPrediction(tag_ids, scores, prediction.embeddings[row]))
            )
        image_ids = [image_id for _row, image_id in batch]
        if self.where is not None:  # in place: the old scores go in the same transaction
            repo.clear_predictions(session, generation_id, image_ids)
            repo.record_changes(session, image_ids)
        repo.insert_predictions(session, generation_id, rows)
        repo.bump_version(session, generation_id)
        session.commit()

    def _switch(self, session: Session, generation_id: int) -> None:
        """One transaction: readers see the old complete index or the new one."""
        stamp = repo.now()
        session.execute(
            update(ModelGeneration).where(ModelGeneration.state == "active").values(state="retired")
        )
        session.execute(
            update(ModelGeneration)
            .where(ModelGeneration.id == generation_id)
            .values(state="active", activated_at=stamp)
        )
        session.execute(
            update(Image).where(Image.deleted_at.is_(None)).values(generation_id=generation_id)
        )
        repo.refresh_tag_counts(session, generation_id, self.options.count_thresholds)
        repo.prune_changes(session)
        session.commit()
        log.info("generation %d is now active", generation_id)


def matching_images(
    session: Session, generation_id: int, where: str, aliases: Mapping[str, str]
) -> list[tuple[int, str]]:
    """(id, path) of the live images a search query matches (QueryError if it is bad)."""
    query = parse(where)
    for name, value in (("order", query.order), ("similar", query.similar)):
        if value is not None:
            message = f"--where selects images by a filter; '{name}:' has no meaning there"
            raise QueryError(ErrorCode.BAD_VALUE, message, max(0, where.find(f"{name}:")))
    rows = session.execute(select(Tag.id, Tag.name, Tag.group, Tag.image_count)).all()
    catalog = Catalog.from_rows([(r[0], r[1], r[2], r[3]) for r in rows], aliases)
    ids = execute(session, Binder(catalog).bind(query.root), generation_id)
    found: list[tuple[int, str]] = []
    for chunk in repo.chunks(ids, 500):
        found += [
            (row.id, row.path)
            for row in session.execute(
                select(Image.id, Image.path).where(Image.id.in_(chunk)).order_by(Image.id)
            )
        ]
    return found[: query.limit] if query.limit else found


def drop_generation(engine: Engine, data_dir: Path, generation_id: int) -> None:
    """Delete a retired or unfinished generation's postings, embeddings and FAISS files."""
    with session_factory(engine)() as session:
        generation = session.get(ModelGeneration, generation_id)
        if generation is None:
            raise ReindexError(f"no generation {generation_id}; see 'sagashi generations list'")
        if generation.state == "active":
            raise ReindexError(
                f"generation {generation_id} is active and serving searches; "
                "reindex with another model first"
            )
        session.execute(delete(ImageTag).where(ImageTag.generation_id == generation_id))
        session.execute(delete(Embedding).where(Embedding.generation_id == generation_id))
        session.execute(delete(IndexState).where(IndexState.generation_id == generation_id))
        session.execute(
            update(Image).where(Image.generation_id == generation_id).values(generation_id=None)
        )
        session.delete(generation)
        session.commit()
    for path in vectors.generation_files(data_dir, generation_id):
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class GenerationRow:
    id: int
    model_name: str
    family: str
    state: str
    embedding_dim: int
    images: int
    created_at: str
    activated_at: str | None


def list_generations(engine: Engine) -> Iterator[GenerationRow]:
    with session_factory(engine)() as session:
        for generation in session.scalars(select(ModelGeneration).order_by(ModelGeneration.id)):
            images = int(
                session.scalar(select(func.count()).where(Embedding.generation_id == generation.id))
                or 0
            )
            yield GenerationRow(
                generation.id,
                generation.model_name,
                generation.family,
                generation.state,
                generation.embedding_dim,
                images,
                generation.created_at.isoformat(),
                generation.activated_at.isoformat() if generation.activated_at else None,
            )

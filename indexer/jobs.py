"""The operations behind 'sagashi index', 'sagashi reindex' and FAISS rebuilds.

The CLI commands and 'sagashi worker' (which runs jobs queued through the admin API) call
these same functions, so a job does exactly what the command would. Each runs inside a
:func:`indexer.runs.tracked` run and finishes its job record; a clean stop raises
:class:`JobStopped` with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.errors import SagashiError
from app.query import QueryError
from app.search.segment_engine import write_segments
from app.settings import Settings
from app.store import vectors
from app.store.aliases import AliasError, load_aliases
from app.store.db import session_factory
from app.store.repository import GenerationMismatch, active_generation
from app.tagger.protocol import Tagger
from indexer import thumbnails
from indexer.pipeline import Indexer, IndexOptions, IndexSummary
from indexer.reindex import Reindexer, ReindexError, ReindexSummary
from indexer.runs import Run, finish


class JobStopped(SagashiError):
    """The operation stopped cleanly; the message says why and what to do."""

    http_status = 409
    error_code = "job_stopped"


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def database_stop(exc: SQLAlchemyError) -> JobStopped:
    hint = ""
    name = str(getattr(getattr(exc, "orig", None), "sqlite_errorname", ""))
    if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR"):
        hint = " (SQLite could not write its files: check free disk space)"
    return JobStopped(f"database error, stopped cleanly (rerun to resume): {first_line(exc)}{hint}")


def faiss_stop(exc: vectors.IndexWriteError) -> JobStopped:
    return JobStopped(
        f"{exc}; stopped (the database holds every result: free some space and rerun to "
        "write the index; a reader rebuilds it from the database meanwhile)"
    )


def aliases_of(settings: Settings) -> dict[str, str]:
    try:
        return load_aliases(settings.alias_file)
    except AliasError as exc:
        raise JobStopped(str(exc)) from exc


AUTO_ON_OFF: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def index_options(settings: Settings) -> IndexOptions:
    return IndexOptions(
        batch_size=settings.batch_size,
        workers=settings.effective_decode_workers(),
        max_pixels=settings.max_image_pixels,
        jpeg_draft=settings.jpeg_draft,
        score_floor=settings.score_floor,
        aliases=aliases_of(settings),
        media_roots=tuple(str(root) for root in settings.media_roots),
        count_thresholds=settings.tag_defaults().thresholds(),
        read_processes=settings.read_processes == "on",
        device_jpeg=AUTO_ON_OFF[settings.device_jpeg],
        device_resize=AUTO_ON_OFF[settings.device_resize],
        device_input_bytes=settings.device_input_memory_mb << 20,
    )


def active_generation_id(engine: Engine) -> int | None:
    with session_factory(engine)() as session:
        generation = active_generation(session)
        return generation.id if generation else None


def refresh_faiss(engine: Engine, data_dir: Path) -> None:
    generation = active_generation_id(engine)
    if generation is not None:
        try:
            vectors.load_fresh(engine, data_dir, generation, populate=False)
        except vectors.IndexWriteError as exc:
            raise faiss_stop(exc) from exc


def refresh_segments(engine: Engine, settings: Settings) -> None:
    """With the segment engine in use, write the active generation's segment set at the end
    of a run, so the next server or ``sagashi search`` opens current files in seconds instead
    of rebuilding them. A set that cannot be written is logged; searches rebuild it."""
    if settings.search_engine != "segments":
        return
    generation = active_generation_id(engine)
    if generation is not None:
        with session_factory(engine)() as session:
            write_segments(session, settings.data_dir, generation)


def run_index(
    engine: Engine, settings: Settings, tagger: Tagger, paths: Sequence[Path], run: Run
) -> IndexSummary:
    options = index_options(settings)
    try:
        with thumbnails.following(engine, settings):
            summary = Indexer(engine, tagger, options).run(paths, run.update)
    except GenerationMismatch as exc:
        raise JobStopped(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise database_stop(exc) from exc
    refresh_faiss(engine, settings.data_dir)
    refresh_segments(engine, settings)
    finish(run, summary.as_dict(), [(p.path, p.code, p.message) for p in summary.failures])
    return summary


def run_reindex(
    engine: Engine, settings: Settings, tagger: Tagger, where: str | None, run: Run
) -> ReindexSummary:
    options = index_options(settings)
    try:
        summary = Reindexer(engine, tagger, options, settings.data_dir, where).run(run.update)
    except ReindexError as exc:
        raise JobStopped(str(exc)) from exc
    except QueryError as exc:
        raise JobStopped(
            f"bad --where query at character {exc.position} ({exc.code}): {exc.message}"
        ) from exc
    except SQLAlchemyError as exc:
        raise database_stop(exc) from exc
    except vectors.IndexWriteError as exc:
        raise faiss_stop(exc) from exc
    refresh_segments(engine, settings)
    finish(run, summary.as_dict(), [(p.path, p.code, p.message) for p in summary.failures])
    return summary


def run_rebuild_faiss(engine: Engine, settings: Settings, run: Run) -> dict[str, Any]:
    """Rebuild the active generation's FAISS index from the embeddings table."""
    generation = active_generation_id(engine)
    if generation is None:
        raise JobStopped("the index is empty; nothing to rebuild")
    try:
        index = vectors.rebuild(engine, settings.data_dir, generation)
    except SQLAlchemyError as exc:
        raise database_stop(exc) from exc
    except vectors.IndexWriteError as exc:
        raise faiss_stop(exc) from exc
    meta = index.meta
    summary = {"generation": generation, "vectors": meta.count, "kind": meta.kind}
    run.update(meta.count, meta.count)
    finish(run, summary, [])
    return summary

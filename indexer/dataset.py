"""``sagashi export DIR``: a training-set folder from a search.

The images a query matches go into one folder in the layout kohya-ss's trainers (and
Hugging Face's ``imagefolder``) read: each image beside a caption of the same stem
(``001.png`` + ``001.txt``), and ``metadata.jsonl`` with one JSON object per image
(``file_name``, ``text``: the caption, the image's id, source path, size, sha256 and the
caption's tags with their scores). Captions are made as ``sagashi export --captions`` makes
them (:mod:`indexer.export`): the same thresholds, allow/deny lists, top-k and group order.

Images are copied, hard-linked (copied when the source lies on another filesystem, and
counted), symlinked, or left out (``none``: captions and metadata only).

Re-running the export into the same folder is idempotent: every image keeps the name the
folder's ``metadata.jsonl`` gave it, existing files are skipped (unless ``overwrite``), and
nothing is reported twice. A name is the image's own file name; when two images would share
a stem (``a/001.png`` and ``b/001.jpg``; compared case-insensitively, as some filesystems
do), the one with the lower image id keeps it and the other gets ``001_<id>``, which does not
change as the index grows. A name held by a file the export did not write is never reused.
A source file that vanished or cannot be read or linked is a per-file failure; its caption
is not written, so the folder never holds a caption without its image.

Memory grows with the export: about 300 bytes per exported image for the names and, on a
re-run, the previous ``metadata.jsonl``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from app.query import ErrorCode, QueryError, parse
from app.search.binder import Binder
from app.search.catalog import Catalog
from app.search.sql_engine import execute
from app.settings import Settings
from app.store.db import session_factory
from app.store.job_records import valid_export_name
from app.store.models import Image, Tag
from app.tagger.defaults import CARD
from app.tagger.policy import TagScore
from app.tagger.vocab import CHARACTER, COPYRIGHT, GENERAL
from app.tagrules.configured import refinement, search_implications
from app.tagrules.implications import Implications, RulesError
from indexer.export import (
    EXPORT_CHUNK,
    MAX_REPORTED,
    CaptionOptions,
    EmptyIndexError,
    ImageMode,
    Problem,
    _active_generation_id,
    _load_chunk,
    _tag_table,
    caption_text,
    os_problem,
    path_problem,
    select_tags,
    write_caption,
)
from indexer.jobs import JobStopped, aliases_of, database_stop
from indexer.runs import Run, finish

log = logging.getLogger("sagashi")

MANIFEST = "metadata.jsonl"
TEMP_PREFIX = ".sagashi-"

Progress = Callable[[int, int], None]


@dataclass
class DatasetSummary:
    matched: int = 0
    images_written: int = 0
    images_skipped: int = 0
    # --images hardlink, the source on another filesystem: copied instead.
    copied_not_linked: int = 0
    captions_written: int = 0
    captions_skipped: int = 0
    empty_captions: int = 0
    renamed: int = 0
    failed: int = 0
    elapsed: float = 0.0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    failures: list[Problem] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)  # (image, name in the folder)

    def fail(self, problem: Problem) -> None:
        self.failed += 1
        self.failed_by_reason[problem.code] = self.failed_by_reason.get(problem.code, 0) + 1
        if len(self.failures) < MAX_REPORTED:
            self.failures.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "images_written": self.images_written,
            "images_skipped": self.images_skipped,
            "copied_not_linked": self.copied_not_linked,
            "captions_written": self.captions_written,
            "captions_skipped": self.captions_skipped,
            "empty_captions": self.empty_captions,
            "renamed": self.renamed,
            "failed": self.failed,
            "failed_by_reason": dict(sorted(self.failed_by_reason.items())),
        }


# --- which images ------------------------------------------------------------------------


def query_thresholds(options: CaptionOptions) -> dict[str, float]:
    """The thresholds a --where query binds with: the captions' own, so an image is exported
    for a tag exactly when its caption would list that tag."""
    return {
        **CARD.thresholds(),
        GENERAL: options.threshold_general,
        CHARACTER: options.threshold_character,
        COPYRIGHT: options.threshold_copyright,
    }


def matching_ids(
    engine: Engine,
    generation_id: int,
    where: str,
    aliases: Mapping[str, str],
    thresholds: Mapping[str, float],
    implications: Implications | None = None,
) -> list[int]:
    """Ids of the images a filter query matches, ascending (QueryError if it is bad); with
    ``implications``, a tag term matches the tags implying it too, as search does."""
    query = parse(where)
    for name, value in (("order", query.order), ("similar", query.similar)):
        if value is not None:
            message = f"--where selects images by a filter; '{name}:' has no meaning there"
            raise QueryError(ErrorCode.BAD_VALUE, message, max(0, where.find(f"{name}:")))
    with session_factory(engine)() as session:
        rows = session.execute(select(Tag.id, Tag.name, Tag.group, Tag.image_count)).all()
        catalog = Catalog.from_rows([(r[0], r[1], r[2], r[3]) for r in rows], aliases, implications)
        plan = Binder(catalog, dict(thresholds)).bind(query.root)
        ids = execute(session, plan, generation_id)
    return ids[: query.limit] if query.limit else ids


# --- names in the folder -------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[int, tuple[str, str]]:
    """A previous export's entries: image id -> (file name, the JSON line). Lines that are
    not an entry of ours (hand-edited, truncated) are ignored."""
    found: dict[int, tuple[str, str]] = {}
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return found
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("ignoring %s: %s", folder / MANIFEST, exc)
        return found
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            image_id, name = entry["id"], entry["file_name"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(image_id, int) and isinstance(name, str) and _plain_name(name):
            found[image_id] = (name, line)
    return found


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\x00" not in name and name not in (".", "..")


def _stem_key(name: str) -> str:
    return os.path.splitext(name)[0].casefold()


class Names:
    """Chooses each image's file name in the folder (see the module's docstring)."""

    def __init__(self, folder: Path, mode: ImageMode, prior: Mapping[int, tuple[str, str]]):
        self.folder = folder
        self.mode = mode
        self.prior = {image_id: name for image_id, (name, _) in prior.items()}
        self.owner: dict[str, int] = {_stem_key(n): i for i, n in self.prior.items()}
        self.present = {
            _stem_key(entry)
            for entry in os.listdir(folder)
            if not entry.startswith(TEMP_PREFIX) and entry != MANIFEST
        }

    def choose(self, image_id: int, path: str) -> str:
        base = os.path.basename(path)
        stem, ext = os.path.splitext(base)
        previous = self.prior.get(image_id)
        if previous is not None and os.path.splitext(previous)[1] == ext:
            return previous
        candidates: tuple[str, ...] = (stem, f"{stem}_{image_id}")
        n = 1
        while True:
            for candidate in candidates:
                if self._free(image_id, candidate, ext, path):
                    self.owner[candidate.casefold()] = image_id
                    return candidate + ext
            n += 1
            candidates = (f"{stem}_{image_id}_{n}",)

    def _free(self, image_id: int, stem: str, ext: str, source: str) -> bool:
        key = stem.casefold()
        owner = self.owner.get(key)
        if owner is not None:
            return owner == image_id
        return key not in self.present or self._ours(stem + ext, source)

    def _ours(self, name: str, source: str) -> bool:
        """Whether a file already in the folder is this image, placed by an earlier run
        whose metadata.jsonl is gone (or was never written: the run was stopped)."""
        target = self.folder / name
        try:
            if self.mode is ImageMode.none:  # nothing to compare: its caption is ours
                return (self.folder / (os.path.splitext(name)[0] + ".txt")).is_file()
            if self.mode is ImageMode.symlink:
                return target.is_symlink() and os.readlink(target) == source
            if target.is_symlink():
                return False
            here, there = target.stat(), os.stat(source)
        except OSError:
            return False
        same_file = (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        same_copy = (here.st_size, here.st_mtime_ns) == (there.st_size, there.st_mtime_ns)
        return same_file or same_copy


# --- placing one image ---------------------------------------------------------------------


def place_image(source: str, target: Path, mode: ImageMode, overwrite: bool) -> str:
    """Put the image at ``target``: 'written', 'copied' (a hard link across filesystems,
    copied instead) or 'skipped' (something is there already). Raises OSError (a vanished
    or unreadable source, a full disk) with nothing left behind."""
    if not overwrite and os.path.lexists(target):
        return "skipped"
    if not os.path.isfile(source):  # vanished, or a folder now: a link would dangle
        raise FileNotFoundError(errno.ENOENT, "the image file is gone", source)
    temp = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{target.name}.tmp")
    outcome = "written"
    try:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        if mode is ImageMode.copy:
            shutil.copy2(source, temp)
        elif mode is ImageMode.symlink:
            os.symlink(source, temp)
        else:
            try:
                os.link(source, temp)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copy2(source, temp)
                outcome = "copied"
        os.replace(temp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    return outcome


# --- the export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetOptions:
    captions: CaptionOptions = field(default_factory=CaptionOptions)
    images: ImageMode = ImageMode.copy
    where: str = ""


def export_dataset(
    engine: Engine,
    folder: Path,
    options: DatasetOptions,
    aliases: Mapping[str, str],
    progress: Progress | None = None,
    implications: Implications | None = None,
) -> DatasetSummary:
    """Export the images ``options.where`` matches (every live image when it is empty) into
    ``folder`` (created if missing). Raises EmptyIndexError when the index has no active
    generation, QueryError for a bad query, OSError when the folder cannot be used."""
    started = time.perf_counter()
    generation_id = _active_generation_id(engine)
    thresholds = query_thresholds(options.captions)
    ids = matching_ids(engine, generation_id, options.where, aliases, thresholds, implications)
    folder.mkdir(parents=True, exist_ok=True)
    prior = read_manifest(folder)
    names = Names(folder, options.images, prior)
    summary = DatasetSummary(matched=len(ids))
    tags = _tag_table(engine)
    seen: set[int] = set()
    manifest = folder / f"{TEMP_PREFIX}{os.getpid()}-{MANIFEST}.tmp"
    try:
        with manifest.open("w", encoding="utf-8") as out:
            for start in range(0, len(ids), EXPORT_CHUNK):
                chunk = ids[start : start + EXPORT_CHUNK]
                rows, postings = _load_chunk(engine, generation_id, chunk, tags, options.captions)
                facts = _facts(engine, chunk)
                for image_id, path in rows:
                    entry = _export_one(
                        folder, names, options, summary, image_id, path, postings.get(image_id, [])
                    )
                    if entry is not None:
                        entry.update(facts.get(image_id, {}))
                        out.write(json.dumps(entry, ensure_ascii=False) + "\n")
                        seen.add(image_id)
                if progress is not None:
                    progress(start + len(chunk), len(ids))
            # Images of earlier exports into this folder that this one did not write stay
            # listed while their files are there.
            for image_id, (name, line) in sorted(prior.items()):
                if image_id not in seen and _still_there(folder, name):
                    out.write(line + "\n")
        os.replace(manifest, folder / MANIFEST)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(manifest)
    if progress is not None and not ids:
        progress(0, 0)
    summary.elapsed = time.perf_counter() - started
    return summary


def _still_there(folder: Path, name: str) -> bool:
    return os.path.lexists(folder / name) or os.path.lexists(
        folder / (os.path.splitext(name)[0] + ".txt")
    )


def _facts(engine: Engine, ids: list[int]) -> dict[int, dict[str, Any]]:
    with session_factory(engine)() as session:
        rows = session.execute(
            select(Image.id, Image.width, Image.height, Image.sha256).where(Image.id.in_(ids))
        ).all()
    return {int(i): {"width": w, "height": h, "sha256": s} for i, w, h, s in rows}


def _export_one(
    folder: Path,
    names: Names,
    options: DatasetOptions,
    summary: DatasetSummary,
    image_id: int,
    path: str,
    tags: list[TagScore],
) -> dict[str, Any] | None:
    """Place one image and its caption; its metadata entry, or None when it failed."""
    reason = path_problem(path)
    if reason is not None:
        summary.fail(Problem(path, "bad_path", f"stored path {reason}"))
        return None
    name = names.choose(image_id, path)
    stem = os.path.splitext(name)[0]
    try:
        if options.images is not ImageMode.none:
            outcome = place_image(path, folder / name, options.images, options.captions.overwrite)
            summary.images_skipped += outcome == "skipped"
            summary.images_written += outcome != "skipped"
            summary.copied_not_linked += outcome == "copied"
        text = caption_text(tags, options.captions)
        written = write_caption(str(folder / f"{stem}.txt"), text, options.captions.overwrite)
    except OSError as exc:
        problem = os_problem(path, exc)
        if isinstance(exc, FileNotFoundError) and exc.filename == path:
            problem = Problem(path, "not_found", "the image file is gone")
        summary.fail(problem)
        return None
    summary.captions_written += written
    summary.captions_skipped += not written
    summary.empty_captions += written and text == "\n"
    if os.path.splitext(os.path.basename(path))[0] != stem and written:
        # reported when written: a re-run that skips it says nothing again
        summary.renamed += 1
        if len(summary.renames) < MAX_REPORTED:
            summary.renames.append((path, name))
    chosen = select_tags(tags, options.captions)
    chosen.sort(key=lambda t: (-t.score, t.tag))
    return {
        "file_name": name,
        "text": text.rstrip("\n"),
        "id": image_id,
        "path": path,
        "tags": [
            {"name": t.tag, "group": t.group, "score": round(float(t.score), 4)} for t in chosen
        ],
    }


# --- as a job ------------------------------------------------------------------------------


def job_folder(settings: Settings, name: str) -> Path:
    """Where an export job named ``name`` writes: a folder under SAGASHI_EXPORT_DIR."""
    if not valid_export_name(name):
        raise JobStopped(f"export name {name!r} must be one folder name (no '/', not '.')")
    return settings.effective_export_dir() / name


def run_export(engine: Engine, settings: Settings, params: Mapping[str, Any], run: Run) -> Any:
    """An export queued through the admin API (POST /api/admin/export), run by
    'sagashi worker' with the same code as the command; progress goes on the job."""
    folder = job_folder(settings, str(params.get("name", "")))
    defaults = settings.tag_defaults()
    try:
        refine = refinement(settings, overlap=True)
        implications = search_implications(settings)
    except RulesError as exc:
        raise JobStopped(str(exc)) from exc
    try:
        captions = CaptionOptions(
            threshold_general=_param(params, "threshold_general", defaults.general),
            threshold_character=_param(params, "threshold_character", defaults.character),
            threshold_copyright=_param(params, "threshold_copyright", defaults.copyright),
            top_k=int(params.get("top_k") or defaults.top_k),
            overwrite=bool(params.get("overwrite", False)),
            refine=refine,
        )
        options = DatasetOptions(
            captions, ImageMode(params.get("images", "copy")), params.get("where") or ""
        )
    except ValueError as exc:
        raise JobStopped(f"bad export parameters: {exc}") from exc
    try:
        aliases = aliases_of(settings)
        summary = export_dataset(engine, folder, options, aliases, run.update, implications)
    except EmptyIndexError as exc:
        raise JobStopped("the index is empty; run 'sagashi index' first") from exc
    except QueryError as exc:
        raise JobStopped(
            f"bad query at character {exc.position} ({exc.code}): {exc.message}"
        ) from exc
    except SQLAlchemyError as exc:
        raise database_stop(exc) from exc
    except OSError as exc:
        raise JobStopped(f"cannot use the folder {folder}: {exc.strerror or exc}") from exc
    result = {"folder": str(folder), **summary.as_dict()}
    finish(run, result, [(p.path, p.code, p.message) for p in summary.failures])
    return result


def _param(params: Mapping[str, Any], name: str, default: float) -> float:
    value = params.get(name)
    return default if value is None else float(value)


__all__ = [
    "MANIFEST",
    "DatasetOptions",
    "DatasetSummary",
    "ImageMode",
    "export_dataset",
    "matching_ids",
]

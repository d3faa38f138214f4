"""``sagashi export --captions``: Danbooru-style caption sidecars for training sets.

One ``<image stem>.txt`` per live image of the active generation, the pairing kohya-ss's
trainers use (``splitext(image)[0] + ".txt"``). Captions are built from the stored scores,
so thresholds, allow/deny lists and tag order are chosen at export time.

Two passes over the index, both in chunks of image ids: a survey (the common root of the
image paths, and a 64-bit hash of every caption name, to find name collisions) and the
export itself. Memory is about 16 bytes per image plus one chunk, so millions of images
are fine.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Engine, select
from sqlalchemy.orm import Session

from app.atomic_files import atomic_file
from app.errors import SagashiError
from app.store.aliases import canonical
from app.store.db import session_factory
from app.store.models import Embedding, Image, ImageTag, Tag
from app.tagger.caption import DEFAULT_ORDER, format_caption
from app.tagger.defaults import CARD
from app.tagger.policy import OutputPolicy, TagScore
from app.tagger.vocab import CHARACTER, COPYRIGHT, GENERAL, GROUPS, RATING
from app.tagrules.refine import Refinement
from indexer.jobs import active_generation_id

log = logging.getLogger("sagashi")

SURVEY_CHUNK = 10_000
EXPORT_CHUNK = 1_000
# Problems and renames kept for the report; the counts are always exact.
MAX_REPORTED = 1_000

Progress = Callable[[int, int], None]


class Layout(StrEnum):
    mirror = "mirror"
    beside = "beside"


class ImageMode(StrEnum):
    """How ``sagashi export DIR`` puts the images in the dataset folder."""

    copy = "copy"
    hardlink = "hardlink"
    symlink = "symlink"
    none = "none"


class EmptyIndexError(SagashiError):
    """There is no active generation, or it has no live images."""

    http_status = 404
    error_code = "empty_index"


@dataclass(frozen=True)
class CaptionOptions:
    """Which stored tags make a caption, and where the caption files go.

    Thresholds are inclusive. ``top_k`` caps the general+character tags of a caption (those
    groups listed in ``order``), as ``sagashi tag`` does. ``allow``/``deny`` hold stored
    (canonical, underscored) tag names and apply to every group.
    """

    threshold_general: float = CARD.general
    threshold_character: float = CARD.character
    threshold_copyright: float = CARD.copyright
    top_k: int = CARD.top_k
    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()
    underscores: bool = False
    order: tuple[str, ...] = DEFAULT_ORDER
    layout: Layout = Layout.mirror
    overwrite: bool = False
    # The tag rules (contradictions; overlap, on for captions): app.tagrules.refine.
    refine: Refinement | None = None
    # What `sagashi tag` would report from these scores: one policy for both.
    policy: OutputPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold_copyright <= 1.0:
            message = f"threshold_copyright must be between 0 and 1, got {self.threshold_copyright}"
            raise ValueError(message)
        policy = OutputPolicy(
            top_k=self.top_k,
            threshold_general=self.threshold_general,
            threshold_character=self.threshold_character,
            allow=self.allow,
            deny=self.deny,
            refine=self.refine,
        )
        check_order(self.order)
        object.__setattr__(self, "policy", policy)

    def threshold(self, group: str) -> float:
        """The group's threshold as stored scores are compared with it (float32)."""
        value = {
            GENERAL: self.threshold_general,
            CHARACTER: self.threshold_character,
            COPYRIGHT: self.threshold_copyright,
        }[group]
        return float(np.float32(value))


def check_order(order: Sequence[str]) -> None:
    unknown = [g for g in order if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group {unknown[0]!r}; choose from {', '.join(GROUPS)}")
    if not order:
        raise ValueError(f"no group given; choose from {', '.join(GROUPS)}")
    if len(set(order)) != len(order):
        raise ValueError("a group is listed twice")


@dataclass(frozen=True)
class Problem:
    path: str
    code: str
    message: str


@dataclass
class ExportSummary:
    """``empty`` counts the written files that hold an empty caption (a subset of written)."""

    written: int = 0
    skipped: int = 0
    empty: int = 0
    failed: int = 0
    renamed: int = 0
    elapsed: float = 0.0
    root: str | None = None
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    failures: list[Problem] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)  # (image, caption file)

    def fail(self, problem: Problem) -> None:
        self.failed += 1
        self.failed_by_reason[problem.code] += 1
        if len(self.failures) < MAX_REPORTED:
            self.failures.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "empty": self.empty,
            "skipped": self.skipped,
            "renamed": self.renamed,
            "failed": self.failed,
            "failed_by_reason": dict(self.failed_by_reason),
        }


def select_tags(tags: Iterable[TagScore], options: CaptionOptions) -> list[TagScore]:
    """The caption's tags from one image's stored postings (any order): the groups listed
    in ``order``, chosen as `sagashi tag` chooses (thresholds, top_k, the likeliest rating)."""
    wanted = set(options.order)
    listed = [tag for tag in tags if tag.group in wanted]
    return options.policy.choose(listed, options.threshold_copyright)


def caption_text(tags: Iterable[TagScore], options: CaptionOptions) -> str:
    # Always one line: kohya-ss refuses a caption file with no line at all.
    chosen = select_tags(tags, options)
    return format_caption(chosen, order=options.order, underscores=options.underscores) + "\n"


# --- the survey: root and collisions -------------------------------------------------


@dataclass(frozen=True)
class Survey:
    ids: np.ndarray  # live image ids of the generation, ascending
    keys: np.ndarray  # hash of each image's caption key, aligned with ids
    root: str | None  # deepest folder holding every (valid) image


def caption_key(path: str) -> str:
    """The caption file's path without ``.txt``: the image path without its extension."""
    return os.path.splitext(path)[0]


def key_hash(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def path_problem(path: str) -> str | None:
    """Why a stored path cannot be trusted to name a caption file, or None."""
    if not os.path.isabs(path):
        return "not an absolute path"
    if "\x00" in path:
        return "contains a NUL byte"
    parts = path.split(os.sep)[1:]
    if any(part in ("", ".", "..") for part in parts):
        return "has '.', '..' or empty components"
    return None


def live_paths(
    session: Session, generation_id: int, *criteria: ColumnElement[bool], limit: int | None = None
) -> list[tuple[int, str]]:
    """(id, path) of live images of the generation, by id.

    An image belongs to a generation when it has an embedding there: every indexed image
    gets one, even with no tag above the storage floor.
    """
    query = (
        select(Image.id, Image.path)
        .join(
            Embedding,
            (Embedding.image_id == Image.id) & (Embedding.generation_id == generation_id),
        )
        .where(Image.deleted_at.is_(None), *criteria)
        .order_by(Image.id)
        .limit(limit)
    )
    return [(int(i), str(p)) for i, p in session.execute(query)]


def iter_live(engine: Engine, generation_id: int) -> Iterator[list[tuple[int, str]]]:
    """Chunks of (id, path), by id. A short read per chunk, so a long export never holds
    one transaction open against a running indexer."""
    after = 0
    while True:
        with session_factory(engine)() as session:
            rows = live_paths(session, generation_id, Image.id > after, limit=SURVEY_CHUNK)
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def survey(engine: Engine, generation_id: int, only: frozenset[int] | None = None) -> Survey:
    """``only``: the images a --where query matched (None: every live image)."""
    ids: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    root: str | None = None
    for found in iter_live(engine, generation_id):
        rows = found if only is None else [row for row in found if row[0] in only]
        if not rows:
            continue
        ids.append(np.fromiter((i for i, _ in rows), dtype=np.int64, count=len(rows)))
        hashes = (key_hash(caption_key(p)) for _, p in rows)
        keys.append(np.fromiter(hashes, dtype=np.int64, count=len(rows)))
        root = _common_root(root, (p for _, p in rows))
    if not ids:
        return Survey(np.zeros(0, np.int64), np.zeros(0, np.int64), None)
    return Survey(np.concatenate(ids), np.concatenate(keys), root)


def _common_root(root: str | None, paths: Iterable[str]) -> str | None:
    for path in paths:
        if path_problem(path) is not None:
            continue
        folder = os.path.dirname(path)
        if root is None:
            root = folder
        elif not (folder == root or folder.startswith(with_sep(root))):
            root = os.path.commonpath([root, folder])
    return root


def with_sep(folder: str) -> str:
    return folder if folder.endswith(os.sep) else folder + os.sep


def plan_renames(engine: Engine, found: Survey) -> dict[int, str]:
    """Caption keys for images whose caption name another image also has.

    Among images sharing a name, the first by path keeps it; each other one is named after
    its whole file name (``b.png`` -> ``b.png.txt``), then ``b.png.2.txt``, ... when that is
    taken too. Hashes only find candidates; names are compared exactly.
    """
    order = np.argsort(found.keys, kind="stable")
    sorted_keys = found.keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    shared = np.zeros(len(sorted_keys), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    candidates = np.sort(found.ids[order[shared]]).tolist()
    del order
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for image_id, path in _paths_of(engine, candidates):
        groups[caption_key(path)].append((path, image_id))
    renames: dict[int, str] = {}
    assigned: set[str] = set()
    for key in sorted(groups):
        for path, image_id in sorted(groups[key])[1:]:
            renames[image_id] = _free_key(path, sorted_keys, assigned)
    return renames


def _free_key(path: str, keys: np.ndarray, assigned: set[str]) -> str:
    candidate, n = path, 1
    while candidate in assigned or _hash_taken(keys, key_hash(candidate)):
        n += 1
        candidate = f"{path}.{n}"
    assigned.add(candidate)
    return candidate


def _hash_taken(sorted_keys: np.ndarray, value: int) -> bool:
    # A false hit (2^-64 per image) only moves a renamed caption on to the next number.
    at = int(np.searchsorted(sorted_keys, value))
    return at < len(sorted_keys) and int(sorted_keys[at]) == value


def _paths_of(engine: Engine, ids: Sequence[int]) -> Iterator[tuple[int, str]]:
    for start in range(0, len(ids), EXPORT_CHUNK):
        chunk = ids[start : start + EXPORT_CHUNK]
        with session_factory(engine)() as session:
            rows = session.execute(select(Image.id, Image.path).where(Image.id.in_(chunk)))
            yield from ((int(i), str(p)) for i, p in rows)


# --- targets and writes ----------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    layout: Layout
    out_dir: str | None  # resolved (realpath), mirror only
    root: str | None

    def target(self, path: str, key: str) -> str | Problem:
        """The caption file for an image, or why it cannot be written."""
        reason = path_problem(path) or path_problem(key)
        if reason is not None:
            return Problem(path, "bad_path", f"stored path {reason}")
        if self.layout is Layout.beside:
            target = key + ".txt"
            if os.path.dirname(target) != os.path.dirname(path) or target == path:
                return Problem(path, "outside", "caption would not sit beside the image")
            return target
        return self._mirrored(path, key)

    def _mirrored(self, path: str, key: str) -> str | Problem:
        assert self.out_dir is not None and self.root is not None
        prefix = with_sep(self.root)
        if not key.startswith(prefix):
            return Problem(path, "outside", f"not under the common root {self.root}")
        target = os.path.join(self.out_dir, key[len(prefix) :] + ".txt")
        # realpath follows symlinks already inside the output folder (a link to /etc...).
        if not os.path.realpath(target).startswith(with_sep(self.out_dir)):
            return Problem(path, "outside", f"{target} resolves outside the output folder")
        return target


def write_caption(target: str, text: str, overwrite: bool) -> bool:
    """Write atomically (temp file + rename). False when skipped: it exists already."""
    if not overwrite and os.path.lexists(target):
        return False
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # No fsync: an export is cheap to rerun, and millions of fsyncs are not.
    with atomic_file(Path(target), durable=False) as out:
        out.write(text.encode("utf-8"))
    return True


_ERRNO_CODES = {
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "read_only",
    errno.ENOSPC: "no_space",
    errno.ENAMETOOLONG: "name_too_long",
    errno.EISDIR: "is_a_directory",
    errno.ENOTDIR: "not_a_directory",
}


def os_problem(path: str, exc: OSError) -> Problem:
    code = _ERRNO_CODES.get(exc.errno or 0, "os_error")
    where = f": {exc.filename}" if exc.filename else ""
    return Problem(path, code, f"{exc.strerror or exc}{where}")


# --- the export ------------------------------------------------------------------------


def export_captions(
    engine: Engine,
    out_dir: Path | None,
    options: CaptionOptions,
    progress: Progress | None = None,
    where: Callable[[int], Sequence[int]] | None = None,
) -> ExportSummary:
    """Write a caption file for every live image of the active generation, or for those
    ``where(generation id)`` returns (the ids a query matched).

    ``out_dir`` is required for the mirror layout (created if missing) and ignored for the
    beside layout. Raises :class:`EmptyIndexError` when there is nothing to export.
    """
    started = time.perf_counter()
    generation_id = _active_generation_id(engine)
    only = frozenset(where(generation_id)) if where is not None else None
    ids, destination, renames = _prepare(engine, generation_id, out_dir, options.layout, only)
    summary = ExportSummary(root=destination.root)
    tags = _tag_table(engine)
    for start in range(0, len(ids), EXPORT_CHUNK):
        chunk = ids[start : start + EXPORT_CHUNK].tolist()
        rows, postings = _load_chunk(engine, generation_id, chunk, tags, options)
        for image_id, path in rows:
            key = renames.get(image_id) or caption_key(path)
            target = destination.target(path, key)
            if isinstance(target, Problem):
                summary.fail(target)
                continue
            written = _export_one(target, path, postings.get(image_id, []), options, summary)
            # reported when written: a re-run that skips it says nothing again
            if written and image_id in renames:
                _record_rename(summary, path, target)
        if progress is not None:
            progress(start + len(chunk), len(ids))
    summary.elapsed = time.perf_counter() - started
    return summary


def _prepare(
    engine: Engine,
    generation_id: int,
    out_dir: Path | None,
    layout: Layout,
    only: frozenset[int] | None = None,
) -> tuple[np.ndarray, Destination, dict[int, str]]:
    """The ids to export, where their captions go, and the renamed ones. The survey's
    hashes are dropped on return: the export itself needs only the ids."""
    found = survey(engine, generation_id, only)
    if not len(found.ids) and only is None:
        raise EmptyIndexError("the index has no live images")
    return found.ids, _destination(out_dir, layout, found.root), plan_renames(engine, found)


def _active_generation_id(engine: Engine) -> int:
    generation_id = active_generation_id(engine)
    if generation_id is None:
        raise EmptyIndexError("no active generation")
    return generation_id


def _destination(out_dir: Path | None, layout: Layout, root: str | None) -> Destination:
    if layout is Layout.beside:
        return Destination(layout, None, root)
    if out_dir is None:
        raise ValueError("the mirror layout needs an output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return Destination(layout, os.path.realpath(out_dir), root or os.sep)


def _tag_table(engine: Engine) -> dict[int, tuple[str, str]]:
    """Tag id -> (name, group): read once; vocabularies are tens of thousands of tags."""
    with session_factory(engine)() as session:
        rows = session.execute(select(Tag.id, Tag.name, Tag.group)).all()
    return {int(i): (str(n), GROUPS[int(g)]) for i, n, g in rows if 0 <= int(g) < len(GROUPS)}


def _load_chunk(
    engine: Engine,
    generation_id: int,
    ids: Sequence[int],
    tags: dict[int, tuple[str, str]],
    options: CaptionOptions,
) -> tuple[list[tuple[int, str]], dict[int, list[TagScore]]]:
    """Paths (of images still live) and postings for one chunk of ids."""
    with session_factory(engine)() as session:
        rows = live_paths(session, generation_id, Image.id.in_(ids))
        query = select(ImageTag.image_id, ImageTag.tag_id, ImageTag.score).where(
            ImageTag.generation_id == generation_id, ImageTag.image_id.in_(ids)
        )
        floor = _score_floor(options)
        if floor is not None:
            query = query.where(ImageTag.score >= floor)
        found = session.execute(query).all()
    # PostgreSQL sends a REAL as its shortest text (0.3), not the float32 value that was
    # stored (0.30000001); back to float32, both databases give the stored value exactly.
    scores = np.array([score for _, _, score in found], dtype=np.float32).tolist()
    postings: dict[int, list[TagScore]] = defaultdict(list)
    for (image_id, tag_id, _), score in zip(found, scores, strict=True):
        name, group = tags.get(int(tag_id), ("", ""))
        if name:
            postings[int(image_id)].append(TagScore(name, score, group))
    return rows, postings


def _score_floor(options: CaptionOptions) -> float | None:
    """Postings below every listed threshold never reach a caption; rating has none."""
    if RATING in options.order:
        return None
    return min(options.threshold(g) for g in options.order)


def _export_one(
    target: str, path: str, tags: list[TagScore], options: CaptionOptions, summary: ExportSummary
) -> bool:
    """Write one caption; whether it was written (not skipped, not failed)."""
    text = caption_text(tags, options)
    try:
        written = write_caption(target, text, options.overwrite)
    except OSError as exc:
        summary.fail(os_problem(path, exc))
        return False
    if not written:
        summary.skipped += 1
        return False
    summary.written += 1
    summary.empty += text == "\n"
    return True


def _record_rename(summary: ExportSummary, path: str, target: str) -> None:
    summary.renamed += 1
    if len(summary.renames) < MAX_REPORTED:
        summary.renames.append((path, target))


# --- the command -------------------------------------------------------------------------


def tag_names(values: frozenset[str] | None, aliases: dict[str, str]) -> frozenset[str] | None:
    """User-typed tags as stored: spaces back to underscores, old names to current ones."""
    if values is None:
        return None
    return frozenset(canonical(v.strip().replace(" ", "_"), aliases) for v in values)


def parse_order(value: str) -> tuple[str, ...]:
    order = tuple(g.strip() for g in value.split(",") if g.strip())
    check_order(order)
    return order

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
import json
import logging
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import numpy as np
import typer
from sqlalchemy import ColumnElement, Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.errors import SagashiError
from app.store.aliases import AliasError, canonical, load_aliases
from app.store.db import session_factory
from app.store.models import Embedding, Image, ImageTag, Tag
from app.tagger.caption import DEFAULT_ORDER, format_caption
from app.tagger.defaults import CARD
from app.tagger.policy import OutputPolicy, TagScore
from app.tagger.vocab import CHARACTER, COPYRIGHT, GENERAL, GROUPS, RATING
from app.tagrules.implications import Implications
from app.tagrules.refine import Refinement
from indexer.jobs import active_generation_id, first_line
from indexer.progress import progress_bar, rate_text

log = logging.getLogger("sagashi")

SURVEY_CHUNK = 10_000
EXPORT_CHUNK = 1_000
# Problems and renames kept for the report; the counts are always exact.
MAX_REPORTED = 1_000

Progress = Callable[[int, int], None]
T = TypeVar("T")


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


FILE_MODE = 0o666


def write_caption(target: str, text: str, overwrite: bool) -> bool:
    """Write atomically (temp file + rename). False when skipped: it exists already."""
    if not overwrite and os.path.lexists(target):
        return False
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".sagashi-", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; captions are ordinary files, readable as the umask says.
        os.fchmod(fd, FILE_MODE & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
        # No fsync: an export is cheap to rerun, and millions of fsyncs are not.
        os.replace(temp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    return True


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

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


EPILOG = (
    "Example: sagashi export --captions ./captions\n\n"
    "Example: sagashi export --where 'hatsune_miku -monochrome' --images hardlink ./miku"
)


def export_command(
    folder: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]",
            help="A dataset folder: the matching images (see --images) beside their captions "
            "(IMAGE-STEM.txt), and metadata.jsonl.",
            show_default=False,
        ),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(
            metavar="QUERY",
            help="Only the images this search matches (Danbooru syntax, at the thresholds "
            "below) [default: every image].",
        ),
    ] = None,
    images: Annotated[
        ImageMode | None,
        typer.Option(
            help="With DIR: copy the images, hard-link them (copied when on another "
            "filesystem), symlink them, or none (captions and metadata only) [default: copy].",
            show_default=False,
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(
            "--captions",
            metavar="DIR",
            help="Write captions under DIR, mirroring the folders below the images' common "
            "root (/data/art/a/b.png -> DIR/a/b.txt). Required unless --layout beside.",
            show_default=False,
        ),
    ] = None,
    threshold_general: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep general tags scoring >= this [default: SAGASHI_THRESHOLD_GENERAL, 0.30].",
        ),
    ] = None,
    threshold_character: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep character tags scoring >= this "
            "[default: SAGASHI_THRESHOLD_CHARACTER, 0.75].",
        ),
    ] = None,
    threshold_copyright: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep copyright tags scoring >= this "
            "[default: SAGASHI_THRESHOLD_COPYRIGHT, 0.75].",
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            min=1, help="Most general+character tags per caption [default: SAGASHI_TOP_K, 128]."
        ),
    ] = None,
    allow: Annotated[
        str | None,
        typer.Option(
            help="Only these tags: comma-separated, or @FILE (one per line). Spaces or "
            "underscores, old names too (doughnut means donut)."
        ),
    ] = None,
    deny: Annotated[
        str | None, typer.Option(help="Never these tags: comma-separated, or @FILE.")
    ] = None,
    underscores: Annotated[
        bool,
        typer.Option(
            "--underscores/--spaces",
            help="Keep underscores in tags, or write spaces (emoticons such as ^_^ keep theirs).",
        ),
    ] = False,
    order: Annotated[
        str,
        typer.Option(
            help="Groups in caption order, comma-separated, from general, character, copyright, "
            "rating; groups left out are not written."
        ),
    ] = ",".join(DEFAULT_ORDER),
    layout: Annotated[
        Layout,
        typer.Option(
            help="mirror: under --captions DIR, keeping the folders below the images' common "
            "root; beside: IMAGE-STEM.txt next to each image (give no --captions).",
        ),
    ] = Layout.mirror,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing caption files (else they are skipped).")
    ] = False,
    overlap: Annotated[
        bool,
        typer.Option(
            help="Drop a tag when a more specific tag implying it is kept (plaid_skirt "
            "keeps, skirt goes)."
        ),
    ] = True,
    contradictions: Annotated[
        bool,
        typer.Option(
            help="Keep only the highest-scored tag's side of each rule of mutually "
            "exclusive tags (1girl against multiple_girls, ...)."
        ),
    ] = True,
    exclusions: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Rules file of mutually exclusive tags [default: SAGASHI_EXCLUSION_FILE, "
            "else the shipped one].",
        ),
    ] = None,
) -> None:
    """Export a search as a training set (DIR), or caption files for the indexed images.

    sagashi export --where QUERY DIR puts the images QUERY matches into DIR with a caption
    beside each (kohya-ss's layout) and metadata.jsonl; a re-run skips what is there and
    adds what is new. Without DIR, --captions DIR (or --layout beside) writes captions only.

    The captions come from the stored scores of the active model, as training tools such
    as kohya-ss expect: one line, characters, then copyrights, then general tags (see
    --order), each by score. Images with no tag above the thresholds get an empty caption;
    existing caption files are skipped unless --overwrite. Two images that
    would share a caption name (b.png and b.jpg) are both written: the first by path gets
    b.txt, the other b.jpg.txt, and both are reported.

    Exit status: 0 when every caption was written or skipped, 1 when some failed (the
    summary lists why), 2 for a usage error or an empty index.
    """
    from indexer.cli import fail, load_settings, open_store, split_list

    settings = load_settings()
    if folder is not None:
        if captions is not None or layout is not Layout.mirror:
            fail("give either DIR (a dataset folder) or --captions DIR / --layout beside")
        if folder.exists() and not folder.is_dir():
            fail(f"{folder} is not a folder")
    elif images is not None:
        fail("--images needs a dataset folder: sagashi export --images MODE DIR")
    out_dir = _output_dir(captions, layout, fail) if folder is None else None
    try:
        groups = parse_order(order)
    except ValueError as exc:
        fail(f"--order: {exc}")
    aliases = _aliases(settings.alias_file, fail)
    defaults = settings.tag_defaults()
    from app.tagrules import RulesError
    from app.tagrules.configured import refinement, search_implications

    try:
        refine = refinement(
            settings, overlap=overlap, contradictions=contradictions, exclusion_file=exclusions
        )
        implications = search_implications(settings)
    except RulesError as exc:
        fail(str(exc))
    options = CaptionOptions(
        threshold_general=_given(threshold_general, defaults.general),
        threshold_character=_given(threshold_character, defaults.character),
        threshold_copyright=_given(threshold_copyright, defaults.copyright),
        top_k=_given(top_k, defaults.top_k),
        allow=tag_names(split_list(allow), aliases),
        deny=tag_names(split_list(deny), aliases) or frozenset(),
        underscores=underscores,
        order=groups,
        layout=layout,
        overwrite=overwrite,
        refine=refine,
    )
    engine = open_store(settings)
    if where is not None:
        _check_where(where, fail)
    if folder is not None:
        _export_dataset(
            engine, folder, options, aliases, where or "", images or ImageMode.copy, implications
        )
    matched = None if where is None else _matched_by(engine, where, options, aliases, implications)
    try:
        summary = _run_with_progress(engine, out_dir, options, matched)
    except EmptyIndexError:
        fail("the index is empty; run 'sagashi index' first")
    except SQLAlchemyError as exc:
        fail(f"database error: {first_line(exc)}")
    except OSError as exc:
        fail(f"cannot use the output folder {out_dir}: {exc.strerror or exc}")
    _log_summary(summary, out_dir)
    raise typer.Exit(1 if summary.failed else 0)


def _check_where(where: str, fail: Fail) -> None:
    from app.query import QueryError, parse

    try:
        parse(where)
    except QueryError as exc:
        fail(f"bad --where query at character {exc.position} ({exc.code}): {exc.message}")


def _matched_by(
    engine: Engine,
    where: str,
    options: CaptionOptions,
    aliases: dict[str, str],
    implications: Implications | None,
) -> Callable[[int], Sequence[int]]:
    from indexer.dataset import matching_ids, query_thresholds

    def matched(generation_id: int) -> Sequence[int]:
        thresholds = query_thresholds(options)
        return matching_ids(engine, generation_id, where, aliases, thresholds, implications)

    return matched


def _export_dataset(
    engine: Engine,
    folder: Path,
    options: CaptionOptions,
    aliases: dict[str, str],
    where: str,
    images: ImageMode,
    implications: Implications | None,
) -> NoReturn:
    from app.query import QueryError
    from indexer.cli import fail
    from indexer.dataset import DatasetOptions, export_dataset
    from indexer.summary import render

    started = time.perf_counter()
    try:
        with progress_bar() as bar:
            task = bar.add_task("exporting", total=None, rate="")

            def report(done: int, total: int) -> None:
                rate = rate_text(done, time.perf_counter() - started, "img")
                bar.update(task, completed=done, total=total, rate=rate)

            dataset = DatasetOptions(options, images, where)
            summary = export_dataset(engine, folder, dataset, aliases, report, implications)
    except EmptyIndexError:
        fail("the index is empty; run 'sagashi index' first")
    except QueryError as exc:
        fail(f"bad --where query at character {exc.position} ({exc.code}): {exc.message}")
    except SQLAlchemyError as exc:
        fail(f"database error: {first_line(exc)}")
    except OSError as exc:
        fail(f"cannot use the folder {folder}: {exc.strerror or exc}")
    for problem in summary.failures:
        log.warning("failed: %s: %s: %s", problem.path, problem.code, problem.message)
    for image, name in summary.renames:
        log.warning("name taken: %s exported as %s", image, name)
    if summary.copied_not_linked:
        log.warning(
            "%d images lie on another filesystem than %s and were copied, not hard-linked",
            summary.copied_not_linked,
            folder,
        )
    heading = f"exported {summary.matched} matching images to {folder} in {summary.elapsed:.1f}s"
    if not summary.matched:
        heading = f"no image matches {where!r}; nothing exported to {folder}"
    typer.echo(render(heading, summary.as_dict()), err=True)
    raise typer.Exit(1 if summary.failed else 0)


Fail = Callable[[str], NoReturn]


def _aliases(extra: Path | None, fail: Fail) -> dict[str, str]:
    try:
        return load_aliases(extra)
    except AliasError as exc:
        fail(str(exc))


def _output_dir(captions: Path | None, layout: Layout, fail: Fail) -> Path | None:
    if layout is Layout.beside and captions is not None:
        fail("--layout beside writes each caption next to its image; leave out --captions DIR")
    if layout is Layout.mirror and captions is None:
        fail("nothing to export: pass --captions DIR (or --layout beside)")
    if captions is not None and captions.exists() and not captions.is_dir():
        fail(f"--captions {captions} is not a folder")
    return captions


def _run_with_progress(
    engine: Engine,
    out_dir: Path | None,
    options: CaptionOptions,
    where: Callable[[int], Sequence[int]] | None = None,
) -> ExportSummary:
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("exporting", total=None, rate="")

        def report(done: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            bar.update(task, completed=done, total=total, rate=rate_text(done, elapsed, "img"))

        return export_captions(engine, out_dir, options, report, where)


def _log_summary(summary: ExportSummary, out_dir: Path | None) -> None:
    for problem in summary.failures:
        log.warning("failed: %s: %s: %s", problem.path, problem.code, problem.message)
    for image, caption in summary.renames:
        log.warning("name taken: %s -> %s (a training tool will not pair it)", image, caption)
    where = f"under {out_dir}" if out_dir is not None else "beside the images"
    log.info(
        "exported captions %s in %.1fs (root %s): %s",
        where,
        summary.elapsed,
        summary.root,
        json.dumps(summary.as_dict()),
    )


def _given(value: T | None, default: T) -> T:
    """An option's value, or the settings' default when it was not given."""
    return default if value is None else value

"""``sagashi tag-dataset SRC... --out DIR``: a collection's predictions, without an index.

For dataset curation: the files under the sources are found as ``sagashi index`` finds them
(:func:`indexer.scan.walk`: the same supported files, symlink rules and per-file problems),
tagged in this process (the index's readers and :class:`~indexer.forwarding.InFlight`) or on
Ray (:func:`indexer.ray_tagging.tag_on_ray`, the index's Ray pipeline), and written to DIR as
Parquet shards in the import format (:mod:`indexer.shards`): the postings the index would
store (:meth:`~app.store.repository.TagMap.postings`), the embedding, and the file's size and
mtime. ``sagashi import DIR --model-dir M`` ingests them into an index that equals
``sagashi index`` of the same files with the same model. With captions, each tagged image
also gets a caption sidecar (:mod:`indexer.shard_captions`).

Resumable: shards are written whole (temporary name, flushed, renamed). A rerun into the same
DIR skips the files a whole shard already describes as they are (same path, size and mtime)
and tags the rest; at its end, the rows of files under the sources that changed or vanished,
and any second row of one path, are dropped (their shard rewritten whole, then the old one
removed), so DIR describes every file once, as it is now. Rows of files outside the sources
(an earlier run's other folders) are kept. One run at a time per DIR (an flock).

The sources may instead be object-store URIs (``s3://bucket/prefix``, ``gs://``,
``file://``; :mod:`indexer.object_store`): the objects are listed and read through pyarrow's
filesystems, a row's path is the object's URI, its size and mtime the listing's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.atomic_files import sweep
from app.errors import SagashiError
from app.settings import Settings
from app.store.repository import TagMap
from app.tagger.protocol import Prediction, Tagger
from app.tagger.vocab import GROUPS
from indexer.export import CaptionOptions, parse_order, tag_names
from indexer.forwarding import InFlight
from indexer.object_store import ObjectReader, ObjectReaders, is_uri, list_objects, open_stores
from indexer.pipeline import IndexOptions, Loaded, handed_over, loaded_from
from indexer.ray_tagging import RayOptions, ShardWriter, results_kept, tag_on_ray
from indexer.scan import Found, Problem, walk
from indexer.shard_captions import CaptionWriter
from indexer.shards import (
    read_shard,
    remove_files,
    shard_paths,
    shard_row,
    write_shard,
)

log = logging.getLogger(__name__)

LOCK = ".sagashi-tag-dataset.lock"
SHARD_ROWS = 4096  # rows per shard, unless --shard-rows says otherwise
SHARD_SECONDS = 30.0  # a shard at least this often: a killed run loses at most that much

Progress = Callable[[int, int], None]
Key = tuple[str, int, int]  # path, size, mtime_ns: a row describes the file as it is
Source = Path | str  # a local file or folder, or an object-store URI


class DatasetError(SagashiError):
    """The run cannot start or go on; the message says why in one line."""

    http_status = 400
    error_code = "tag_dataset"


@dataclass(frozen=True)
class DatasetOptions:
    """What one ``sagashi tag-dataset`` writes, and where it tags."""

    out: Path
    shard_rows: int = SHARD_ROWS
    captions: CaptionOptions | None = None  # None: no caption sidecars
    ray: RayOptions | None = None  # None: tag in this process
    objects: ObjectReader | None = None  # the sources are object-store URIs


@dataclass
class DatasetSummary:
    found: int = 0
    already_tagged: int = 0
    tagged: int = 0
    shards_written: int = 0
    rows_removed: int = 0  # of files changed or gone since, or a second row of one file
    captions_written: int = 0
    captions_removed: int = 0  # of files gone since
    failures: list[Problem] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def as_dict(self) -> dict[str, object]:
        reasons: dict[str, int] = {}
        for problem in self.failures:
            reasons[problem.code] = reasons.get(problem.code, 0) + 1
        return {
            "found": self.found,
            "already_tagged": self.already_tagged,
            "tagged": self.tagged,
            "failed": self.failed,
            "failed_by_reason": reasons,
            "shards_written": self.shards_written,
            "rows_removed": self.rows_removed,
            "captions_written": self.captions_written,
            "captions_removed": self.captions_removed,
        }


# -- checks before anything is loaded -----------------------------------------------------


def check_sources(sources: Sequence[Source]) -> None:
    """Refuse a source that does not exist, before the model is loaded for it."""
    for source in sources:
        if not os.path.lexists(source):
            raise DatasetError(f"no such file or folder: {source}")


def object_sources(sources: Sequence[str], captions: bool) -> ObjectReader | None:
    """The sources' filesystems when they are object-store URIs (each checked: reachable,
    something there), None when they are local paths; a mix, or captions (which mirror
    local folders), is refused in one line."""
    uris = [source for source in sources if is_uri(source)]
    if not uris:
        return None
    if len(uris) != len(sources):
        raise DatasetError(
            "local paths and object-store URIs in one run: tag each kind in its own run "
            "(into the same --out if you like)"
        )
    if captions:
        raise DatasetError("--captions needs local sources (captions mirror their folders)")
    return open_stores(uris)  # ObjectStoreError: one line


def prepare_output(out: Path) -> None:
    """Create DIR if needed and make sure files can be written in it."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".sagashi-probe-"):
            pass
    except OSError as exc:
        raise DatasetError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold DIR for this run: a second run into it is refused while this one lasts."""
    with (out / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetError(
                f"another 'sagashi tag-dataset' is writing to {out}; wait for it to finish"
            ) from None
        yield  # the lock goes with the file's closing, or the process's end


def caption_options(
    settings: Settings,
    aliases: dict[str, str],
    allow: frozenset[str] | None,
    deny: frozenset[str] | None,
    order: str,
) -> CaptionOptions:
    """The captions ``sagashi export --captions`` would write with these lists and order:
    the settings' thresholds and top-k, the tag rules on (contradictions, overlap)."""
    from app.tagrules.configured import refinement

    try:
        groups = parse_order(order)
    except ValueError as exc:
        raise DatasetError(f"--order: {exc}") from None
    refine = refinement(settings, overlap=True, contradictions=True)  # RulesError: one line
    defaults = settings.tag_defaults()
    return CaptionOptions(
        threshold_general=defaults.general,
        threshold_character=defaults.character,
        threshold_copyright=defaults.copyright,
        top_k=defaults.top_k,
        allow=tag_names(allow, aliases),
        deny=tag_names(deny, aliases) or frozenset(),
        order=groups,
        refine=refine,
    )


def plan(
    settings: Settings,
    sources: Sequence[str],
    out: Path,
    shard_rows: int,
    ray: str | None,
    ray_actors: int,
    captions: bool = False,
) -> tuple[IndexOptions, DatasetOptions]:
    """Check the sources, DIR and Ray (installed, its address answering) before the model
    is loaded: each refusal is one line. The index's options, and the run's."""
    from indexer import jobs, ray_tagging

    objects = object_sources(sources, captions)
    if objects is None:
        check_sources(sources)
    prepare_output(out)
    index = jobs.index_options(settings)
    ray_options = None
    if ray is not None:
        ray_options = ray_tagging.ray_options(settings, ray, ray_actors)
        ray_tagging.preflight(ray_options)
    return index, DatasetOptions(out, shard_rows, None, ray_options, objects)


# -- the run ------------------------------------------------------------------------------


class Vocabulary:
    """The model's tags as shards name them: postings without a database, each stored name
    numbered in :meth:`TagMap.wanted`'s order, and each name's group for the captions."""

    def __init__(self, tagger: Tagger, aliases: dict[str, str]) -> None:
        wanted = TagMap.wanted(tagger.vocab, aliases)
        self.names = dict(enumerate(wanted))
        self.tag_map = TagMap.of(tagger.vocab, aliases, {n: i for i, n in self.names.items()})
        self.groups = {name: GROUPS[code] for name, code in wanted.items()}


def tag_dataset(
    tagger: Tagger,
    index: IndexOptions,
    sources: Sequence[Source],
    options: DatasetOptions,
    progress: Progress | None = None,
) -> DatasetSummary:
    """Tag what the shards in ``options.out`` lack, write it there, drop stale rows."""
    summary = DatasetSummary()
    options.out.mkdir(parents=True, exist_ok=True)
    if sweep(options.out):
        log.info("removed the half-written shards of an earlier run from %s", options.out)
    found = _scan(sources, index.media_roots, options.objects, summary)
    previous = Previous.read(options.out)
    described = previous.keys()
    todo = [f for f in found if (f.path, f.size, f.mtime_ns) not in described]
    summary.already_tagged = len(found) - len(todo)
    if summary.already_tagged:
        log.info("%d files are in the shards of an earlier run already", summary.already_tagged)
    vocabulary = Vocabulary(tagger, index.aliases)
    captions = None
    if options.captions is not None:
        paths = (f.path for f in found)
        captions = CaptionWriter.create(
            options.out, [Path(s) for s in sources], options.captions, vocabulary.groups, paths
        )
    sink = ShardSink(options.out, options.shard_rows, captions, summary)
    counter = _Counter(summary.already_tagged, len(found), progress)
    if todo and options.ray is not None:
        _tag_on_ray(options, index, tagger, todo, vocabulary, sink, counter)
    elif todo:
        _tag_here(options, index, tagger, todo, vocabulary, sink, counter)
    sink.flush()
    previous.compact(found, sources, sink.tagged_paths, captions, summary)
    if captions is not None:
        summary.captions_written = captions.written
        summary.captions_removed = captions.removed
    return summary


def _scan(
    sources: Sequence[Source],
    media_roots: Sequence[str],
    objects: ObjectReader | None,
    summary: DatasetSummary,
) -> list[Found]:
    """The files under the sources, as the index finds them (or the objects listed under
    the URIs); problems go to the summary. A symlink may lead into a source or one of
    SAGASHI_MEDIA_ROOTS, as in the index."""
    found: list[Found] = []
    if objects is None:
        items: Iterator[Found | Problem] = walk([Path(s) for s in sources], media_roots)
    else:
        items = (item for store in objects.stores for item in list_objects(store))
    for item in items:
        if isinstance(item, Found):
            found.append(item)
        else:
            summary.failures.append(item)
    summary.found = len(found)
    return found


@dataclass
class _Counter:
    """Files done (described already, tagged, or failed) out of the files found."""

    done: int
    total: int
    progress: Progress | None

    def __post_init__(self) -> None:
        self.step(0)

    def step(self, files: int) -> None:
        self.done += files
        if self.progress is not None:
            self.progress(self.done, self.total)


class ShardSink:
    """Collects rows and writes them as whole shards: every ``rows_per_shard`` rows, at
    least every :data:`SHARD_SECONDS`, and at the end. A row's caption is written before
    its shard, so a file a shard describes always has its caption."""

    def __init__(
        self,
        folder: Path,
        rows_per_shard: int,
        captions: CaptionWriter | None,
        summary: DatasetSummary,
    ) -> None:
        self.folder = folder
        self.rows_per_shard = max(1, rows_per_shard)
        self.captions = captions
        self.summary = summary
        self.pending: list[dict[str, Any]] = []
        self.tagged_paths: set[str] = set()
        self.last = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.pending.extend(rows)
        waited = time.monotonic() - self.last
        if len(self.pending) >= self.rows_per_shard or waited >= SHARD_SECONDS:
            self.flush()

    def fail(self, problem: Problem) -> None:
        self.summary.failures.append(problem)

    def flush(self) -> None:
        self.last = time.monotonic()
        while self.pending:
            rows = self.pending[: self.rows_per_shard]
            self.pending = self.pending[self.rows_per_shard :]
            self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self.captions is not None:
            for row in rows:
                problem = self.captions.write(row, overwrite=True)
                if problem is not None:
                    self.fail(problem)
        try:
            write_shard(self.folder, rows)
        except OSError as exc:
            raise DatasetError(
                f"cannot write a shard to {self.folder}: {exc.strerror or exc} (the whole "
                "shards written are kept; rerun to resume)"
            ) from None
        self.summary.shards_written += 1
        self.summary.tagged += len(rows)
        self.tagged_paths.update(row["path"] for row in rows)


def _tag_here(
    options: DatasetOptions,
    index: IndexOptions,
    tagger: Tagger,
    todo: list[Found],
    vocabulary: Vocabulary,
    sink: ShardSink,
    counter: _Counter,
) -> None:
    """The index's in-process path: its readers, then the model with batches in flight."""

    def write(items: list[Loaded], prediction: Prediction) -> None:
        rows = []
        postings = vocabulary.tag_map.batch_postings(prediction.probs, index.score_floor)
        for row, loaded in enumerate(items):
            error = prediction.errors.get(row)
            if error is not None:  # a JPEG the device and then the CPU could not decode
                sink.fail(Problem(loaded.found.path, error.code, error.message))
                continue
            tag_ids, scores = postings[row]
            names = [vocabulary.names[t] for t in tag_ids.tolist()]
            assert loaded.facts is not None  # decoded: its facts are known
            rows.append(shard_row(loaded.facts, names, scores, prediction.embeddings[row]))
        sink.add(rows)
        counter.step(len(items))

    if options.objects is None:
        readers = index.readers(tagger)
    else:
        readers = ObjectReaders(options.objects, index.read_spec(tagger), index.workers)
    tasks = ((f.path, (f.size, f.mtime_ns)) for f in todo)
    with InFlight(tagger, write) as model:
        waiting: list[Loaded] = []
        for item, read in zip(todo, readers.map(tasks), strict=True):
            loaded = loaded_from(item, read)
            if loaded.error is not None:
                sink.fail(Problem(item.path, loaded.error.code, loaded.error.message))
                counter.step(1)
                continue
            waiting.append(loaded)
            if len(waiting) >= index.batch_size:
                model.submit(waiting, handed_over(waiting))
                waiting = []
        model.submit(waiting, handed_over(waiting))
        model.drain()


def _tag_on_ray(
    options: DatasetOptions,
    index: IndexOptions,
    tagger: Tagger,
    todo: list[Found],
    vocabulary: Vocabulary,
    sink: ShardSink,
    counter: _Counter,
) -> None:
    """The index's Ray pipeline: read and decoded on CPU workers, tagged by the actors."""
    rows_of = ShardWriter(sink.folder, vocabulary.tag_map, vocabulary.names, index.score_floor)
    assert options.ray is not None
    for batch in tag_on_ray(options.ray, index, tagger, todo, options.objects):
        rows, failures = rows_of.rows(batch)
        for problem in failures:
            sink.fail(problem)
        sink.add(rows)
        counter.step(len(batch["path"]))


# -- what earlier runs left ------------------------------------------------------------------


@dataclass
class Previous:
    """The whole shards in DIR when the run started, and each one's rows' keys."""

    folder: Path
    shards: dict[Path, list[Key]]
    present: set[str] = field(default_factory=set)  # the paths found now

    @classmethod
    def read(cls, folder: Path) -> Previous:
        shards: dict[Path, list[Key]] = {}
        for shard in shard_paths(folder):
            keys = _read_keys(shard)
            if keys is None:  # damaged: put aside, where imports do not look
                shard.rename(shard.with_name(f".{shard.name}.damaged"))
                continue
            shards[shard] = keys
        return cls(folder, shards)

    def keys(self) -> set[Key]:
        return {key for keys in self.shards.values() for key in keys}

    def compact(
        self,
        found: list[Found],
        sources: Sequence[Source],
        tagged: set[str],
        captions: CaptionWriter | None,
        summary: DatasetSummary,
    ) -> None:
        """Drop the rows of files under the sources that changed or vanished, and second
        rows of one path (the rows tagged in this run come first); with captions, write the
        missing ones of the rows kept."""
        now = {(f.path, f.size, f.mtime_ns) for f in found}
        self.present = {f.path for f in found}
        roots = [str(s).rstrip("/") if is_uri(str(s)) else os.path.abspath(s) for s in sources]
        kept = set(tagged)
        for shard, keys in self.shards.items():
            drop = set()
            for number, (path, size, mtime_ns) in enumerate(keys):
                stale = _under(path, roots) and (path, size, mtime_ns) not in now
                if path in kept or stale:
                    drop.add(number)
                else:
                    kept.add(path)
            if drop or captions is not None:
                self._rewrite(shard, drop, now, captions, summary)

    def _rewrite(
        self,
        shard: Path,
        drop: set[int],
        now: set[Key],
        captions: CaptionWriter | None,
        summary: DatasetSummary,
    ) -> None:
        """The shard without the rows ``drop`` numbers (written whole, then the old one
        removed), and the captions missing for its rows of files as they are ``now``."""
        rows = read_shard(shard)
        if rows is None:
            return
        if captions is not None:
            for number in drop:
                if rows[number]["path"] not in self.present:
                    captions.remove(rows[number])
        rows = [row for number, row in enumerate(rows) if number not in drop]
        if captions is not None:
            for row in rows:
                if (row["path"], row["size"], row["mtime_ns"]) in now:
                    problem = captions.write(row, overwrite=False)
                    if problem is not None:
                        summary.failures.append(problem)
        if not drop:
            return
        try:
            if rows:
                write_shard(self.folder, rows)  # whole first: a kill now leaves a row twice
            remove_files([shard])
        except OSError as exc:
            raise DatasetError(
                f"cannot rewrite the shard {shard}: {exc.strerror or exc} (the shards are "
                "whole; rerun to finish)"
            ) from None
        summary.rows_removed += len(drop)


def _read_keys(shard: Path) -> list[Key] | None:
    """A shard's (path, size, mtime_ns) rows, or None when it cannot be read."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(shard, columns=["path", "size", "mtime_ns"])
    except Exception as exc:  # pyarrow raises several types for unreadable files
        log.warning("putting aside an unreadable shard %s: %s", shard, exc)
        return None
    columns = [table.column(name).to_pylist() for name in ("path", "size", "mtime_ns")]
    return list(zip(*columns, strict=True))


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


# -- the command ----------------------------------------------------------------------------


def run_command(
    tagger: Tagger,
    index: IndexOptions,
    sources: Sequence[Source],
    options: DatasetOptions,
    as_json: bool,
) -> DatasetSummary:
    """'sagashi tag-dataset': DIR held, a progress bar, the failures logged, a summary
    (a table on stderr, or one JSON object on stdout)."""
    import json
    import sys

    import typer

    from indexer.progress import progress_bar, rate_text
    from indexer.summary import render

    started = time.perf_counter()
    with output_lock(options.out), progress_bar() as bar:
        task = bar.add_task("tagging", total=None, rate="")

        def report(done: int, total: int) -> None:
            rate = rate_text(done, time.perf_counter() - started, "files")
            bar.update(task, completed=done, total=total, rate=rate)

        try:
            with results_kept(options.ray is not None):
                summary = tag_dataset(tagger, index, sources, options, report)
        except Exception as exc:
            if not type(exc).__module__.startswith("ray"):
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatasetError(  # a Ray task failed past its retries
                f"the Ray pipeline failed: {reason} (whole shards are kept; rerun to resume)"
            ) from exc
    seconds = time.perf_counter() - started
    for failure in summary.failures:
        log.warning("failed: %s: %s: %s", failure.path, failure.code, failure.message)
    if as_json:
        record = {"out": str(options.out), "seconds": round(seconds, 3), **summary.as_dict()}
        sys.stdout.write(json.dumps(record) + "\n")
    else:
        heading = f"tagged into {options.out} in {seconds:.1f}s"
        typer.echo(render(heading, summary.as_dict()), err=True)
    return summary

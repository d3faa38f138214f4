"""``sagashi import``: ingest predictions computed elsewhere (a cluster, a benchmark).

Formats, chosen by extension:

* ``.jsonl`` / ``.ndjson``: one object per line with ``path``, optional ``sha256`` and
  ``md5`` (both computed from the file when ``sha256`` is missing), ``width``, ``height``,
  ``tags`` (``{name: score}``) and ``embedding`` (a list of floats).
  For millions of images, leave ``embedding`` out and put a row-aligned ``.npy`` matrix
  (N × D, float16 or float32) beside the file as ``FILE.npy``, or name it with
  ``--embeddings``.
* ``.parquet``: columns ``path``, ``sha256``, ``md5`` (optional), ``width``, ``height``,
  ``tag`` (list of strings), ``score`` (list of floats) and ``embedding`` (list or
  fixed-size list of floats).

A folder is read as every ``*.parquet`` shard directly in it, by name, as one input (the
rows numbered on across them): what ``sagashi tag-dataset`` and ``sagashi index --ray``
write.

Both formats may also give ``size`` and ``mtime_ns`` (the file's size in bytes and
modification time in nanoseconds when it was tagged) and ``format`` (``png``, ``jpeg``, ...,
else taken from the extension): with them a later ``sagashi index`` of the same, unchanged
files skips them instead of reading them again (``sagashi index --ray`` writes them).

Each row gets the tagger path's validation: scores finite and within [0, 1], the embedding
of the generation's dimension, finite and non-zero (stored L2-normalised), tag names
normalised through the alias table, a unique path. A bad row is reported with its line and
reason and skipped; the import goes on. Rows are written in batches of 5,000, and committed
every 50,000: an interrupted import keeps what it committed, and running it again updates
those images in place (never duplicates them) and adds the rest.

Reading and validating rows is a large share of an import's time, and all of it Python, so
a large file is read in a child process (:mod:`indexer.import_reader`) while this one
writes: the two halves overlap on two cores. What crosses between them is compact: per batch, the
distinct tag names, one small integer per posting, and a float16 matrix of embeddings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from app.errors import SagashiError
from app.store import repository as repo
from app.store.aliases import canonical
from app.store.db import session_factory
from app.store.digests import of_file
from app.store.formats import canonical_format
from app.store.models import Tag
from app.tagger.defaults import CARD
from app.tagger.vocab import GENERAL, GROUP_CODE, TagVocabulary
from indexer.shards import shard_paths

log = logging.getLogger(__name__)

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MD5 = re.compile(r"^[0-9a-f]{32}$")
MAX_SIDE = 1_000_000
# Below this size a file is read in this process: starting a child costs about a second.
CHILD_READER_MIN_BYTES = 8 << 20


# The per-file columns of a Parquet input (tags, scores and embeddings apart).
FILE_COLUMNS = ("path", "sha256", "md5", "width", "height", "size", "mtime_ns", "format")


class ImportError_(SagashiError):
    """The import as a whole cannot proceed (bad file, wrong dimension, model mismatch)."""

    http_status = 400
    error_code = "bad_import"


@dataclass(frozen=True)
class Row:
    """One input record, as read; validated by :func:`validate`."""

    number: int
    raw: Mapping[str, Any]
    embedding: np.ndarray | None


@dataclass
class ImportSummary:
    new: int = 0
    updated: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def as_dict(self) -> dict[str, int]:
        return {"new": self.new, "updated": self.updated, "failed": self.failed}


@dataclass(frozen=True)
class ImportOptions:
    model_name: str
    vocabulary: TagVocabulary | None
    aliases: Mapping[str, str]
    score_floor: float
    strict: bool
    batch_size: int = 5000
    identity: repo.GenerationIdentity | None = None  # from --model-dir: merge with its index
    # Rows per transaction. Postings land all over the (tag, score) B-tree, so each commit
    # rewrites most of the pages it touched; fewer, larger commits write each page less often.
    commit_every: int = 50_000
    cache_mb: int = 1024  # SQLite page cache for the import's connection
    # The thresholds tag counts are taken at (autocomplete, wildcard ranking): the server's.
    count_thresholds: Mapping[str, float] = field(default_factory=CARD.thresholds)


class RowError(SagashiError):
    """One row of an import file that cannot be used; the message says why."""

    http_status = 400
    error_code = "bad_row"


def read_rows(path: Path, embeddings: Path | None) -> Iterator[Row]:
    if path.is_dir():
        yield from _folder_rows(path, embeddings)
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(path)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        yield from _jsonl_rows(path, embeddings)
    else:
        raise ImportError_(f"{path}: unknown format '{suffix}'; use .jsonl, .ndjson or .parquet")


def _folder_rows(folder: Path, embeddings: Path | None) -> Iterator[Row]:
    """Every Parquet shard in ``folder`` (not below it), by name, as one input: rows are
    numbered on across the shards. Hidden files (a shard being written) are left out."""
    if embeddings is not None:
        raise ImportError_(f"{folder}: a folder of Parquet shards takes no --embeddings")
    shards = shard_paths(folder)
    if not shards:
        raise ImportError_(f"{folder}: a folder, but it holds no .parquet shards to import")
    number = 0
    for shard in shards:
        for row in _parquet_rows(shard):
            number += 1
            yield Row(number, row.raw, row.embedding)


def input_bytes(path: Path) -> int:
    """The size of an input: a file's, or a folder's shards together (0 when unreadable)."""
    try:
        if path.is_dir():
            return sum(shard.stat().st_size for shard in shard_paths(path))
        return path.stat().st_size
    except OSError:
        return 0  # read_rows reports the error


def _jsonl_rows(path: Path, embeddings: Path | None) -> Iterator[Row]:
    matrix = _load_matrix(embeddings or Path(f"{path}.npy"), required=embeddings is not None)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ImportError_(f"cannot open {path}: {exc.strerror or exc}") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            vector = None
            if matrix is not None:
                if number > len(matrix):
                    raise ImportError_(
                        f"{path}:{number}: more lines than the {len(matrix)} embedding rows"
                    )
                vector = np.asarray(matrix[number - 1], dtype=np.float32)
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Row(number, {"__error__": f"not valid JSON ({exc.msg})"}, None)
                continue
            yield Row(
                number, raw if isinstance(raw, dict) else {"__error__": "not an object"}, vector
            )


def _load_matrix(path: Path, required: bool) -> np.ndarray | None:
    if not path.exists():
        if required:
            raise ImportError_(f"embeddings file {path} does not exist")
        return None
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ImportError_(f"{path}: not a readable .npy matrix ({exc})") from exc
    if matrix.ndim != 2:
        raise ImportError_(
            f"{path}: embeddings must be a 2-d (rows x dim) matrix, got {matrix.shape}"
        )
    return np.asarray(matrix)


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ImportError_(f"{path}: not a readable Parquet file ({exc})") from exc
    number = 0
    for batch in table.iter_batches(batch_size=10_000):
        count = batch.num_rows
        names = set(batch.schema.names)
        columns = {
            k: batch.column(k).to_pylist() if k in names else [None] * count
            for k in (*FILE_COLUMNS, "tag", "score")
        }
        vectors = _embedding_column(path, batch.column("embedding")) if "embedding" in names else []
        for i in range(count):
            number += 1
            tags, scores = columns["tag"][i], columns["score"][i]
            raw: dict[str, Any] = {
                k: columns[k][i] for k in FILE_COLUMNS if k in names and columns[k][i] is not None
            }
            if tags is not None and scores is not None:
                if len(tags) != len(scores):
                    raw["__error__"] = "tag and score lists differ in length"
                raw["tags"] = dict(zip(tags, scores, strict=False))
            yield Row(number, raw, vectors[i] if vectors else None)


def _embedding_column(path: Path, column: Any) -> list[np.ndarray | None]:
    """Each row's embedding as a float32 view of one array for the whole batch: turning
    10,000 x 1024 values into Python floats and back cost most of a Parquet import."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if not (listed or pa.types.is_fixed_size_list(kind)) or not (
        pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)
    ):
        raise ImportError_(f"{path}: column 'embedding' must hold lists of numbers, not {kind}")
    # flatten() leaves out null rows; a null inside a list becomes NaN, refused as such
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    vectors: list[np.ndarray | None] = []
    start = 0
    for length in lengths.tolist():
        if length is None or length != length:  # a null row (NaN in a float array)
            vectors.append(None)
            continue
        vectors.append(values[start : start + int(length)])
        start += int(length)
    return vectors


@dataclass(frozen=True)
class Valid:
    facts: repo.FileFacts
    tags: dict[str, float]
    embedding: np.ndarray


def validate(row: Row, dim: int | None, options: ImportOptions, known: set[str]) -> Valid:
    raw = row.raw
    if "__error__" in raw:
        raise RowError(str(raw["__error__"]))
    path = raw.get("path")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise RowError("'path' must be a non-empty string")
    width, height = raw.get("width"), raw.get("height")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_SIDE:
            raise RowError(f"'{name}' must be a positive integer, got {value!r}")
    sha, md5 = raw.get("sha256"), raw.get("md5")
    if not sha:  # both digests from the file's bytes
        sha, md5 = _hash_file(path)
    if not isinstance(sha, str) or not SHA256.match(sha):
        raise RowError("'sha256' must be 64 lowercase hex digits")
    if md5 is not None and (not isinstance(md5, str) or not MD5.match(md5)):
        raise RowError("'md5' must be 32 lowercase hex digits")
    tags = _validate_tags(raw.get("tags"), options, known)
    embedding = row.embedding if row.embedding is not None else _embedding_from(raw)
    embedding = _validate_embedding(embedding, dim)
    assert isinstance(width, int) and isinstance(height, int)  # checked above
    size, mtime_ns = raw.get("size", 0), raw.get("mtime_ns", 0)
    for name, value in (("size", size), ("mtime_ns", mtime_ns)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RowError(f"'{name}' must be a non-negative integer, got {value!r}")
    kind = raw.get("format") or os.path.splitext(path)[1]
    if not isinstance(kind, str):
        raise RowError(f"'format' must be a string, got {kind!r}")
    facts = repo.FileFacts(
        path, sha, size, mtime_ns, width, height, canonical_format(kind)[:16], md5
    )
    return Valid(facts, tags, embedding)


def _hash_file(path: str) -> tuple[str, str]:
    try:
        found = of_file(path)
        return found.sha256, found.md5
    except OSError:
        raise RowError("no 'sha256' given and the file cannot be read to compute it") from None


_NUMBER_TYPES = frozenset({int, float})


def _validate_tags(tags: object, options: ImportOptions, known: set[str]) -> dict[str, float]:
    """Vectorised checks for the common, valid row; any doubt goes to the exact loop,
    which names the offending tag."""
    if not isinstance(tags, dict):
        raise RowError("'tags' must be an object of tag name -> score")
    values = list(tags.values())
    if not {type(v) for v in values} <= _NUMBER_TYPES:
        return _validate_tags_exactly(tags, options, known)
    scores = np.array(values, dtype=np.float64)
    if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
        return _validate_tags_exactly(tags, options, known)
    names = list(tags.keys())
    if options.strict or any(not isinstance(n, str) for n in names):
        return _validate_tags_exactly(tags, options, known)
    aliases = options.aliases
    result: dict[str, float] = {}
    for index in np.flatnonzero(scores >= options.score_floor).tolist():
        name = names[index].strip().lower()
        if name:  # PixAI v0.9 has an empty tag name; it carries no meaning
            tag = aliases.get(name, name)
            score = float(scores[index])
            if score > result.get(tag, -1.0):
                result[tag] = score
    return result


def _validate_tags_exactly(
    tags: dict[Any, Any], options: ImportOptions, known: set[str]
) -> dict[str, float]:
    result: dict[str, float] = {}
    for name, score in tags.items():
        if not isinstance(name, str):
            raise RowError("tag names must be strings")
        if not name.strip():
            continue  # PixAI v0.9 has an empty tag name; it carries no meaning
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise RowError(f"score for '{name}' must be a number, got {score!r}")
        if not math.isfinite(score):
            raise RowError(f"score for '{name}' is {score}, not a finite number")
        if not 0.0 <= score <= 1.0:
            raise RowError(f"score for '{name}' is {score}, outside [0, 1]")
        tag = canonical(name.strip().lower(), options.aliases)
        if options.strict and tag not in known:
            raise RowError(f"unknown tag '{name}' (--strict)")
        if score >= options.score_floor:
            result[tag] = max(float(score), result.get(tag, -1.0))
    return result


def _embedding_from(raw: Mapping[str, Any]) -> np.ndarray:
    vector = raw.get("embedding")
    if not isinstance(vector, list) or not vector:
        raise RowError("no 'embedding' (a list of floats, or a row-aligned .npy file)")
    try:
        return np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise RowError("'embedding' must be a list of numbers") from None


def _validate_embedding(vector: np.ndarray, dim: int | None) -> np.ndarray:
    if vector.ndim != 1 or (dim is not None and len(vector) != dim):
        raise RowError(f"embedding has {vector.size} values, the index uses {dim}")
    if not np.isfinite(vector).all():
        raise RowError("embedding contains NaN or infinite values")
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise RowError("embedding is all zeros")
    return vector / norm


@dataclass(frozen=True)
class Prepared:
    """A batch of validated rows in the compact form that crosses between processes."""

    facts: list[repo.FileFacts]
    names: list[str]  # the distinct tag names of the batch
    name_index: np.ndarray  # int32 per posting, into ``names``
    scores: np.ndarray  # float32 per posting
    counts: np.ndarray  # int64 postings per row
    embeddings: np.ndarray  # float16 (rows x dim), L2-normalised: what the store keeps
    failures: list[tuple[int, str]]  # (line, reason) of the rows left out


def prepare(
    rows: Iterator[Row], options: ImportOptions, known: set[str]
) -> Generator[int | Prepared, None, None]:
    """Validate ``rows``: first the embedding dimension (an int, from the first row), then
    batches of ``options.batch_size`` valid rows. Nothing at all for an empty input."""
    first = next(rows, None)
    if first is None:
        return
    dim = _dimension(first)
    yield dim
    seen: set[str] = set()
    pending: list[Valid] = []
    failures: list[tuple[int, str]] = []
    for row in _chain(first, rows):
        try:
            valid = validate(row, dim, options, known)
            if valid.facts.path in seen:
                raise RowError(f"duplicate path {valid.facts.path!r} in this import")
        except RowError as exc:
            failures.append((row.number, str(exc)))
            continue
        seen.add(valid.facts.path)
        pending.append(valid)
        if len(pending) >= options.batch_size:
            yield _pack(pending, failures, dim)
            pending, failures = [], []
    if pending or failures:
        yield _pack(pending, failures, dim)


def _pack(batch: list[Valid], failures: list[tuple[int, str]], dim: int) -> Prepared:
    slots: dict[str, int] = {}
    index = [slots.setdefault(name, len(slots)) for item in batch for name in item.tags]
    scores = [score for item in batch for score in item.tags.values()]
    embeddings = np.empty((len(batch), dim), dtype=np.float16)
    for row, item in enumerate(batch):
        embeddings[row] = item.embedding
    return Prepared(
        [item.facts for item in batch],
        list(slots),
        np.array(index, dtype=np.int32),
        np.array(scores, dtype=np.float32),
        np.array([len(item.tags) for item in batch], dtype=np.int64),
        embeddings,
        failures,
    )


def _dimension(first: Row) -> int:
    if first.embedding is not None:
        return int(first.embedding.size)
    vector = first.raw.get("embedding")
    if isinstance(vector, list) and vector:
        return len(vector)
    raise ImportError_(f"line {first.number}: no embedding; cannot tell the dimension")


def prepared_in_child(
    path: Path, embeddings: Path | None, options: ImportOptions, known: set[str]
) -> Generator[int | Prepared, None, None]:
    """:func:`prepare` over ``read_rows(path, embeddings)``, run in a child process
    (:mod:`indexer.import_reader`) that reads ahead while this one writes. Its errors come
    back as they would in this process."""
    child = subprocess.Popen(
        [sys.executable, "-m", "indexer.import_reader"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        with suppress(BrokenPipeError):  # a child that died early is reported below
            pickle.dump((path, embeddings, options, known), child.stdin, pickle.HIGHEST_PROTOCOL)
            child.stdin.close()
        while True:
            try:
                kind, payload = pickle.load(child.stdout)
            except EOFError:
                raise ImportError_(
                    f"the import's reader process ended unexpectedly (exit code {child.wait()})"
                ) from None
            if kind == "item":
                yield payload
            elif kind == "end":
                return
            elif kind == "error":
                raise ImportError_(payload)
            else:  # a bug: the whole traceback to the log, its last line to the user
                log.error("the import's reader process failed:\n%s", payload)
                last = str(payload).strip().splitlines()[-1]
                raise ImportError_(f"the import's reader process failed: {last}")
    finally:
        if child.poll() is None:
            child.kill()  # the import stopped early: the rest of the file is not needed
        child.wait()
        for pipe in (child.stdin, child.stdout):
            with suppress(BrokenPipeError):
                pipe.close()


Source = Callable[[set[str]], Generator[int | Prepared, None, None]]


class Importer:
    def __init__(self, engine: Engine, options: ImportOptions) -> None:
        self.engine = engine
        self.options = options
        self.sessions = session_factory(engine)
        self._tag_ids: dict[str, int] = {}

    def run(self, rows: Iterator[Row], progress: Any = None) -> ImportSummary:
        """Import ``rows``, read and validated in this process."""
        return self._run(lambda known: prepare(rows, self.options, known), progress)

    def run_file(
        self,
        path: Path,
        embeddings: Path | None = None,
        progress: Any = None,
        child: bool | None = None,
    ) -> ImportSummary:
        """Import a file, read in a child process when it is large (or ``child`` says so),
        so that reading and writing overlap."""
        if child is None:
            child = input_bytes(path) >= CHILD_READER_MIN_BYTES
        if child:
            return self._run(
                lambda known: prepared_in_child(path, embeddings, self.options, known), progress
            )
        return self.run(read_rows(path, embeddings), progress)

    def _run(self, source: Source, progress: Any) -> ImportSummary:
        summary = ImportSummary()
        self._tag_ids = {}  # ids inserted by an earlier, rolled-back run would be stale
        with self.sessions() as session, _page_cache(session, self.options.cache_mb):
            known = set(session.scalars(select(Tag.name)).all())
            vocab = self.options.vocabulary
            if vocab is not None:
                known |= {canonical(n, self.options.aliases) for n in vocab.names}
            messages = source(known)
            try:
                dim = next(messages, None)
                if dim is None:
                    return summary
                assert isinstance(dim, int)
                generation = repo.generation_for_index(session, self._identity(dim))
                self._ensure_vocabulary(session)
                uncommitted = 0
                for batch in messages:
                    assert isinstance(batch, Prepared)
                    summary.failures.extend(batch.failures)
                    self._write(session, generation.id, batch, summary)
                    uncommitted += len(batch.facts)
                    if uncommitted >= self.options.commit_every:
                        session.commit()
                        uncommitted = 0
                    if progress:
                        progress(summary.new + summary.updated + summary.failed)
            finally:
                messages.close()  # stops a child reader at once when the import fails
            repo.refresh_tag_counts(session, generation.id, self.options.count_thresholds)
            repo.prune_changes(session)
            session.commit()
        return summary

    def _identity(self, dim: int) -> repo.GenerationIdentity:
        if self.options.identity is not None:
            if self.options.identity.embedding_dim != dim:
                raise ImportError_(
                    f"embeddings have {dim} dimensions but the model gives "
                    f"{self.options.identity.embedding_dim}"
                )
            return self.options.identity
        vocab = self.options.vocabulary
        digest = vocab.digest() if vocab is not None else "none"
        return repo.GenerationIdentity(self.options.model_name, "imported", digest, dim, "imported")

    def _ensure_vocabulary(self, session: Session) -> None:
        vocab = self.options.vocabulary
        if vocab is not None:
            repo.TagMap.ensure(session, vocab, self.options.aliases)
            session.commit()

    def _ids_of(self, session: Session, names: list[str]) -> np.ndarray:
        missing = {n: GROUP_CODE[GENERAL] for n in names if n not in self._tag_ids}
        if missing:
            self._tag_ids.update(repo.ensure_tags(session, missing))
        return np.array([self._tag_ids[n] for n in names], dtype=np.int64)

    def _write(
        self, session: Session, generation_id: int, batch: Prepared, summary: ImportSummary
    ) -> None:
        if not batch.facts:
            return
        tag_ids = self._ids_of(session, batch.names)[batch.name_index]
        existing = repo.live_ids_by_path(session, [f.path for f in batch.facts])
        ends = np.cumsum(batch.counts).tolist()
        items = []
        start = 0
        for row, (facts, end) in enumerate(zip(batch.facts, ends, strict=True)):
            prediction = repo.StoredPrediction(
                tag_ids[start:end], batch.scores[start:end], batch.embeddings[row]
            )
            items.append((facts, prediction, existing.get(facts.path)))
            start = end
        repo.write_images(session, generation_id, items)
        updated = sum(1 for _f, _p, e in items if e is not None)
        summary.updated += updated
        summary.new += len(items) - updated


@contextmanager
def _page_cache(session: Session, megabytes: int) -> Iterator[None]:
    """A larger SQLite page cache for the import's connection, restored afterwards: the
    postings B-trees of a large collection do not fit the default one."""
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    before = session.execute(text("PRAGMA cache_size")).scalar_one()
    session.execute(text(f"PRAGMA cache_size=-{int(megabytes) * 1024}"))
    try:
        yield
    finally:
        session.execute(text(f"PRAGMA cache_size={int(before)}"))


def _chain(first: Row, rest: Iterator[Row]) -> Iterator[Row]:
    yield first
    yield from rest

"""The FAISS index and the gather matrix: derived from the ``embeddings`` table, rebuildable
at any time, opened memory-mapped so that server processes share one copy.

FAISS ids are image ids. The index type follows the collection's size: exact inner product
(cosine on L2-normalised vectors, in an IndexIDMap2) below ``FLAT_LIMIT`` images, IVF above
it, with its parameters recorded beside the file. The IVF lists hold float16 vectors (what
the store of record holds) and the image ids themselves, with no IndexIDMap2 around them: a
filtered search then checks its id selector on each listed id directly instead of
translating every position through the id map (docs/benchmarks.md: filtered searches at 1M
images). Beside the index, the gather matrix (app.store.matrix) holds the same vectors in
image-id order, for the exact plans of small filters.

A build streams the vectors from the database into the matrix file, then builds the index
from the matrix (app.store.ivf_build), holding a batch at a time, never the collection.

Files are written atomically (temporary file, then rename), index and matrix first and the
JSON sidecar last: the sidecar records the database's index version, the format, and each
file's size and checksum. A file that is missing, stale, truncated, corrupt or of another
format is rebuilt from the database, never trusted.

At open, the sizes, the matrix's header and the index's own counts (its vectors; an IVF
index's lists add up to them) are checked; the checksums, a read of every byte (4 GB at 1M
images, about 47 s cold at 10M), are left to :meth:`FaissIndex.verify`, which a server runs
in the background once it is ready. Until then a flipped bit in a vector can move a
neighbour up or down the ranking; a file found damaged is rebuilt, and similarity searches
are refused with :class:`VectorsDamaged` until the rebuilt index replaces it.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import Engine, select

from app.atomic_files import atomic_path, write_atomic
from app.errors import SagashiError
from app.store import ivf_build
from app.store.db import session_factory
from app.store.filecheck import FileCheck, checksum, problem, size_problem
from app.store.matrix import Matrix, MatrixWriter
from app.store.models import Embedding, ModelGeneration
from app.store.repository import index_version
from app.text import plural

log = logging.getLogger(__name__)
# The start-up stage /readyz shows while the written files are checked and mapped.
OPENING = "opening the FAISS index"

FLAT_LIMIT = 100_000
READ_CHUNK = 20_000
# The sidecar's format: 2 added the gather matrix and the files' sizes and checksums.
# Files of another format are rebuilt.
FORMAT = 2
# Open without copying: FAISS maps the file and reads the lists (or the flat vectors) in
# place (docs/benchmarks.md: opening FAISS files at 1M images).
OPEN_FLAGS = faiss.IO_FLAG_MMAP_IFC

Report = Callable[[str], None]


def _quiet(_stage: str) -> None:
    pass


@dataclass(frozen=True)
class IndexMeta:
    generation_id: int
    version: int
    count: int
    dim: int
    kind: str
    params: dict[str, Any]
    format: int = 0
    files: dict[str, FileCheck] = field(default_factory=dict)


class IndexWriteError(SagashiError):
    """The index could not be written (a full disk, say); the files on disk are left as
    they were."""

    http_status = 507
    error_code = "index_write_failed"


class VectorsDamaged(SagashiError):
    """A FAISS file failed its checksum after the start: similarity searches are refused
    until the rebuilt index replaces it."""

    http_status = 503
    error_code = "vectors_damaged"


class FaissIndex:
    def __init__(
        self,
        index: Any,
        meta: IndexMeta,
        matrix: Matrix | None = None,
        deferred: dict[Path, FileCheck] | None = None,
    ) -> None:
        self.index = index
        self.meta = meta
        self._matrix = matrix
        # Files whose checksums are left for verify(); what it found wrong.
        self.deferred = deferred or {}
        self.damage: str | None = None

    def verify(self) -> str | None:
        """Check the checksums left for after the start; the first problem (also kept in
        ``damage``, which refuses searches from then on), or None."""
        for path, expected in self.deferred.items():
            found = problem(path, expected)
            if found is not None:
                self.damage = found
                return found
        self.deferred = {}
        return None

    def usable(self) -> FaissIndex:
        """This index, unless it was found damaged (VectorsDamaged)."""
        if self.damage is not None:
            raise VectorsDamaged(
                f"the FAISS files are damaged ({self.damage}); they are being rebuilt"
            )
        return self

    @property
    def matrix(self) -> Matrix:
        """The gather matrix; for an index built in memory without one (tests,
        benchmarks), read back from the index on first use."""
        if self._matrix is None:
            self._matrix = matrix_of(self.index)
        return self._matrix

    def contains(self, image_ids: np.ndarray) -> np.ndarray:
        """A mask of the image ids that the index holds (it may lag the database)."""
        return self.matrix.positions(image_ids)[1]

    def reconstruct(self, image_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these image ids (each must be in the index)."""
        return self.matrix.vectors(image_ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, image ids) of the k nearest, -1 ids where fewer exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = self.index.search(queries, k)
        return scores, ids


def index_paths(data_dir: Path, generation_id: int) -> tuple[Path, Path]:
    folder = Path(data_dir) / "faiss"
    return folder / f"generation-{generation_id}.faiss", folder / f"generation-{generation_id}.json"


def matrix_path(data_dir: Path, generation_id: int) -> Path:
    return Path(data_dir) / "faiss" / f"generation-{generation_id}.vectors"


def generation_files(data_dir: Path, generation_id: int) -> list[Path]:
    """Every file derived for a generation: index, matrix and sidecar."""
    index_path, meta_path = index_paths(data_dir, generation_id)
    return [index_path, matrix_path(data_dir, generation_id), meta_path]


def choose_kind(count: int) -> tuple[str, dict[str, Any]]:
    if count < FLAT_LIMIT:
        return "flat", {}
    nlist = int(4 * math.sqrt(count))
    return "ivf", {"nlist": nlist, "nprobe": max(16, nlist // 16), "codes": "fp16"}


def build_index(vectors: np.ndarray, ids: np.ndarray, kind: str, params: dict[str, Any]) -> Any:
    """An index built in memory from all the vectors at once (tests, benchmarks, and a
    server whose disk cannot take the files)."""
    dim = vectors.shape[1]
    index: Any
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        index = ivf_build.new_ivf(dim, params["nlist"])
        index.train(vectors[ivf_build.training_rows(len(vectors), params["nlist"])])
        index.nprobe = params.get("nprobe", index.nprobe)
    if len(ids):
        index.add_with_ids(vectors, ids.astype(np.int64))
    return index


# Unfiltered recall@10 the calibrated nprobe must reach on held-in sample queries.
TARGET_RECALL = 0.97
CALIBRATION_QUERIES = 64


def stored_ids(index: Any) -> np.ndarray:
    """Every image id the index holds: from the id map around a flat index (or an older IVF
    file), else from the IVF lists themselves."""
    if hasattr(index, "id_map"):
        mapped: np.ndarray = faiss.vector_to_array(index.id_map)
        return mapped
    return _ivf_entries(index)[0]


def matrix_of(index: Any) -> Matrix:
    """The gather matrix of an index built in memory: its vectors read back from it."""
    if hasattr(index, "id_map"):
        inner = faiss.downcast_index(index.index)
        ids = faiss.vector_to_array(index.id_map)
        if isinstance(inner, faiss.IndexFlat):
            flat = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d)
            return Matrix.of(ids, flat.reshape(inner.ntotal, inner.d))
        positions, vectors = _ivf_entries(inner)  # an older file: the lists hold positions
        return Matrix.of(ids[positions], vectors)
    return Matrix.of(*_ivf_entries(index))


def _ivf_entries(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """(listed ids, their vectors) of every entry of an IVF index's lists, list by list."""
    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    invlists: Any = ivf.invlists
    ids, vectors = [np.zeros(0, np.int64)], [np.zeros((0, ivf.d), np.float32)]
    for i in range(invlists.nlist):
        size = invlists.list_size(i)
        if not size:
            continue
        ids.append(faiss.rev_swig_ptr(invlists.get_ids(i), size).copy())
        codes = faiss.rev_swig_ptr(invlists.get_codes(i), size * invlists.code_size)
        if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
            vectors.append(ivf.sq.decode(codes.reshape(size, -1)))
        else:  # IndexIVFFlat: the codes are the float32 vectors
            vectors.append(codes.view(np.float32).reshape(size, ivf.d).copy())
    return np.concatenate(ids), np.concatenate(vectors)


def calibrate(index: Any, matrix: Matrix) -> dict[str, Any]:
    """The fewest IVF lists to probe for recall@10 >= TARGET_RECALL on sample queries drawn
    from the collection itself, against an exact search. How many lists the true neighbours
    span depends on the data, not only on its size (1/16 of the lists gave 0.95 at 100k
    synthetic images and 1.00 at 1M, at four times the cost), so it is measured here, once,
    when the index is built."""
    ivf = faiss.extract_index_ivf(index)
    rng = np.random.default_rng(1)
    picks = rng.choice(matrix.count, min(CALIBRATION_QUERIES, matrix.count), replace=False)
    queries = np.ascontiguousarray(matrix.rows[picks], dtype=np.float32)
    exact = matrix.ids[_exact_top(matrix, queries, 10)]
    nprobe, recall = ivf.nlist, 1.0
    for candidate in (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        if candidate >= ivf.nlist:
            break
        params = faiss.SearchParametersIVF(nprobe=candidate)  # type: ignore[call-arg]
        _scores, found = index.search(queries, 10, params=params)
        hits = sum(
            len(set(row.tolist()) & set(truth.tolist()))
            for row, truth in zip(found, exact, strict=True)
        )
        recall = hits / exact.size
        if recall >= TARGET_RECALL:
            nprobe = candidate
            break
    else:
        nprobe, recall = min(ivf.nlist, 512), recall
    ivf.nprobe = nprobe
    log.info("calibrated nprobe %d of %d lists: recall@10 %.3f", nprobe, ivf.nlist, recall)
    return {"nprobe": int(nprobe), "calibrated_recall": round(float(recall), 4)}


def _exact_top(matrix: Matrix, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions of each query's exact top k, scanning the matrix in blocks."""
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    where = np.zeros((len(queries), k), dtype=np.int64)
    for start, block in matrix.blocks(16_384):
        scores = queries @ block.T
        merged = np.concatenate([best, scores], axis=1)
        positions = np.concatenate(
            [where, np.broadcast_to(np.arange(start, start + len(block)), scores.shape)], axis=1
        )
        top = np.argpartition(-merged, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(merged, top, axis=1)
        where = np.take_along_axis(positions, top, axis=1)
    return where


def iter_embeddings(
    engine: Engine, generation_id: int, dim: int, chunk: int = READ_CHUNK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image ids, float16 vectors) of a generation in ascending image id, ``chunk`` rows at
    a time: the float16 values as stored, not widened."""
    last = -1
    with session_factory(engine)() as session:
        while True:
            rows = session.execute(
                select(Embedding.image_id, Embedding.vector)
                .where(Embedding.generation_id == generation_id, Embedding.image_id > last)
                .order_by(Embedding.image_id)
                .limit(chunk)
            ).all()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            blob = b"".join(r[1] for r in rows)
            del rows
            yield ids, np.frombuffer(blob, dtype="<f2").reshape(len(ids), dim)
            last = int(ids[-1])


def load_embeddings(engine: Engine, generation_id: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """All (image ids, float32 vectors) of a generation, in memory (benchmarks, and a
    server whose disk cannot take the files)."""
    ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    blocks: list[np.ndarray] = [np.zeros((0, dim), dtype=np.float32)]
    for chunk_ids, vectors in iter_embeddings(engine, generation_id, dim):
        ids.append(chunk_ids)
        blocks.append(vectors.astype(np.float32))
    return np.concatenate(ids), np.concatenate(blocks)


def _generation(engine: Engine, generation_id: int) -> tuple[int, int]:
    """(embedding dim, index version) of a generation."""
    with session_factory(engine)() as session:
        generation = session.get(ModelGeneration, generation_id)
        if generation is None:
            raise ValueError(f"no generation {generation_id}")
        return generation.embedding_dim, index_version(session, generation_id)


def rebuild(
    engine: Engine,
    data_dir: Path,
    generation_id: int,
    report: Report = _quiet,
    populate: bool = False,
) -> FaissIndex:
    """Build the generation's index and matrix from the store of record, write them
    atomically and open them (``populate``: see :func:`load_fresh`)."""
    with _build_lock(data_dir):
        return _rebuild(engine, data_dir, generation_id, report, populate)


@contextmanager
def _build_lock(data_dir: Path) -> Iterator[bool]:
    """One build at a time across processes, so that N server workers that find the files
    missing build them once: an flock on the FAISS folder itself (no lock file to leave
    behind). Yields whether another build held it first (its files may now be current)."""
    folder = Path(data_dir) / "faiss"
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            log.info("another process is building the FAISS index; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        yield waited
    finally:
        os.close(fd)  # closing releases the lock


def _rebuild(
    engine: Engine, data_dir: Path, generation_id: int, report: Report, populate: bool
) -> FaissIndex:
    _return_freed_memory()
    dim, version = _generation(engine, generation_id)
    index_path, meta_path = index_paths(data_dir, generation_id)
    vectors_path = matrix_path(data_dir, generation_id)
    # Both files appear whole or not at all (rebuildable: no fsync); the meta after them.
    with (
        _writing(index_path),
        atomic_path(vectors_path, durable=False) as vectors_temp,
        atomic_path(index_path, durable=False) as index_temp,
    ):
        report("reading the vectors from the database")
        count = _write_matrix(engine, generation_id, dim, vectors_temp)
        matrix = Matrix.open(vectors_temp, dim, count, populate=False)
        kind, params = choose_kind(count)
        report(f"building the {kind} index of {count} vectors")
        with _writing(index_temp):
            _write_index(matrix, kind, params, index_temp)
        if kind == "ivf":
            report("calibrating the index")
            params = {**params, **calibrate(faiss.read_index(str(index_temp), OPEN_FLAGS), matrix)}
        files = {"faiss": checksum(index_temp), "vectors": checksum(vectors_temp)}
        meta = IndexMeta(generation_id, version, count, dim, kind, params, FORMAT, files)
    with _writing(meta_path):
        write_atomic(meta_path, _meta_json(meta).encode("utf-8"))
    log.info(
        "built %s FAISS index of %s for generation %d", kind, plural(count, "vector"), generation_id
    )
    return _open(data_dir, meta, populate)


def _return_freed_memory() -> None:
    """Give the C heap's free pages back to the system before a build. A writer that has
    just imported holds over a gigabyte that SQLite's page cache and Python freed (glibc
    keeps freed memory for reuse), which the build's own peak would otherwise add to."""
    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc: nothing to give back this way
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _write_matrix(engine: Engine, generation_id: int, dim: int, path: Path) -> int:
    """Stream the generation's vectors into a matrix file; how many there are."""
    with _writing(path), MatrixWriter(path, dim) as writer:
        for ids, vectors in iter_embeddings(engine, generation_id, dim):
            writer.append(ids, vectors)
        writer.finish()
        return writer.count


def _write_index(matrix: Matrix, kind: str, params: dict[str, Any], path: Path) -> None:
    if kind == "ivf":
        ivf_build.build_file(matrix, params["nlist"], path)
    else:  # at most FLAT_LIMIT vectors: 400 MB of float32 at 1024-d
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(matrix.dim))
        for start, block in matrix.blocks(ivf_build.BATCH):
            index.add_with_ids(block, matrix.ids[start : start + len(block)].astype(np.int64))
        faiss.write_index(index, str(path))
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def build_in_memory(engine: Engine, generation_id: int) -> FaissIndex:
    """The index and matrix built in memory only: for a server whose disk cannot take the
    files, which serves from memory until a writer succeeds."""
    dim, version = _generation(engine, generation_id)
    ids, vectors = load_embeddings(engine, generation_id, dim)
    kind, params = choose_kind(len(ids))
    index = build_index(vectors, ids, kind, params)
    matrix = Matrix.of(ids, vectors)
    del vectors
    if kind == "ivf":
        params = {**params, **calibrate(index, matrix)}
    meta = IndexMeta(generation_id, version, len(ids), dim, kind, params, FORMAT)
    return FaissIndex(index, meta, matrix)


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Report a failed write of ``target`` as IndexWriteError with the system's reason."""
    try:
        yield
    except (OSError, RuntimeError) as exc:  # FAISS reports its failed writes as RuntimeError
        raise IndexWriteError(f"cannot write the FAISS index {target}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    # FAISS ends its message with the system's reason in parentheses: "... (File too large)".
    found = re.search(r"\(([^()]+)\)\s*$", str(exc))
    return found.group(1) if found else str(exc).strip().splitlines()[0]


def _meta_json(meta: IndexMeta) -> str:
    return json.dumps(asdict(meta))


def read_meta(data_dir: Path, generation_id: int) -> IndexMeta | None:
    """The sidecar, or None when it is missing or unreadable."""
    _, meta_path = index_paths(data_dir, generation_id)
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        files = {name: FileCheck(**check) for name, check in raw.pop("files", {}).items()}
        return IndexMeta(**raw, files=files)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def open_written(
    data_dir: Path, generation_id: int, version: int, populate: bool = True
) -> FaissIndex | None:
    """The generation's written index and matrix when they are current and intact as far as
    an open checks (the database's index version, this format, every file's size, the
    matrix's header, the index's counts), else None with the reason logged. The checksums
    are left to :meth:`FaissIndex.verify`."""
    meta = read_meta(data_dir, generation_id)
    if meta is None and not index_paths(data_dir, generation_id)[1].exists():
        log.info("FAISS index for generation %d: building it", generation_id)  # a new index
        return None
    stale = _stale(meta, version)
    if stale is not None or meta is None:  # expected after any change: not a warning
        log.info("FAISS index for generation %d: %s; rebuilding", generation_id, stale)
        return None
    index_path, _ = index_paths(data_dir, generation_id)
    paths = {"faiss": index_path, "vectors": matrix_path(data_dir, generation_id)}
    reasons = (size_problem(path, meta.files[name]) for name, path in paths.items())
    reason = next((r for r in reasons if r is not None), None)
    if reason is None:
        try:
            opened = _open(data_dir, meta, populate)
            opened.deferred = {path: meta.files[name] for name, path in paths.items()}
            return opened
        except (OSError, RuntimeError, ValueError) as exc:
            reason = f"unreadable ({exc})"
    log.warning("FAISS index for generation %d: %s; rebuilding", generation_id, reason)
    return None


def _stale(meta: IndexMeta | None, version: int) -> str | None:
    if meta is None:
        return "its description is unreadable"
    if meta.format != FORMAT or set(meta.files) != {"faiss", "vectors"}:
        return f"format {meta.format}, not {FORMAT}"
    if meta.version != version:
        return f"version {meta.version}, the database's is {version}"
    return None


def _open(data_dir: Path, meta: IndexMeta, populate: bool) -> FaissIndex:
    """Map the index and the matrix that ``meta`` describes."""
    index_path, _ = index_paths(data_dir, meta.generation_id)
    index = faiss.read_index(str(index_path), OPEN_FLAGS)
    if index.ntotal != meta.count or index.d != meta.dim:
        raise ValueError(f"{index.ntotal} x {index.d} vectors, expected {meta.count} x {meta.dim}")
    if meta.kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = int(meta.params["nprobe"])
        lists: Any = ivf.invlists
        listed = sum(int(lists.list_size(i)) for i in range(ivf.nlist))
        if listed != meta.count:  # a flipped list size would send FAISS past its lists
            raise ValueError(f"the IVF lists hold {listed} vectors, expected {meta.count}")
    if populate:
        _prefault(index)
    path = matrix_path(data_dir, meta.generation_id)
    return FaissIndex(index, meta, Matrix.open(path, meta.dim, meta.count, populate))


def _prefault(index: Any) -> None:
    """Touch a byte of every page of the index's vectors and ids, so that this process maps
    them all now (from the page cache; from the disk when cold) and its first searches
    pay no page faults. FAISS maps the file itself, so MAP_POPULATE is not ours to set;
    the kernel maps 16 cached pages a fault, about 30,000 faults at 1M images."""
    if hasattr(index, "id_map"):
        inner: Any = faiss.downcast_index(index.index)
        _touch(inner.get_xb(), inner.ntotal * inner.d)
        return
    invlists: Any = faiss.extract_index_ivf(index).invlists
    for i in range(invlists.nlist):
        size = invlists.list_size(i)
        if size:
            _touch(invlists.get_codes(i), size * invlists.code_size)
            _touch(invlists.get_ids(i), size)


def _touch(pointer: Any, count: int) -> None:
    """Read one element a page of the ``count`` elements at a FAISS pointer."""
    if count:
        view = faiss.rev_swig_ptr(pointer, count)
        np.add.reduce(view[:: max(1, 4096 // view.itemsize)])


def load_fresh(
    engine: Engine,
    data_dir: Path,
    generation_id: int,
    keep_unwritten: bool = False,
    report: Report | None = None,
    populate: bool = True,
    written_failed: bool = False,
) -> FaissIndex:
    """The generation's index from disk when it matches the database, else rebuilt.
    ``written_failed``: the caller already tried the written files (open_written gave
    None, with its reason logged), so go straight to the build.
    With ``keep_unwritten`` (a server), an index whose files cannot be written is built
    in memory and served from there, instead of raising :class:`IndexWriteError`.
    ``report`` is told each stage (opening, reading, building...), for /readyz. With
    ``populate`` (searches to come), the matrix is read into its mapping at once; a writer
    that only makes sure the files are current passes False."""
    report = report or _quiet
    with session_factory(engine)() as session:
        version = index_version(session, generation_id)
    report(OPENING)
    opened = None if written_failed else open_written(data_dir, generation_id, version, populate)
    if opened is not None:
        return opened
    try:
        with _build_lock(data_dir) as waited:
            if waited and (opened := open_written(data_dir, generation_id, version, populate)):
                return opened  # another process built them meanwhile
            return _rebuild(engine, data_dir, generation_id, report, populate)
    except IndexWriteError as exc:
        if not keep_unwritten:
            raise
        log.warning("%s; serving an index built in memory", exc)
        report("building the FAISS index in memory (its files cannot be written)")
        return build_in_memory(engine, generation_id)

"""The FAISS index: derived from the ``embeddings`` table, rebuildable at any time.

FAISS ids are image ids. The index type follows the collection's size: exact inner product
(cosine on L2-normalised vectors, in an IndexIDMap2) below ``FLAT_LIMIT`` images, IVF above
it, with its parameters recorded beside the file. The IVF lists hold float16 vectors (what
the store of record holds) and the image ids themselves, with no IndexIDMap2 around them: a
filtered search then checks its id selector on each listed id directly instead of
translating every position through the id map (docs/benchmarks.md: filtered searches at 1M
images). Files written before that, float32 IVF inside an IndexIDMap2, still load and
search the same.

Files are written atomically (temporary file, then rename), index first and its JSON
sidecar last, so a reader that finds a sidecar finds the index it describes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
from sqlalchemy import Engine, select

from app.store.db import session_factory
from app.store.models import Embedding, ModelGeneration
from app.store.repository import decode_vectors, index_version

log = logging.getLogger(__name__)

FLAT_LIMIT = 100_000
READ_CHUNK = 50_000


@dataclass(frozen=True)
class IndexMeta:
    generation_id: int
    version: int
    count: int
    dim: int
    kind: str
    params: dict[str, Any]


class IndexWriteError(Exception):
    """The index was built but could not be written (a full disk, say). ``built`` holds it,
    correct and usable from memory; the file on disk is left as it was."""

    def __init__(self, message: str, built: FaissIndex | None = None) -> None:
        super().__init__(message)
        self.built = built


class VectorIndex(Protocol):
    meta: IndexMeta

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class FaissIndex:
    def __init__(self, index: Any, meta: IndexMeta) -> None:
        self.index = index
        self.meta = meta
        self._ready_to_reconstruct = False
        self._ids: np.ndarray | None = None

    def contains(self, image_ids: np.ndarray) -> np.ndarray:
        """A mask of the image ids that the index holds (it may lag the database)."""
        if self._ids is None:
            self._ids = np.sort(stored_ids(self.index))
        if not len(self._ids):
            return np.zeros(len(image_ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self._ids, image_ids), len(self._ids) - 1)
        found: np.ndarray = self._ids[pos] == image_ids
        return found

    def reconstruct(self, image_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these image ids (each must be in the index)."""
        if not self._ready_to_reconstruct:
            if self.meta.kind != "flat":
                # IVF lists need a map from id (or position) to (list, offset) to fetch one
                # vector: a hash table where the lists hold image ids, an array otherwise.
                ivf = faiss.extract_index_ivf(self.index)
                if hasattr(self.index, "id_map"):
                    ivf.make_direct_map()
                else:
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
            self._ready_to_reconstruct = True
        vectors: np.ndarray = self.index.reconstruct_batch(np.asarray(image_ids, dtype=np.int64))
        return vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, image ids) of the k nearest, -1 ids where fewer exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = self.index.search(queries, k)
        return scores, ids


def index_paths(data_dir: Path, generation_id: int) -> tuple[Path, Path]:
    folder = Path(data_dir) / "faiss"
    return folder / f"generation-{generation_id}.faiss", folder / f"generation-{generation_id}.json"


def choose_kind(count: int) -> tuple[str, dict[str, Any]]:
    if count < FLAT_LIMIT:
        return "flat", {}
    nlist = int(4 * math.sqrt(count))
    return "ivf", {"nlist": nlist, "nprobe": max(16, nlist // 16), "codes": "fp16"}


def build_index(vectors: np.ndarray, ids: np.ndarray, kind: str, params: dict[str, Any]) -> Any:
    dim = vectors.shape[1]
    index: Any
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        quantizer = faiss.IndexFlatIP(dim)
        # The vectors are kept as float16, which is what the store of record holds, so
        # nothing is lost; it halves the memory of float32 lists (2 GB per million 1024-d
        # vectors) and the bytes a search reads. Not by residual: the codes are the vectors.
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer,
            dim,
            params["nlist"],
            faiss.ScalarQuantizer.QT_fp16,
            faiss.METRIC_INNER_PRODUCT,
            False,
        )
        sample = vectors[np.random.default_rng(0).permutation(len(vectors))[: params["nlist"] * 64]]
        ivf.train(sample)
        ivf.nprobe = params["nprobe"]
        index = ivf
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
    invlists: Any = faiss.extract_index_ivf(index).invlists
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(i), size).copy()
        for i in range(invlists.nlist)
        if (size := invlists.list_size(i))
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def calibrate(index: Any, vectors: np.ndarray, ids: np.ndarray) -> dict[str, Any]:
    """The fewest IVF lists to probe for recall@10 >= TARGET_RECALL on sample queries drawn
    from the collection itself, against an exact search. How many lists the true neighbours
    span depends on the data, not only on its size (1/16 of the lists gave 0.95 at 100k
    synthetic images and 1.00 at 1M, at four times the cost), so it is measured here, once,
    when the index is built."""
    ivf = faiss.extract_index_ivf(index)
    rng = np.random.default_rng(1)
    picks = rng.choice(len(vectors), min(CALIBRATION_QUERIES, len(vectors)), replace=False)
    queries = np.ascontiguousarray(vectors[picks])
    exact = _exact_top(vectors, queries, 10)
    nprobe, recall = ivf.nlist, 1.0
    for candidate in (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        if candidate >= ivf.nlist:
            break
        params = faiss.SearchParametersIVF(nprobe=candidate)  # type: ignore[call-arg]
        _scores, found = index.search(queries, 10, params=params)
        hits = sum(
            len(set(row.tolist()) & set(ids[truth].tolist()))
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


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions of each query's exact top k, scanning the vectors in blocks."""
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    where = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), 100_000):
        block = vectors[start : start + 100_000]
        scores = queries @ block.T
        merged = np.concatenate([best, scores], axis=1)
        positions = np.concatenate(
            [where, np.broadcast_to(np.arange(start, start + len(block)), scores.shape)], axis=1
        )
        top = np.argpartition(-merged, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(merged, top, axis=1)
        where = np.take_along_axis(positions, top, axis=1)
    return where


def load_embeddings(engine: Engine, generation_id: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """All (image ids, vectors) of a generation, read in chunks."""
    ids: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    last = -1
    with session_factory(engine)() as session:
        while True:
            rows = session.execute(
                select(Embedding.image_id, Embedding.vector)
                .where(Embedding.generation_id == generation_id, Embedding.image_id > last)
                .order_by(Embedding.image_id)
                .limit(READ_CHUNK)
            ).all()
            if not rows:
                break
            ids.append(np.array([r[0] for r in rows], dtype=np.int64))
            blocks.append(decode_vectors([r[1] for r in rows], dim))
            last = rows[-1][0]
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(ids), np.concatenate(blocks)


def rebuild(engine: Engine, data_dir: Path, generation_id: int) -> FaissIndex:
    """Build the generation's index from the store of record and write it atomically."""
    with session_factory(engine)() as session:
        generation = session.get(ModelGeneration, generation_id)
        if generation is None:
            raise ValueError(f"no generation {generation_id}")
        dim = generation.embedding_dim
        version = index_version(session, generation_id)
    ids, vectors = load_embeddings(engine, generation_id, dim)
    kind, params = choose_kind(len(ids))
    index = build_index(vectors, ids, kind, params)
    if kind == "ivf":
        params = {**params, **calibrate(index, vectors, ids)}
    meta = IndexMeta(generation_id, version, len(ids), dim, kind, params)
    try:
        write_atomically(index, meta, data_dir)
    except IndexWriteError as exc:
        raise IndexWriteError(str(exc), FaissIndex(index, meta)) from exc.__cause__
    log.info("built %s FAISS index of %d vectors for generation %d", kind, len(ids), generation_id)
    return FaissIndex(index, meta)


def write_atomically(index: Any, meta: IndexMeta, data_dir: Path) -> None:
    index_path, meta_path = index_paths(data_dir, meta.generation_id)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    _replace(index_path, lambda p: faiss.write_index(index, str(p)))
    _replace(meta_path, lambda p: Path(p).write_text(json.dumps(asdict(meta)), encoding="utf-8"))


def _replace(target: Path, write: Any) -> None:
    try:
        fd, temp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise IndexWriteError(f"cannot write the FAISS index {target}: {_reason(exc)}") from exc
    try:
        write(temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except (OSError, RuntimeError) as exc:  # FAISS reports its failed writes as RuntimeError
        raise IndexWriteError(f"cannot write the FAISS index {target}: {_reason(exc)}") from exc
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    # FAISS ends its message with the system's reason in parentheses: "... (File too large)".
    found = re.search(r"\(([^()]+)\)\s*$", str(exc))
    return found.group(1) if found else str(exc).strip().splitlines()[0]


def read_meta(data_dir: Path, generation_id: int) -> IndexMeta | None:
    _, meta_path = index_paths(data_dir, generation_id)
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        return IndexMeta(**raw)
    except (OSError, ValueError, TypeError):
        return None


def load_fresh(
    engine: Engine, data_dir: Path, generation_id: int, keep_unwritten: bool = False
) -> FaissIndex:
    """The generation's index from disk when it matches the database, else rebuilt.
    With ``keep_unwritten`` (a server), a rebuilt index that cannot be written is still
    returned, to serve from memory, instead of raising :class:`IndexWriteError`."""
    meta = read_meta(data_dir, generation_id)
    with session_factory(engine)() as session:
        version = index_version(session, generation_id)
    index_path, _ = index_paths(data_dir, generation_id)
    if meta is not None and meta.version == version and index_path.exists():
        try:
            index = faiss.read_index(str(index_path))
            if index.ntotal == meta.count:
                return FaissIndex(index, meta)
        except RuntimeError:
            log.warning("FAISS index %s is unreadable; rebuilding", index_path)
    else:
        log.info("FAISS index for generation %d is stale or missing; rebuilding", generation_id)
    try:
        return rebuild(engine, data_dir, generation_id)
    except IndexWriteError as exc:
        if not keep_unwritten or exc.built is None:
            raise
        log.warning("%s; serving the rebuilt index from memory", exc)
        return exc.built

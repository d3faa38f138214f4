"""The gather matrix: every stored vector of a generation as float16 rows in image-id order,
in one file beside the FAISS index, memory-mapped (N server processes share one copy in the
page cache).

Exact plans read the vectors of a small filter from it with one fancy-index gather and
score them in one pass, instead of asking FAISS for each vector (about 10 µs apiece). The
scoring itself is FAISS's fused float16 inner product over the gathered codes: numpy's
float16 to float32 cast alone costs more than the whole search.

Layout (little-endian)::

    header  64 bytes   magic "SGVEC16\\n", format (u32), dim (u32), count (u64), zeros
    rows    count x dim float16, in ascending image id, padded to 64 bytes
    ids     count x u32, ascending

Derived data like the FAISS index: written to a temporary file and renamed, its size and
checksum recorded in the generation's JSON sidecar, rebuilt from the database when it is
missing, stale, truncated, corrupt or of another format.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import faiss
import numpy as np

from app.errors import SagashiError

MAGIC = b"SGVEC16\n"
FORMAT = 1
HEADER = struct.Struct("<8sIIQ")
HEADER_BYTES = 64
ALIGN = 64


class MatrixFormatError(SagashiError, ValueError):
    """The file is not a gather matrix of this format, or not the one expected."""

    http_status = 500
    error_code = "bad_matrix"


def _padded(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


class Matrix:
    """Float16 vectors by image id: ``ids`` ascending (uint32), ``rows`` aligned with them.
    Backed by a file mapping, or by arrays in memory (an index built but not written)."""

    def __init__(
        self,
        ids: np.ndarray,
        rows: np.ndarray,
        mapping: mmap.mmap | None = None,
        path: Path | None = None,
    ) -> None:
        self.ids = ids
        self.rows = rows
        self._mapping = mapping  # unmapped once neither it nor the arrays viewing it are used
        self._path = path

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    @classmethod
    def of(cls, ids: np.ndarray, vectors: np.ndarray) -> Matrix:
        """A matrix in memory, from ids and their vectors in any order."""
        order = np.argsort(ids, kind="stable")
        rows = np.ascontiguousarray(np.asarray(vectors)[order], dtype=np.float16)
        return cls(np.asarray(ids)[order].astype(np.uint32), rows)

    @classmethod
    def open(cls, path: Path, dim: int, count: int, populate: bool = True) -> Matrix:
        """Map a matrix file; its header must say ``dim`` and ``count``. With ``populate``
        the whole file is read into the mapping now (see below); a build reads it a part at
        a time instead."""
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            expected = _file_bytes(dim, count)
            if size != expected:
                raise MatrixFormatError(f"{path}: {size} bytes, expected {expected}")
            # MAP_POPULATE reads the whole file into this mapping now, so the first searches
            # after start pay no page faults (the pages come from the shared page cache).
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
            mapping = mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        magic, version, found_dim, found_count = HEADER.unpack_from(mapping, 0)
        if magic != MAGIC or version != FORMAT or (found_dim, found_count) != (dim, count):
            mapping.close()
            raise MatrixFormatError(
                f"{path}: format {magic!r} v{version}, {found_count} x {found_dim}; "
                f"expected v{FORMAT}, {count} x {dim}"
            )
        rows_bytes = count * dim * 2
        rows = np.frombuffer(mapping, np.float16, count * dim, HEADER_BYTES).reshape(count, dim)
        ids = np.frombuffer(mapping, np.uint32, count, HEADER_BYTES + _padded(rows_bytes))
        return cls(ids, rows, mapping, path)

    def blocks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) of consecutive blocks of ``size`` rows, this process's
        pages of each dropped once it is read."""
        for start in range(0, self.count, size):
            block = self.rows[start : start + size].astype(np.float32)
            self.drop_resident()
            yield start, block

    def read(self, rows: np.ndarray) -> np.ndarray:
        """These rows (float16), read from the file rather than through the mapping: a
        build reading rows at random through a mapping would map a whole page-cache folio
        (up to 2 MB on ext4 since Linux 6.16) into this process for each row, and soon hold
        the whole file resident."""
        if self._path is None:
            gathered: np.ndarray = self.rows[rows]
            return gathered
        found = np.empty((len(rows), self.dim), dtype=np.float16)
        size = self.dim * 2
        with open(self._path, "rb", buffering=0) as handle:
            fd = handle.fileno()
            for i, row in enumerate(np.asarray(rows).tolist()):
                if (
                    os.preadv(fd, [memoryview(found[i]).cast("B")], HEADER_BYTES + row * size)
                    != size
                ):
                    raise MatrixFormatError(f"{self._path}: row {row} is cut short")
        return found

    def drop_resident(self) -> None:
        """Drop the file's pages from this process's mapping (not from the page cache): a
        build that reads the whole matrix then holds no more of it than it is using."""
        if self._mapping is not None:
            self._mapping.madvise(mmap.MADV_DONTNEED)

    def positions(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each image id, whether the matrix holds it): an id missing from the
        matrix (added to the database after it was written) gets found=False."""
        wanted = np.asarray(image_ids, dtype=np.int64)
        if not self.count:
            return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
        rows = np.minimum(np.searchsorted(self.ids, wanted), self.count - 1)
        found: np.ndarray = self.ids[rows] == wanted
        return rows, found

    def vectors(self, image_ids: np.ndarray) -> np.ndarray:
        """The float32 vectors of these image ids (each must be held)."""
        rows, found = self.positions(image_ids)
        if not found.all():
            raise KeyError(f"{int((~found).sum())} of the ids are not in the matrix")
        gathered: np.ndarray = self.rows[rows].astype(np.float32)
        return gathered

    def nearest(
        self, query: np.ndarray, k: int, image_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact: the ``k`` image ids among ``image_ids`` (those held) with the largest inner
        product with ``query``, and those products, best first."""
        rows, found = self.positions(image_ids)
        rows = rows[found]
        if not len(rows) or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        k = min(k, len(rows))
        codes = np.take(self.rows, rows, axis=0)
        ids = self.ids[rows].astype(np.int64)
        # FAISS's float16 list scanner, in this thread: a scratch IndexScalarQuantizer would
        # do the same in an OpenMP region, which waits milliseconds for a core when the
        # machine is busy (a 4,000-vector gather took 16 ms p50 against 1.7 ms this way,
        # with another process using both cores).
        scanner = _scanner(self.dim)
        vector = np.ascontiguousarray(np.asarray(query, np.float32).reshape(-1))
        scanner.set_query(faiss.swig_ptr(vector))
        scanner.set_list(0, 0)
        scores = np.full(k, -np.finfo(np.float32).max, dtype=np.float32)
        best = np.full(k, -1, dtype=np.int64)
        scanner.scan_codes(
            len(rows),
            faiss.swig_ptr(codes.view(np.uint8)),
            faiss.swig_ptr(ids),
            faiss.swig_ptr(scores),
            faiss.swig_ptr(best),
            k,
        )
        order = np.argsort(-scores, kind="stable")  # the scanner leaves a heap
        return best[order], scores[order]


_THREAD = threading.local()


def _scanner(dim: int) -> Any:
    """This thread's float16 inner-product scanner for ``dim`` (a scanner holds the query
    it scans for, so threads do not share one). Kept for the thread's life: deleting one
    through SWIG breaks the wrapping of the next (faiss 1.15 returns bare SwigPyObjects)."""
    scanners: dict[int, Any] = _THREAD.__dict__.setdefault("scanners", {})
    if dim not in scanners:
        quantizer = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)
        scanner = quantizer.select_InvertedListScanner(  # type: ignore[attr-defined]
            faiss.METRIC_INNER_PRODUCT, None, False, None
        )
        scanners[dim] = (quantizer, scanner)  # the scanner points into its quantizer
    return scanners[dim][1]


def _file_bytes(dim: int, count: int) -> int:
    return HEADER_BYTES + _padded(count * dim * 2) + count * 4


class MatrixWriter:
    """Writes a matrix file from batches of (ids, float16 rows) in ascending id order, as
    they are read from the database: only the ids are kept in memory (4 bytes an image)."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self._handle: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by finish or close)
        self._handle.write(bytes(HEADER_BYTES))
        self._ids: list[np.ndarray] = []
        self._last = -1
        self.count = 0

    def append(self, ids: np.ndarray, rows: np.ndarray) -> None:
        if not len(ids):
            return
        if int(ids[0]) <= self._last or np.any(np.diff(ids) <= 0):
            raise ValueError("matrix rows must come in strictly ascending image id")
        if rows.shape != (len(ids), self.dim):
            raise ValueError(f"rows of shape {rows.shape}, expected ({len(ids)}, {self.dim})")
        self._handle.write(np.ascontiguousarray(rows, dtype="<f2").tobytes())
        self._ids.append(np.asarray(ids, dtype="<u4"))
        self._last = int(ids[-1])
        self.count += len(ids)

    def finish(self) -> None:
        """Write the ids and the header, and flush the file to disk."""
        rows_bytes = self.count * self.dim * 2
        self._handle.write(bytes(_padded(rows_bytes) - rows_bytes))
        for block in self._ids:
            self._handle.write(block.tobytes())
        self._handle.seek(0)
        self._handle.write(HEADER.pack(MAGIC, FORMAT, self.dim, self.count))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> MatrixWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

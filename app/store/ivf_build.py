"""Building the IVF index from the gather matrix without holding it in memory.

``IndexIVF.add_with_ids`` keeps every list in memory until the index is written (2 GB of
float16 codes per million 1024-d vectors, on top of the float32 input: a 1M import peaked at
9.5 GB). Here the lists go straight to the file instead:

1. the coarse quantizer is trained on a sample of the matrix (at most ``MAX_TRAIN_POINTS``);
2. every vector is assigned to its list, a batch at a time (4 bytes an image kept);
3. the file is written as FAISS itself writes it: FAISS serialises the trained, empty index,
   whose last section is its (empty) inverted lists, and that section is replaced by the
   lists, each one's codes gathered from the matrix. The codes of a float16 scalar
   quantizer without residuals are the float16 vectors themselves, so the file is
   byte for byte what ``add_with_ids`` and ``write_index`` would have written (tested).

The matrix is read a batch at a time, in order through its mapping (whose pages are
dropped from this process after each batch; they stay in the page cache) and at random
with pread: the build holds a batch, never the collection.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from app.store.matrix import Matrix

log = logging.getLogger(__name__)

# FAISS asks for 39 to 256 training points a list; 64 a list is what the in-memory build
# used. Capped so that training holds at most 1 GB of float32 at any size.
TRAIN_POINTS_PER_LIST = 64
MAX_TRAIN_POINTS = 256 * 1024
BATCH = 32_768  # vectors decoded to float32 at a time: 128 MB at 1024-d

# The end of a serialised IVF index whose lists are empty: FAISS's ArrayInvertedLists
# section ("ilar", nlist, code size) stored as a sparse list of no entries.
_EMPTY_LISTS = struct.Struct("<4sQQ4sQ")


def new_ivf(dim: int, nlist: int) -> Any:
    """An untrained IVF index of float16 vectors with image ids in its lists. Not by
    residual: the codes are the vectors, exactly as the database stores them."""
    return faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim),
        dim,
        nlist,
        faiss.ScalarQuantizer.QT_fp16,
        faiss.METRIC_INNER_PRODUCT,
        False,
    )


def training_rows(count: int, nlist: int) -> np.ndarray:
    """The rows the coarse quantizer is trained on: a seeded sample, in the order drawn.
    The in-memory build draws the same, so both train the same centroids."""
    points = min(count, nlist * TRAIN_POINTS_PER_LIST, MAX_TRAIN_POINTS)
    return np.random.default_rng(0).permutation(count)[:points]


def train(matrix: Matrix, nlist: int) -> Any:
    """A trained, empty IVF index: its coarse centroids from a seeded sample of the rows."""
    ivf = new_ivf(matrix.dim, nlist)
    rows = training_rows(matrix.count, nlist)
    sample = np.empty((len(rows), matrix.dim), dtype=np.float32)
    for start in range(0, len(rows), BATCH):  # widened as read: no float16 copy of it all
        sample[start : start + BATCH] = matrix.read(rows[start : start + BATCH])
    ivf.train(sample)
    return ivf


def assign(ivf: Any, matrix: Matrix) -> np.ndarray:
    """The list of every row of the matrix (int32), a batch at a time."""
    lists = np.empty(matrix.count, dtype=np.int32)
    for start, block in matrix.blocks(BATCH):
        found = ivf.quantizer.assign(block, 1)
        lists[start : start + len(block)] = found.reshape(-1)
    return lists


def write(ivf: Any, matrix: Matrix, lists: np.ndarray, handle: BinaryIO) -> None:
    """Write ``ivf`` (trained, empty) with every row of ``matrix`` in list ``lists[row]``,
    rows in ascending image id within each list, as FAISS's own file format."""
    if not np.array_equal(lists, lists.clip(0, ivf.nlist - 1)):
        raise ValueError("a list number is out of range")
    if ivf.ntotal:
        raise ValueError("the index must be empty: its lists are written here")
    ivf.ntotal = len(lists)  # the header's count: the lists about to be written
    try:
        prefix = faiss.serialize_index(ivf).tobytes()
    finally:
        ivf.ntotal = 0
    code_size = int(ivf.code_size)
    empty = _EMPTY_LISTS.pack(b"ilar", ivf.nlist, code_size, b"sprs", 0)
    if not prefix.endswith(empty):
        raise ValueError("the serialised index does not end with empty ArrayInvertedLists")
    order = np.argsort(lists, kind="stable")  # rows by list, ascending within each
    sizes = np.bincount(lists, minlength=ivf.nlist).astype("<u8")
    handle.write(prefix[: -len(empty)])
    handle.write(struct.pack("<4sQQ4sQ", b"ilar", ivf.nlist, code_size, b"full", ivf.nlist))
    handle.write(sizes.tobytes())
    for rows in np.split(order, np.cumsum(sizes)[:-1].astype(np.int64)):
        if len(rows):
            handle.write(matrix.read(rows).astype("<f2", copy=False).tobytes())
            handle.write(matrix.ids[rows].astype("<i8").tobytes())


def build_file(matrix: Matrix, nlist: int, path: Path) -> None:
    """Train, assign and write an IVF index of the matrix's rows to ``path``."""
    ivf = train(matrix, nlist)
    log.info("trained %d lists; assigning %d vectors", nlist, matrix.count)
    lists = assign(ivf, matrix)
    with open(path, "wb") as handle:
        write(ivf, matrix, lists, handle)

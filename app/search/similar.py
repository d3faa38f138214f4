"""Filtered nearest-neighbour search: "looks like this", restricted to a tag query's images.

The planner picks by the filter's size, as Weaviate, Qdrant and the NeurIPS'23
filtered-search entries do:

- no filter: the FAISS index as built (exact below 100k images; IVF above, probing the
  number of lists calibrated when it was built, or ``default_nprobe`` for an older file);
- a small filter (at most ``gather_limit`` images, or more while reading their vectors
  costs less than the index plan's scan): exact, the matching vectors gathered from the
  memory-mapped gather matrix (app.store.matrix) in one fancy index and scored in one
  pass;
- a larger filter on an exact (flat) index: exact, through an id selector (every other
  vector is skipped unscored);
- a larger filter on an IVF index: the IVF search with the id selector, probing more lists
  the more selective the filter is, since the nearest matching vectors lie further out
  (every list, which is exact, when the rule asks for that many).

Every returned id is checked against the filter and the live images: a FAISS file can lag
the database by the images of a running index job, and must never leak a deleted image.
Recall at each selectivity is measured by bench/bench_search.py and tested in
tests/app/search/test_search_service.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from pyroaring import BitMap

from app.store.vectors import FaissIndex

# Up to this many matching images, their vectors are gathered and scored directly: exact, and
# faster than any pass over the index (docs/benchmarks.md: the gather matrix at 1M images).
GATHER_LIMIT = 4_000
# Above it, still gathered while that is cheaper than the index plan: a gathered candidate
# cost about 0.57 µs and an id scanned by the filtered IVF plan about 13 ns (3.2 µs a list
# of 250) at 1M 1024-d images, so gathering wins while the candidates are fewer than the
# ids the plan would scan over this ratio: 5,000 matches (0.5%, 1,532 lists: 383k ids,
# 4.4-5.8 ms filtered) are gathered, 10,000 (1%, 911 lists, 3.7 ms) are not.
SCANNED_PER_GATHERED = 44
# Lists probed for a filter keeping a share s of the images: PROBE_FACTOR * base / s**PROBE_POWER,
# base being the calibrated unfiltered count. Fitted at 1M images (nlist 4,000, base 16),
# where recall@10 against nprobe was measured: at 1% 0.905 / 0.950 / 0.987 for 300 / 600 /
# 1,200 lists (3.1 / 4.9 / 8.6 ms), at 10% 0.946 / 0.968 / 0.977 for 51 / 160 / 300 lists;
# the sqrt rule used before gave 160 and 51, recall 0.85 and 0.95. This gives 900 and 160.
# Probing every list (exact) took 21 ms at 1%.
PROBE_FACTOR = 1.8
PROBE_POWER = 0.75
# Extra candidates asked of FAISS, to make up for ids dropped after the search.
OVERFETCH = 16


@dataclass(frozen=True)
class KnnPlan:
    strategy: str  # "index", "gather", "exact", "exhaustive" or "filtered"
    nprobe: int | None = None


def default_nprobe(nlist: int) -> int:
    """Lists probed by an unfiltered IVF search: 1/16 of them (recall@10 >= 0.95 on the
    synthetic benchmark at 100k images, where 1/32 gave 0.93)."""
    return max(16, nlist // 16)


def plan_knn(
    index: FaissIndex, filter_size: int | None, gather_limit: int = GATHER_LIMIT
) -> KnnPlan:
    """The strategy for a filter of ``filter_size`` live images (None: no filter)."""
    if filter_size is not None and filter_size <= gather_limit:
        return KnnPlan("gather")
    plan = _index_plan(index, filter_size)
    if filter_size is not None and filter_size * SCANNED_PER_GATHERED <= _scanned(index, plan):
        return KnnPlan("gather")
    return plan


def _scanned(index: FaissIndex, plan: KnnPlan) -> float:
    """About how many listed ids the plan checks against its filter."""
    if plan.nprobe is None:  # a flat index: every vector
        return float(index.meta.count)
    return plan.nprobe / int(index.meta.params["nlist"]) * index.meta.count


def _index_plan(index: FaissIndex, filter_size: int | None) -> KnnPlan:
    """The plan through the FAISS index, for a filter of ``filter_size`` images."""
    meta = index.meta
    if meta.kind == "flat":
        return KnnPlan("index" if filter_size is None else "exact")
    nlist = int(meta.params["nlist"])
    if "calibrated_recall" in meta.params:  # measured when the index was built
        base = int(meta.params["nprobe"])
    else:  # an older file: the rule of thumb
        base = max(int(meta.params.get("nprobe", 0)), default_nprobe(nlist))
    if filter_size is None:
        return KnnPlan("index", min(nlist, base))
    selectivity = max(filter_size / max(meta.count, 1), 1e-9)
    nprobe = math.ceil(PROBE_FACTOR * base / selectivity**PROBE_POWER)
    if nprobe >= nlist:
        return KnnPlan("exhaustive", nlist)
    return KnnPlan("filtered", nprobe)


def nearest(
    index: FaissIndex,
    query: np.ndarray,
    k: int,
    allowed: BitMap | None,
    live: BitMap,
    gather_limit: int = GATHER_LIMIT,
) -> tuple[list[tuple[int, float]], KnnPlan]:
    """Up to ``k`` (image id, cosine similarity), most similar first, ties by id: an exact
    copy of the query at 1.0, nothing above it."""
    candidates = allowed & live if allowed is not None else None
    if candidates is not None and not candidates:
        return [], KnnPlan("exact")
    plan = plan_knn(index, None if candidates is None else len(candidates), gather_limit)
    query = scaled_to_stored(query)
    if candidates is not None and plan.strategy == "gather":
        return _gathered(index, query, k, candidates), plan
    wanted = k + OVERFETCH
    params, _selector = _params(plan, candidates)  # FAISS holds a raw pointer: keep it
    vector = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    scores, ids = index.index.search(vector, min(wanted, max(index.meta.count, 1)), params=params)
    keep = candidates if candidates is not None else live
    found = [
        (int(i), min(float(s), 1.0))
        for i, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True)
        if i >= 0 and int(i) in keep
    ]
    found.sort(key=lambda pair: (-pair[1], pair[0]))
    return found[:k], plan


def scaled_to_stored(query: np.ndarray) -> np.ndarray:
    """The unit query rounded to float16, as the stored vectors are, and divided by its own
    squared norm, so that its inner product with a stored copy of itself is 1.0.

    Scored as it came, a float32 query against its float16 copy gave 0.99997 or 1.00004:
    the rounding of each value, summed. Scaling by one positive number keeps the order of
    every result; other scores move by that rounding's size (1e-5 at 1024 dimensions).
    """
    rounded = np.asarray(query, np.float32).reshape(-1).astype(np.float16).astype(np.float64)
    square = float(rounded @ rounded)
    if not square > 0:
        return np.asarray(query, np.float32)
    return (rounded / square).astype(np.float32)


def _gathered(
    index: FaissIndex, query: np.ndarray, k: int, candidates: BitMap
) -> list[tuple[int, float]]:
    """Exact: the candidates' own vectors from the gather matrix (those it holds: it may
    lag the database), scored in one pass."""
    ids = np.frombuffer(candidates.to_array(), np.uint32)
    found_ids, scores = index.matrix.nearest(query, k, ids)
    found = list(zip(found_ids.tolist(), np.minimum(scores, 1.0).tolist(), strict=True))
    found.sort(key=lambda pair: (-pair[1], pair[0]))
    return found


def _params(plan: KnnPlan, candidates: BitMap | None) -> tuple[Any, Any]:
    """FAISS search parameters, and what they point to (FAISS keeps raw pointers)."""
    selector, keep = _selector(candidates) if candidates is not None else (None, None)
    if plan.nprobe is not None:
        ivf = faiss.SearchParametersIVF(sel=selector, nprobe=plan.nprobe)  # type: ignore[call-arg]
        return ivf, (selector, keep)
    if selector is not None:
        return faiss.SearchParameters(sel=selector), (selector, keep)  # type: ignore[call-arg]
    return None, None


def _selector(candidates: BitMap) -> tuple[Any, np.ndarray]:
    """A bit per image id: built in about a millisecond even for a million ids and checked
    in constant time (IDSelectorBatch hashes every id first, several times slower)."""
    allowed = np.frombuffer(candidates.to_array(), np.uint32)
    mask = np.zeros(int(allowed[-1]) + 1, dtype=bool)
    mask[allowed] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits

"""Ways to open the IVF index: read into memory, or mapped (FAISS's I/O flags, on-disk lists).

    python -m bench.bench_faiss_open --images 1000000 [--queries 100] [--evict]

On the bench_search database of --images synthetic images (imported once; its FAISS files
built by the current code), each way of opening the index is measured in a fresh Python
process, which reports the seconds to open it, its resident memory after opening (anonymous:
its own; file-backed: pages of the shared page cache), and the p50 of the planner's kNN
searches (k = 10) at two plans: unfiltered (the calibrated lists) and a 1% filter (the
filtered IVF plan, 900 lists at 1M), first as they come in the fresh process, then the same
queries again (warm). ``--evict`` drops the files from the page cache first (cold: as after
a reboot).

- ``copy``: ``faiss.read_index(path)``, every list read into the process (the code before
  2026-12-04);
- ``mmap``: ``IO_FLAG_MMAP``: FAISS maps the lists of the same file read-only (its
  OnDiskInvertedLists over the file's ArrayInvertedLists section);
- ``mmap_ifc``: ``IO_FLAG_MMAP_IFC``: FAISS maps the whole file and its ArrayInvertedLists
  point into the mapping (what ``app.store.vectors`` uses);
- ``ondisk``: the lists moved to a separate ``.ivfdata`` file of OnDiskInvertedLists (FAISS's
  on-disk layout, written once by this benchmark), which FAISS maps when it reads the index;
- ``sagashi``: ``vectors.open_written`` as a server opens the files: both files' checksums
  verified, the index mapped (``IO_FLAG_MMAP_IFC``) with every page touched, the gather
  matrix mapped with ``MAP_POPULATE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from pyroaring import BitMap

log = logging.getLogger("bench.faiss_open")
MODES = ("copy", "mmap", "mmap_ifc", "ondisk", "sagashi")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def _evict(path: Path) -> None:
    """Drop a file's pages from the page cache (those no process maps)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def ondisk_copy(index_path: Path) -> Path:
    """The index with its lists in a separate OnDiskInvertedLists file (made once)."""
    target = index_path.with_suffix(".ondisk.faiss")
    if target.exists():
        return target
    index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP)
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(target.with_suffix(".ivfdata")))
    # faiss's stubs leave out the SWIG vector classes such as this one.
    sources = faiss.InvertedListsPtrVector()  # type: ignore[attr-defined]
    sources.push_back(ivf.invlists)
    lists.merge_from_multiple(sources.data(), sources.size())
    ivf.replace_invlists(lists, True)
    faiss.write_index(index, str(target))
    return target


def child(data_dir: Path, mode: str, queries: int, evict: bool) -> dict[str, Any]:
    from app.search import similar
    from app.store import vectors
    from app.store.matrix import Matrix

    meta = vectors.read_meta(data_dir, 1)
    assert meta is not None and meta.kind == "ivf", "build the IVF index first"
    index_path, _ = vectors.index_paths(data_dir, 1)
    path = index_path.with_suffix(".ondisk.faiss") if mode == "ondisk" else index_path
    if evict:
        for file in (path, path.with_suffix(".ivfdata"), vectors.matrix_path(data_dir, 1)):
            if file.exists():
                _evict(file)
    # "ilod" files map their .ivfdata whatever the flags (IO_FLAG_MMAP crashes on them).
    flags = {"copy": 0, "mmap": faiss.IO_FLAG_MMAP, "mmap_ifc": faiss.IO_FLAG_MMAP_IFC}
    anon, mapped = _status("RssAnon"), _status("RssFile")
    started = time.perf_counter()
    if mode == "sagashi":
        opened_index = vectors.open_written(data_dir, 1, meta.version)
        assert opened_index is not None
        faiss_index = opened_index
    else:
        index = faiss.read_index(str(path), flags.get(mode, 0))
    opened = time.perf_counter() - started
    after = {
        "anon_mb": (_status("RssAnon") - anon) / 1e6,
        "file_mb": (_status("RssFile") - mapped) / 1e6,
    }
    if mode != "sagashi":
        matrix_file = vectors.matrix_path(data_dir, 1)
        matrix = Matrix.open(matrix_file, meta.dim, meta.count, populate=False)
        faiss_index = vectors.FaissIndex(index, meta, matrix)
    matrix = faiss_index.matrix
    rng = np.random.default_rng(7)
    picks = rng.choice(meta.count, queries, replace=False)
    live = BitMap(matrix.ids.tolist())
    one_percent = BitMap(rng.choice(matrix.ids, meta.count // 100, replace=False).tolist())
    found: dict[str, Any] = {"mode": mode, "open_s": opened, **after}
    for name, allowed in (("unfiltered", None), ("1%", one_percent)):
        for turn in ("fresh", "warm"):
            times = []
            for q in picks:
                query = matrix.rows[q].astype(np.float32)
                begun = time.perf_counter()
                similar.nearest(faiss_index, query, 10, allowed, live, gather_limit=0)
                times.append(time.perf_counter() - begun)
            found[f"{name} {turn} p50 ms"] = float(np.percentile(times, 50) * 1000)
    found["rss_anon_mb"] = _status("RssAnon") / 1e6
    found["rss_file_mb"] = _status("RssFile") / 1e6
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument("--evict", action="store_true", help="drop the files from the cache")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.data_dir, args.child, args.queries, args.evict)))
        return
    from app.store import vectors
    from app.store.db import create_db_engine
    from bench.bench_search import prepared_database
    from bench.common import machine

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    log.info("machine: %s", machine())
    url = prepared_database(args.work, args.images)
    data_dir = args.work / f"data-{args.images}"
    engine = create_db_engine(url)
    vectors.load_fresh(engine, data_dir, 1)
    engine.dispose()
    ondisk_copy(vectors.index_paths(data_dir, 1)[0])
    for mode in MODES:
        command = [sys.executable, "-m", "bench.bench_faiss_open", "--child", mode]
        command += ["--data-dir", str(data_dir), "--queries", str(args.queries)]
        result = subprocess.run(
            [*command, *(["--evict"] if args.evict else [])],
            check=True,
            capture_output=True,
            text=True,
        )
        log.info("%s", result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

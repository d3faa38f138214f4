"""Peak memory of building the FAISS index (and the gather matrix), and of a whole import.

    python -m bench.bench_build_memory --images 1000000 --baseline-code /tmp/base
    python -m bench.bench_build_memory --images 200000 --import --baseline-code /tmp/base
    python -m bench.bench_build_memory --images 1000000 --segments --baseline-code /tmp/base

Each measurement is a fresh Python process running one checkout's code (this one, and
first, with ``--baseline-code DIR``, another checkout such as a ``git worktree`` of the
commit before a change, in the same run), which reports its own peak resident memory
(``VmHWM``, file-backed pages included) and its peak anonymous memory (``RssAnon``, sampled
every 20 ms: what cannot be given back to the page cache).

- Without ``--import``: ``vectors.rebuild`` of the bench_search database of --images
  synthetic images (imported once), into a scratch folder: what ``sagashi index``,
  ``reindex``, ``import`` and ``faiss rebuild`` run at their end.
- With ``--segments``: the segment set of that database written into a scratch folder
  (what ``index``, ``import`` and a server's rebuild write), time and peaks.
- With ``--import``: the whole of ``sagashi import`` (the importer, the FAISS build of
  ``jobs.refresh_faiss``, then the segment set) into a fresh SQLite file, with peaks after
  the import, after the FAISS build and at the end, and the peak of the importer's
  file-reading child process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.build_memory")
REPO = Path(__file__).resolve().parents[1]


class Peaks:
    """This process's peak RSS (VmHWM) and sampled peak anonymous RSS."""

    def __init__(self) -> None:
        self.anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.anon = max(self.anon, _status("RssAnon"))

    def now(self) -> dict[str, float]:
        self.anon = max(self.anon, _status("RssAnon"))
        return {"hwm_gb": _status("VmHWM") / 1e9, "anon_gb": self.anon / 1e9}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def child_rebuild(url: str, data_dir: Path) -> dict[str, Any]:
    from app.store import vectors
    from app.store.db import create_db_engine

    peaks = Peaks()
    engine = create_db_engine(url)
    started = time.perf_counter()
    index = vectors.rebuild(engine, data_dir, 1)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "kind": index.meta.kind, "params": index.meta.params, **peaks.now()}


def child_segments(url: str, data_dir: Path) -> dict[str, Any]:
    """The generation's segment set written from the database, as the end of an index or
    import run and a server's rebuild write it."""
    from app.search.segment_engine import write_segments
    from app.store.db import create_db_engine, session_factory

    peaks = Peaks()
    engine = create_db_engine(url)
    started = time.perf_counter()
    with session_factory(engine)() as session:
        write_segments(session, data_dir, 1)
    return {"seconds": time.perf_counter() - started, **peaks.now()}


def child_import(url: str, data_dir: Path, source: Path) -> dict[str, Any]:
    from app.search.segment_engine import write_segments
    from app.store import migrate
    from app.store.aliases import load_aliases
    from app.store.db import create_db_engine, session_factory
    from app.tagger.vocab import load_pixai_vocabulary
    from indexer import jobs
    from indexer.importer import Importer, ImportOptions

    peaks = Peaks()
    migrate.upgrade(url)
    engine = create_db_engine(url)
    vocab = load_pixai_vocabulary(Path(f"{source}.vocab.json"), None)
    options = ImportOptions("synthetic", vocab, load_aliases(), 0.05, strict=False)
    started = time.perf_counter()
    summary = Importer(engine, options).run_file(source)
    imported = time.perf_counter() - started
    after_import = peaks.now()
    jobs.refresh_faiss(engine, data_dir)
    after_faiss, faiss_done = peaks.now(), time.perf_counter()
    # What 'sagashi import' writes last with the segment engine (the default): its set.
    generation = jobs.active_generation_id(engine)
    assert generation is not None
    with session_factory(engine)() as session:
        write_segments(session, data_dir, generation)
    reader = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "images": summary.new,
        "import_s": imported,
        "faiss_s": faiss_done - started - imported,
        "segments_s": time.perf_counter() - faiss_done,
        "import_hwm_gb": after_import["hwm_gb"],
        "import_anon_gb": after_import["anon_gb"],
        "faiss_hwm_gb": after_faiss["hwm_gb"],
        "faiss_anon_gb": after_faiss["anon_gb"],
        "reader_hwm_gb": reader / 1e9,
        **peaks.now(),
    }


def measure(code: Path, args: list[str]) -> dict[str, Any]:
    """Run this file's child mode with ``code``'s checkout first on the path (its app and
    indexer packages); its one JSON line."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    result = subprocess.run(command, env=env, cwd=code, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument("--baseline-code", type=Path, default=None)
    parser.add_argument("--import", dest="whole", action="store_true", help="a whole import")
    parser.add_argument(
        "--segments", action="store_true", help="the segment set's write from the database"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        if args.source is not None:
            found = child_import(args.url, args.data_dir, args.source)
        elif args.segments:
            found = child_segments(args.url, args.data_dir)
        else:
            found = child_rebuild(args.url, args.data_dir)
        print(json.dumps(found))
        return
    # Imported here: the measured children must not carry them (torch, the database).
    from bench.bench_import import dataset
    from bench.bench_search import prepared_database
    from bench.common import machine

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    log.info("machine: %s", machine())
    args.work.mkdir(parents=True, exist_ok=True)
    codes = [("current", REPO)]
    if args.baseline_code is not None:
        codes.insert(0, ("baseline", args.baseline_code.resolve()))
    if args.whole:
        source = dataset(args.work, args.images).resolve()
    else:
        url = prepared_database(args.work, args.images)
    for label, code in codes:
        scratch = (args.work / f"memory-{label}").resolve()
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        if args.whole:
            child_args = ["--url", f"sqlite:///{scratch / 'import.db'}", "--source", str(source)]
        else:
            child_args = ["--url", url, *(["--segments"] if args.segments else [])]
        found = measure(code, [*child_args, "--data-dir", str(scratch / "data")])
        log.info("%s: %s", label, json.dumps(found))
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

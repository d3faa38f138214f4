"""Opening the tag engine: segment files against the load from SQL, in fresh processes.

    python -m bench.bench_segments --images 1000000 [--runs 2]

On the synthetic --images database of bench_search (imported once, reused), and in the same
run for both engines:

- engine open: a fresh process opens the active generation's tag engine, ``memory`` (the
  baseline: read from the database) or ``segments`` (mapped from the segment files, written
  once first and not counted); seconds and peak RSS (VmHWM);
- ``sagashi search '1girl solo'``: the wall time of the whole command, start-up included;
- ``sagashi serve``: seconds from the start to a 200 from /readyz, and the server's RSS then;
- ``--changes N``: the same start after N images changed since the set was written: first
  with the changes replayed from the database at open (this code, and with
  ``--baseline-code DIR`` another checkout such as a ``git worktree`` of the previous
  commit, on a copy of the same set), then after ``write_segments`` wrote them as a delta
  segment (what the end of an index, import or reindex run does; timed), then the set
  rewritten whole (a merge; timed) and the same start with no change since it;
- ``--workers-memory 1 4``: the memory of a server with each number of worker processes,
  after the same warm-up traffic (tag searches and similarity searches), from
  /proc/PID/smaps_rollup over the whole process tree: PSS (shared pages split between the
  processes that map them) and USS (pages private to one process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.segments")
SAGASHI = str(Path(sys.executable).with_name("sagashi"))
# The CLI as the checkout on the path runs it (the installed ``sagashi`` script would run
# this one's whatever the path says).
CLI = [sys.executable, "-c", "import sys; from indexer.cli import main; sys.exit(main())"]
# The checkout whose code the measured processes run (None: this one); see --baseline-code.
CODE: Path | None = None
QUERY = "1girl solo"


def child(url: str, data_dir: Path, kind: str) -> None:
    """Open the engine once and print the measurements as one JSON line."""
    from app.search.engine import open_engine
    from app.store.db import create_db_engine, session_factory
    from app.store.repository import active_generation

    engine = create_db_engine(url)
    with session_factory(engine)() as session:
        generation = active_generation(session)
        assert generation is not None, "the database has no active generation"
        started = time.perf_counter()
        tags = open_engine(kind, session, generation.id, data_dir)
        seconds = time.perf_counter() - started
        images = tags.held_images()
    print(json.dumps({"seconds": seconds, "peak": _status("VmHWM"), "images": images}))


def _status(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def _code_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(CODE)} if CODE is not None else dict(os.environ)


def open_engine_run(url: str, data_dir: Path, kind: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.bench_segments", "--child", kind]
    result = subprocess.run(
        [*command, "--url", url, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        env=_code_env(),
        cwd=CODE,
    )
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def environment(url: str, data_dir: Path, kind: str) -> dict[str, str]:
    return {
        **_code_env(),
        "SAGASHI_DATABASE_URL": url,
        "SAGASHI_DATA_DIR": str(data_dir),
        "SAGASHI_SEARCH_ENGINE": kind,
        "SAGASHI_LOG_LEVEL": "WARNING",
        "SAGASHI_WORKERS": "1",  # readiness and RSS of one server process
    }


def search_run(url: str, data_dir: Path, kind: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [SAGASHI, "search", QUERY, "--limit", "20"],
        env=environment(url, data_dir, kind),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


@contextlib.contextmanager
def served(
    url: str, data_dir: Path, kind: str, port: int, workers: int = 1
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """A ``sagashi serve`` and the seconds from its start to a 200 from /readyz."""
    import httpx

    started = time.perf_counter()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        env={**environment(url, data_dir, kind), "SAGASHI_WORKERS": str(workers)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=CODE,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"sagashi serve exited with {process.returncode}")
            time.sleep(0.05)
        yield process, time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def serve_run(url: str, data_dir: Path, kind: str, port: int) -> tuple[float, int]:
    with served(url, data_dir, kind, port) as (process, ready):
        return ready, _status("VmRSS", process.pid)


def _tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in _tree(int(child)))]


def _rollup(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_unit = line.split()
        found[name.rstrip(":")] = int(value) * 1024
    return found


def workers_memory(url: str, data_dir: Path, kind: str, workers: int, port: int) -> None:
    """Start a server with ``workers`` processes, warm every one, and log its memory."""
    with served(url, data_dir, kind, port, workers) as (process, ready):
        warm_up(f"http://127.0.0.1:{port}", 100 * workers)
        pids = _tree(process.pid)
        rollups = [_rollup(pid) for pid in pids]
        pss = sum(r["Pss"] for r in rollups)
        uss = sum(r["Private_Clean"] + r["Private_Dirty"] for r in rollups)
        rss = sum(r["Rss"] for r in rollups)
        log.info(
            "| %d | %d | %.1f | %.2f | %.2f | %.2f |",
            workers,
            len(pids),
            ready,
            pss / 1e9,
            uss / 1e9,
            rss / 1e9,
        )


def warm_up(base: str, requests: int) -> None:
    """Tag searches and filtered similarity searches, several connections at a time so
    that every worker gets some."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    rng = random.Random(0)
    queries = ["1girl solo", "long_hair -short_hair", "smile order:score:smile", "blush"]

    def one(i: int) -> int:
        with httpx.Client(base_url=base, timeout=120) as client:
            if i % 2:
                return client.get("/api/search", params={"q": queries[i % 4]}).status_code
            query = queries[i % 4].split(" order:")[0]  # similarity orders by similarity
            body = {"image_id": rng.randint(1, 1000), "k": 10, "q": query}
            return client.post("/api/similar", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(requests)))
    assert set(codes) == {200}, codes


def changed_start(
    url: str, data_dir: Path, changes: int, port: int, baseline: Path | None, runs: int
) -> None:
    """Engine open and server readiness with ``changes`` images changed since the set was
    written: replayed from the database (this code, and ``baseline``'s), then mapped as a
    delta segment; then the set rewritten whole."""
    global CODE
    from sqlalchemy import insert, select

    from app.search.segment_engine import write_segments
    from app.store.db import create_db_engine, session_factory
    from app.store.models import Image, ImageChange
    from app.store.repository import active_generation

    engine = create_db_engine(url)
    with session_factory(engine)() as session:
        ids = session.scalars(select(Image.id).order_by(Image.id.desc()).limit(changes)).all()
        # What a move of each of these images records: one row in the change log.
        session.execute(insert(ImageChange), [{"image_id": i} for i in ids])
        session.commit()
        generation = active_generation(session)
        assert generation is not None
    codes: list[tuple[str, Path | None, Path]] = [("this code", None, data_dir)]
    if baseline is not None:
        codes.insert(0, ("baseline", baseline.resolve(), _baseline_copy(data_dir)))
    pointer = _pointer(data_dir)
    log.info(
        "| code | %d changes since the set | engine open s | serve ready s | RSS GB |", changes
    )
    log.info("|---|---|---|---|---|")
    for run in range(runs):
        for label, code, folder in codes:
            CODE = code
            for measure in ("open", "serve"):
                _pointer(folder, pointer)  # no delta segment a flush child may have written
                if measure == "open":
                    opened, ready, rss = open_engine_run(url, folder, "segments")["seconds"], 0.0, 0
                else:
                    ready, rss = serve_run(url, folder, "segments", port)
            log.info(
                "| %s (run %d) | replayed from SQL | %.2f | %.2f | %.2f |",
                label,
                run + 1,
                opened,
                ready,
                rss / 1e9,
            )
    CODE = None
    _pointer(data_dir, pointer)
    with session_factory(engine)() as session:
        started = time.perf_counter()
        write_segments(session, data_dir, generation.id)  # what the end of a run does
    log.info("delta segment written (the end of a run) in %.1f s", time.perf_counter() - started)
    _current_starts(url, data_dir, port, runs, "a delta segment")
    with session_factory(engine)() as session:
        started = time.perf_counter()
        write_segments(session, data_dir, generation.id, full=True)  # current for later runs
    log.info("set rewritten (a merge) in %.1f s", time.perf_counter() - started)
    # The same start with no change since the set: what the delta costs a start, same run.
    _current_starts(url, data_dir, port, runs, "none (the set current)")
    engine.dispose()


def _current_starts(url: str, data_dir: Path, port: int, runs: int, state: str) -> None:
    """Engine open and server readiness of this code on the set as it is, ``runs`` times."""
    for run in range(runs):
        opened = open_engine_run(url, data_dir, "segments")["seconds"]
        ready, rss = serve_run(url, data_dir, "segments", port)
        log.info(
            "| this code (run %d) | %s | %.2f | %.2f | %.2f |",
            run + 1,
            state,
            opened,
            ready,
            rss / 1e9,
        )


def _pointer(data_dir: Path, value: str | None = None) -> str:
    """The active generation's CURRENT pointer of ``data_dir`` (set to ``value`` first)."""
    (path,) = (data_dir / "segments").glob("g*/CURRENT")
    if value is not None:
        path.write_text(value)
    return path.read_text()


def _baseline_copy(data_dir: Path) -> Path:
    """A data folder for the baseline: the same FAISS files (linked) and a copy of the
    current segment set, so that neither code's writes touch the other's files."""
    import shutil

    folder = data_dir.with_name(f"{data_dir.name}-baseline")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "faiss").symlink_to((data_dir / "faiss").resolve())
    shutil.copytree(data_dir / "segments", folder / "segments")
    return folder


def prepare_faiss(url: str, data_dir: Path) -> None:
    """Write the FAISS index once, untimed: a server is ready only when it is open, and
    building it is the indexer's work, not the start's."""
    from app.store import vectors
    from app.store.db import create_db_engine, session_factory
    from app.store.repository import active_generation

    engine = create_db_engine(url)
    with session_factory(engine)() as session:
        generation = active_generation(session)
        assert generation is not None, "the database has no active generation"
    started = time.perf_counter()
    vectors.load_fresh(engine, data_dir, generation.id)
    log.info("FAISS index ready in %.0f s (built when missing)", time.perf_counter() - started)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument("--runs", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--changes", type=int, default=0, help="changes since the set")
    parser.add_argument("--workers-memory", type=int, nargs="*", default=[])
    parser.add_argument("--only-extra", action="store_true", help="skip the engine comparison")
    parser.add_argument("--baseline-code", type=Path, help="checkout to compare --changes with")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.url, args.data_dir, args.child)
        return
    from bench.bench_search import prepared_database
    from bench.common import machine

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per /readyz poll
    log.info("machine: %s", machine())
    args.work.mkdir(parents=True, exist_ok=True)
    url = prepared_database(args.work, args.images)
    data_dir = args.work / f"data-{args.images}"
    prepare_faiss(url, data_dir)
    built = open_engine_run(url, data_dir, "segments")  # writes the set when missing
    log.info("segments first open (build and write included): %.1f s", built["seconds"])
    if args.workers_memory:
        log.info("| workers | processes | ready s | PSS GB | USS GB | RSS GB |")
        log.info("|---|---|---|---|---|---|")
        for workers in args.workers_memory:
            workers_memory(url, data_dir, "segments", workers, args.port)
    if args.changes:
        changed_start(url, data_dir, args.changes, args.port, args.baseline_code, args.runs)
    if args.only_extra:
        return
    log.info(
        "| run | engine | open s | open peak RSS GB | search s | serve ready s | serve RSS GB |"
    )
    log.info("|---|---|---|---|---|---|---|")
    for run in range(args.runs):
        for kind in ("memory", "segments"):
            opened = open_engine_run(url, data_dir, kind)
            searched = search_run(url, data_dir, kind)
            ready, rss = serve_run(url, data_dir, kind, args.port)
            log.info(
                "| %d | %s | %.2f | %.2f | %.2f | %.2f | %.2f |",
                run + 1,
                kind if kind == "segments" else "memory (baseline)",
                opened["seconds"],
                opened["peak"] / 1e9,
                searched,
                ready,
                rss / 1e9,
            )


if __name__ == "__main__":
    main()

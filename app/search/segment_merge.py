"""Background flushes and merges: a child process writes a server's delta to disk as a delta
segment (app.search.segment_deltas), or rewrites the whole segment set from the database,
while the process that asked keeps serving its mapped set plus an in-memory delta.

A server's delta grows when images change between index runs' own writes (a long index or
import run, a reindex, admin jobs). Past a few thousand images it is flushed, so that no
start replays it from the database; past the merge limit the set is rewritten. Doing either
in the request path stalled that process's searches (a rewrite reads the whole database,
about a minute at 1M images); in a thread it would compete with searches for the GIL and
hold the read's memory in the server. A child process does the read and the write, then
exits; every worker sees the new files through the store's CURRENT pointer on its next
refresh.

    python -m app.search.segment_merge SEGMENTS_ROOT GENERATION SEQ [--full]   (the database
    URL in the environment, never on a command line that ``ps`` shows)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

URL_VARIABLE = "_SAGASHI_MERGE_DATABASE_URL"
# After a merge that failed (a full disk, a lost database), wait this long before the next
# attempt instead of starting one on every refresh.
RETRY_SECONDS = 60.0


@dataclass
class Merger:
    """At most one merge child at a time for one process's segment store."""

    process: subprocess.Popen[bytes] | None = None
    retry_at: float = field(default=-float("inf"))

    def running(self) -> bool:
        if self.process is None:
            return False
        code = self.process.poll()
        if code is None:
            return True
        if code != 0:
            log.error(
                "the segment merge (pid %d) failed with exit code %d; retrying in %.0f s",
                self.process.pid,
                code,
                RETRY_SECONDS,
            )
            self.retry_at = time.monotonic() + RETRY_SECONDS
        self.process = None
        return False

    def start(
        self, url: str, root: Path, generation_id: int, seq: int, delta: int, full: bool = True
    ) -> None:
        """Start a flush (or, ``full``, a merge into a new set) up to change ``seq`` unless
        one is running or failed recently."""
        if self.running() or time.monotonic() < self.retry_at:
            return
        command = [sys.executable, "-m", __name__, str(root), str(generation_id), str(seq)]
        self.process = subprocess.Popen(
            [*command, *(["--full"] if full else [])],
            env={**os.environ, URL_VARIABLE: url},
            stdin=subprocess.DEVNULL,
        )
        log.info(
            "segment delta of generation %d holds %d images, over its limit: %s in the "
            "background (pid %d)",
            generation_id,
            delta,
            "merging into a new set" if full else "writing it as a delta segment",
            self.process.pid,
        )

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running merge to end (tests, and a server shutting down)."""
        if self.process is not None:
            self.process.wait(timeout)
            self.running()


def merge(url: str, root: Path, generation_id: int, seq: int, full: bool = True) -> bool:
    """Bring the generation's set current (a delta segment, or with ``full`` a new set) unless
    one covering ``seq`` exists or another process is writing one. True when a set covering
    ``seq`` is current."""
    from app.search.segment_engine import write_current
    from app.search.segment_files import SegmentStore
    from app.store.db import create_db_engine, session_factory

    store = SegmentStore(root, generation_id)
    engine = create_db_engine(url)
    try:
        with store.writer_lock(wait=False) as mine:
            if not mine:
                log.info("another process is writing the segment set; leaving it to it")
                return True
            current = store.current()
            if current is not None and (current.seq if full else current.covered) >= seq:
                return True
            started = time.perf_counter()
            with session_factory(engine)() as session:
                written = write_current(session, store, full)
            if written:
                log.info(
                    "segment set of generation %d %s in %.1f s",
                    generation_id,
                    "merged" if full else "brought current",
                    time.perf_counter() - started,
                )
            return written
    finally:
        engine.dispose()


def main(argv: list[str]) -> int:
    from app.logs import configure_logging
    from app.process import die_with_parent

    die_with_parent()  # a merge for a server that is gone holds memory for nothing
    configure_logging(os.environ.get("SAGASHI_LOG_LEVEL", "INFO"))
    root, generation_id, seq = Path(argv[0]), int(argv[1]), int(argv[2])
    full = "--full" in argv[3:]
    return 0 if merge(os.environ[URL_VARIABLE], root, generation_id, seq, full) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The segment engine: the posting engine opened from memory-mapped segment files
(app.search.segment_files) instead of read from SQL rows, so a process opens a million images
in seconds and server workers share one copy of the postings in the page cache.

Opening maps the current segment set and replays the change log past the set's position into
a small in-memory delta (the posting engine's own delta segments), which is followed live as
the memory engine does. When the delta grows too large, or the set is missing, stale past the
pruned log, corrupt, from another generation or another format, the set is rebuilt from the
database, written atomically and reopened, under a lock shared by every process, so N workers
starting together rebuild once. A set that cannot be written (a full disk) leaves the old one
in place; this process then serves what it read from the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.search.memory_engine import PostingBacked
from app.search.postings import PostingEngine, Segment, latest_change, tag_groups
from app.search.segment_files import SegmentError, SegmentStore

log = logging.getLogger(__name__)

SEGMENTS_FOLDER = "segments"


def store_for(data_dir: Path, generation_id: int) -> SegmentStore:
    return SegmentStore(data_dir / SEGMENTS_FOLDER, generation_id)


def write_segments(session: Session, data_dir: Path, generation_id: int) -> None:
    """Rebuild the generation's segment set from the database now (the indexer and importer
    call this at the end of a run, so the next server opens current files)."""
    store = store_for(data_dir, generation_id)
    with store.writer_lock():
        _rebuild(session, store)


@dataclass(frozen=True)
class SegmentEngine(PostingBacked):
    postings: PostingEngine
    store: SegmentStore
    name: str = "segments"

    @classmethod
    def open(cls, session: Session, generation_id: int, data_dir: Path) -> SegmentEngine:
        store = store_for(data_dir, generation_id)
        return cls(_opened(session, store), store)

    def refreshed(self, session: Session) -> SegmentEngine:
        current = self.postings.refresh(session, reload=lambda: _opened(session, self.store, True))
        return self if current is self.postings else SegmentEngine(current, self.store)


def _opened(session: Session, store: SegmentStore, merge: bool = False) -> PostingEngine:
    """The engine from the current set plus the changes after it. ``merge``: the caller's
    delta outgrew its limit, so a set older than the log's latest change is rewritten."""
    groups = tag_groups(session)
    _low, high = latest_change(session)
    try:
        segment, info = store.read(groups)
        if not merge or info.seq >= high:
            return _replayed(session, store, segment, info.seq)
    except SegmentError as exc:
        log.warning("segments of generation %d: %s; rebuilding", store.generation_id, exc)
    with store.writer_lock():
        # Another process may have written a current set while this one waited.
        try:
            segment, info = store.read(groups)
            if info.seq >= high or not merge:
                return _replayed(session, store, segment, info.seq)
        except SegmentError:
            pass
        return _rebuild(session, store)


def _replayed(session: Session, store: SegmentStore, segment: Segment, seq: int) -> PostingEngine:
    engine = PostingEngine(store.generation_id, seq, [segment])
    # A delta too large for the posting engine means a rewrite: reopen through the store.
    return engine.refresh(session, reload=lambda: _rebuilt_locked(session, store))


def _rebuilt_locked(session: Session, store: SegmentStore) -> PostingEngine:
    with store.writer_lock():
        return _rebuild(session, store)


def _rebuild(session: Session, store: SegmentStore) -> PostingEngine:
    """Read the generation from the database and write it as the current set (the caller
    holds the writer lock). A set that cannot be written is logged; the read engine serves."""
    engine = PostingEngine.load(session, store.generation_id)
    try:
        store.write(engine.segments[0], engine.seq)
    except OSError as exc:
        log.error("cannot write the segment set of generation %d: %s", store.generation_id, exc)
        return engine
    segment, info = store.read(tag_groups(session))
    return PostingEngine(store.generation_id, info.seq, [segment])

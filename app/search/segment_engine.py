"""The segment engine: the posting engine opened from memory-mapped segment files
(app.search.segment_files) instead of read from SQL rows, so a process opens a million images
in seconds and server workers share one copy of the postings in the page cache.

Opening maps the current segment set and replays the change log past the set's position into
a small in-memory delta (the posting engine's own delta segments), which is followed live as
the memory engine does. When the delta outgrows its limit, a child process merges: it
rewrites the set from the database (app.search.segment_merge) while this process keeps
serving the mapped set and its delta; every process then reopens the newer set on its next
refresh, as it does after an index run writes one. A set that is missing, stale past the
pruned log, corrupt, from another generation or another format is rebuilt from the database
at once, under a lock shared by every process, so N workers starting together rebuild once.
A set that cannot be written (a full disk) leaves the old one in place; this process then
serves what it read from the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy.orm import Session

from app.search.memory_engine import PostingBacked
from app.search.postings import PostingEngine, latest_change, tag_groups
from app.search.segment_build import build_from_database
from app.search.segment_files import SegmentError, SegmentStore
from app.search.segment_merge import Merger

log = logging.getLogger(__name__)

SEGMENTS_FOLDER = "segments"


def store_for(data_dir: Path, generation_id: int) -> SegmentStore:
    return SegmentStore(data_dir / SEGMENTS_FOLDER, generation_id)


def write_segments(session: Session, data_dir: Path, generation_id: int) -> None:
    """Rebuild the generation's segment set from the database now (the indexer and importer
    call this at the end of a run, so the next server opens current files)."""
    store = store_for(data_dir, generation_id)
    with store.writer_lock():
        write_current(session, store)


def write_current(session: Session, store: SegmentStore) -> bool:
    """Read the generation from the database and write it as the current set (the caller
    holds the writer lock); False, logged, when it cannot be written (a full disk)."""
    return _rebuild(session, store)[1]


@dataclass(frozen=True)
class SegmentEngine(PostingBacked):
    postings: PostingEngine
    store: SegmentStore
    # The change-log position of the set the bulk segment was mapped from.
    base_seq: int
    merger: Merger = field(default_factory=Merger, compare=False)
    name: str = "segments"

    @classmethod
    def open(cls, session: Session, generation_id: int, data_dir: Path) -> SegmentEngine:
        store = store_for(data_dir, generation_id)
        mapped = _mapped(session, store)
        return cls(mapped, store, mapped.seq).refreshed(session)

    def refreshed(self, session: Session) -> SegmentEngine:
        newer = self.store.current()
        if newer is not None and newer.seq > self.base_seq:
            # A merge (this process's, another worker's) or an index run wrote a newer set.
            mapped = _mapped(session, self.store)
            return replace(self, postings=mapped, base_seq=mapped.seq).refreshed(session)
        rebuilt: list[PostingEngine] = []

        def reload() -> PostingEngine:  # the log was pruned past this engine: nothing to replay
            rebuilt.append(_rebuilt_locked(session, self.store))
            return rebuilt[-1]

        current = self.postings.refresh(
            session, reload=reload, overflow=lambda delta, high: self._merge(session, delta, high)
        )
        if rebuilt:
            return replace(self, postings=current, base_seq=current.seq)
        return self if current is self.postings else replace(self, postings=current)

    def _merge(self, session: Session, delta: int, high: int) -> None:
        url = session.get_bind().engine.url.render_as_string(hide_password=False)
        self.merger.start(url, self.store.root, self.generation_id, high, delta)


def _mapped(session: Session, store: SegmentStore) -> PostingEngine:
    """The engine of the current set alone (its ``seq`` the set's), rebuilt when the set is
    missing or damaged."""
    groups = tag_groups(session)
    try:
        segment, info = store.read(groups)
        return PostingEngine(store.generation_id, info.seq, [segment])
    except SegmentError as exc:
        log.warning("segments of generation %d: %s; rebuilding", store.generation_id, exc)
    with store.writer_lock():
        try:  # another process may have written the set while this one waited
            segment, info = store.read(groups)
            return PostingEngine(store.generation_id, info.seq, [segment])
        except SegmentError:
            return _rebuild(session, store)[0]


def _rebuilt_locked(session: Session, store: SegmentStore) -> PostingEngine:
    with store.writer_lock():
        return _rebuild(session, store)[0]


def _rebuild(session: Session, store: SegmentStore) -> tuple[PostingEngine, bool]:
    """Write the generation's set from the database, tag by tag, as the current set (the
    caller holds the writer lock), and open it. A set that cannot be written is logged; the
    generation is then read into memory and served from there."""
    _low, seq = latest_change(session)
    try:
        build_from_database(store, session, seq)
    except OSError as exc:
        log.error("cannot write the segment set of generation %d: %s", store.generation_id, exc)
        return PostingEngine.load(session, store.generation_id), False
    segment, info = store.read(tag_groups(session))
    return PostingEngine(store.generation_id, info.seq, [segment]), True

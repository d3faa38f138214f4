"""The segment engine: the posting engine opened from memory-mapped segment files
(app.search.segment_files) instead of read from SQL rows, so a process opens a million images
in seconds and server workers share one copy of the postings in the page cache.

Opening maps the current segment set and its delta segments (app.search.segment_deltas), and
replays the change log past them into a small in-memory delta (the posting engine's own
delta segments), which is followed live as the memory engine does. When the in-memory delta
passes a few thousand images, a child process writes it to disk as a delta segment; when
all the deltas outgrow the merge limit, the child rewrites the whole set from the database
(app.search.segment_merge). Meanwhile this process keeps serving what it holds; every
process maps the newer files on its next refresh, as it does after an index run writes
them (only the segments it does not hold yet are mapped). A set that is missing, stale past the
pruned log, corrupt, from another generation or another format is rebuilt from the database
at once, under a lock shared by every process, so N workers starting together rebuild once.

The postings' checksums are not verified at open (at 10M images, reading every file cold
took most of a start): a server runs :meth:`SegmentEngine.verify` in the background once it
is ready. Until it ends, a flipped bit in a posting file can add or drop a match among the
live images (the ids, the per-image columns and the paths are verified before the first
search, and every array is bounds-checked, so nothing worse); from the moment it finds
one, this engine refuses every search with :class:`SegmentsDamaged`, a clear error, until
the set is rebuilt and mapped in its place.
A set that cannot be written (a full disk) leaves the old one in place; this process then
serves what it read from the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from pyroaring import BitMap
from sqlalchemy.orm import Session

from app.search.memory_engine import PostingBacked
from app.search.plan import PlanNode
from app.search.postings import PostingEngine, latest_change, tag_groups
from app.search.segment_build import build_from_database
from app.search.segment_deltas import FLUSH_IMAGES, bring_current
from app.search.segment_files import Mapped, SegmentError, SegmentStore
from app.search.segment_merge import Merger

log = logging.getLogger(__name__)

SEGMENTS_FOLDER = "segments"


class SegmentsDamaged(SegmentError):
    """A file of the mapped set failed its checksum after the start: searches are refused
    until the rebuilt set is mapped in its place."""

    http_status = 503
    error_code = "segments_damaged"


@dataclass
class Damage:
    """What the background check found, shared by the engines made from one mapping."""

    problem: str | None = None


def store_for(data_dir: Path, generation_id: int) -> SegmentStore:
    return SegmentStore(data_dir / SEGMENTS_FOLDER, generation_id)


def write_segments(
    session: Session, data_dir: Path, generation_id: int, full: bool = False
) -> None:
    """Bring the generation's segment set current now: a delta segment of what changed since
    it, or (``full``, or when due) a whole new set. The indexer, importer and reindexer call
    this at the end of a run, so the next server maps current files instead of replaying
    the run's changes from the database."""
    store = store_for(data_dir, generation_id)
    with store.writer_lock():
        write_current(session, store, full)


def write_current(session: Session, store: SegmentStore, full: bool = False) -> bool:
    """:func:`write_segments` for a caller that holds the writer lock; False, logged, when
    the files cannot be written (a full disk)."""
    try:
        bring_current(session, store, full)
    except OSError as exc:
        log.error("cannot write the segment set of generation %d: %s", store.generation_id, exc)
        return False
    return True


@dataclass(frozen=True)
class SegmentEngine(PostingBacked):
    postings: PostingEngine
    store: SegmentStore
    # The change-log position the mapped set and its deltas cover.
    base_seq: int
    # The set as mapped (None when served from memory: its files could not be written).
    files: Mapped | None = field(default=None, compare=False)
    merger: Merger = field(default_factory=Merger, compare=False)
    damage: Damage = field(default_factory=Damage, compare=False)
    name: str = "segments"

    def evaluate(self, session: Session, plan: PlanNode) -> BitMap:
        if self.damage.problem is not None:
            raise SegmentsDamaged(
                f"the segment files are damaged ({self.damage.problem}); they are being rebuilt"
            )
        return self.postings.evaluate(plan)

    def verify(self, session: Session) -> str | None:
        """Check the checksums left for after the start (the postings'); when one fails,
        log it and refuse searches from now on (:meth:`refreshed` rebuilds the set). The
        problem found, or None."""
        files = self.files
        for check in files.deferred if files is not None else []:
            problem = check.problem()
            if problem is not None:
                self.damage.problem = problem
                log.error("segments of generation %d: %s; rebuilding", self.generation_id, problem)
                return problem
        return None

    @classmethod
    def open(cls, session: Session, generation_id: int, data_dir: Path) -> SegmentEngine:
        store = store_for(data_dir, generation_id)
        postings, files = _mapped(session, store)
        return cls(postings, store, postings.seq, files).refreshed(session)

    def refreshed(self, session: Session) -> SegmentEngine:
        if self.damage.problem is not None:
            return self._repaired(session).refreshed(session)
        newer = self.store.current()
        held = self.files.info.names if self.files is not None else ()
        if newer is not None and newer.names != held and newer.covered >= self.base_seq:
            # A flush or merge (this process's, another worker's) or an index run wrote
            # newer files: map the segments not held yet.
            postings, files = _mapped(session, self.store, self.files)
            return replace(self, postings=postings, base_seq=postings.seq, files=files).refreshed(
                session
            )
        rebuilt: list[tuple[PostingEngine, Mapped | None]] = []

        def reload() -> PostingEngine:  # the log was pruned past this engine: nothing to replay
            rebuilt.append(_rebuilt_locked(session, self.store))
            return rebuilt[-1][0]

        current = self.postings.refresh(
            session,
            reload=reload,
            overflow=lambda delta, high, full: self._merge(session, delta, high, full),
            flush_at=FLUSH_IMAGES,
        )
        if rebuilt:
            return replace(self, postings=current, base_seq=current.seq, files=rebuilt[-1][1])
        return self if current is self.postings else replace(self, postings=current)

    def _repaired(self, session: Session) -> SegmentEngine:
        """The engine of a set rebuilt in place of the damaged one (by this process, or by
        another that found the damage first)."""
        held = self.files.info.names if self.files is not None else ()
        with self.store.writer_lock():
            current = self.store.current()
            try:
                if current is None or current.names == held:
                    raise SegmentError("the damaged set is still the current one")
                files: Mapped | None = self.store.read_all(tag_groups(session))
                assert files is not None
                postings = _opened(self.store, files)
            except SegmentError:
                postings, files = _rebuild(session, self.store)
        return replace(self, postings=postings, base_seq=postings.seq, files=files, damage=Damage())

    def _merge(self, session: Session, delta: int, high: int, full: bool) -> None:
        url = session.get_bind().engine.url.render_as_string(hide_password=False)
        self.merger.start(url, self.store.root, self.generation_id, high, delta, full)


def _opened(store: SegmentStore, mapped: Mapped) -> PostingEngine:
    segments = mapped.composed()
    return PostingEngine(store.generation_id, mapped.info.covered, segments, len(segments))


def _mapped(
    session: Session, store: SegmentStore, known: Mapped | None = None
) -> tuple[PostingEngine, Mapped | None]:
    """The engine of the current set and its deltas alone (its ``seq`` what they cover),
    rebuilt when the set is missing or damaged; segments ``known`` holds are reused."""
    groups = tag_groups(session)
    try:
        mapped = store.read_all(groups, known)
        return _opened(store, mapped), mapped
    except SegmentError as exc:
        log.warning("segments of generation %d: %s; rebuilding", store.generation_id, exc)
    with store.writer_lock():
        try:  # another process may have written the set while this one waited
            mapped = store.read_all(groups)
            return _opened(store, mapped), mapped
        except SegmentError:
            return _rebuild(session, store)


def _rebuilt_locked(session: Session, store: SegmentStore) -> tuple[PostingEngine, Mapped | None]:
    with store.writer_lock():
        return _rebuild(session, store)


def _rebuild(session: Session, store: SegmentStore) -> tuple[PostingEngine, Mapped | None]:
    """Write the generation's set from the database, tag by tag, as the current set (the
    caller holds the writer lock), and open it. A set that cannot be written is logged; the
    generation is then read into memory and served from there."""
    _low, seq = latest_change(session)
    try:
        build_from_database(store, session, seq)
    except OSError as exc:
        log.error("cannot write the segment set of generation %d: %s", store.generation_id, exc)
        return PostingEngine.load(session, store.generation_id), None
    mapped = store.read_all(tag_groups(session))
    return _opened(store, mapped), mapped

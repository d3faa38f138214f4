"""Bringing a generation's segment set current: a delta segment of the images changed since
it, or a whole new set when that is due.

A server replays the changes past its set from SQL at open; at 1M images, 100,000 changed
images took 9.3 s of a 14.7 s start (docs/benchmarks.md). So the changes are written to disk
as they come, as Lucene flushes its in-memory buffer: a server's delta is flushed by a
background child once it passes :data:`FLUSH_IMAGES` images (app.search.segment_merge), and
``sagashi index``, ``import`` and ``reindex`` flush theirs at the end of a run. A start then
maps the deltas and replays only what came after the last one.

Deltas fold geometrically, as the in-memory ones do: a new delta replaces the trailing ones
no more than twice its size (rereading just their images from the database, never the bulk
set), and there are at most :data:`MAX_DELTAS`. When the deltas would hold more images than
the merge limit (10% of the collection, at least 20,000), a whole new set is written instead.
"""

from __future__ import annotations

import logging

from pyroaring import BitMap
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.search.postings import (
    Segment,
    delta_limit,
    fold_start,
    latest_change,
    tag_groups,
)
from app.search.segment_build import build_from_database
from app.search.segment_files import SegmentStore, SetInfo
from app.store.models import ImageChange

log = logging.getLogger(__name__)

# A server's in-memory delta past this many images is flushed as a delta segment: at most
# about 0.2 s of replay at open (9.3 s per 100,000 images at 1M, 60 postings each).
FLUSH_IMAGES = 2_000
# Delta segments on disk at most; the engine holds up to 8 segments in all (MAX_SEGMENTS).
MAX_DELTAS = 4


def bring_current(session: Session, store: SegmentStore, full: bool = False) -> SetInfo:
    """Make the current set cover the change log as it stands: nothing when it does, else a
    delta segment, else (``full``, no usable set, a log pruned past it, deltas over the merge
    limit) a whole new set. The caller holds the store's writer lock; raises OSError when
    the files cannot be written (the current set is then left as it was)."""
    info = store.current()
    low, high = latest_change(session)
    if full or info is None or low > info.covered + 1:
        return build_from_database(store, session, high)
    if info.covered >= high:
        return info
    changed = changed_images(session, info.covered, high)
    sizes = [delta.changed for delta in info.deltas]
    keep = min(fold_start(sizes, len(changed), floor=0), MAX_DELTAS - 1)
    if keep < len(info.deltas):  # the trailing deltas fold into the new one
        changed = changed_images(session, info.deltas[keep].base_seq, high)
    held = sum(sizes[:keep]) + len(changed)
    if held > delta_limit(info.images):
        log.info("segment deltas would hold %d images, over the merge limit: a new set", held)
        return build_from_database(store, session, high)
    base_seq = info.deltas[keep - 1].seq if keep else info.seq
    segment = Segment.load(session, store.generation_id, tag_groups(session), list(changed))
    return store.publish_delta(base_seq, high, keep, changed, segment)


def changed_images(session: Session, after: int, up_to: int) -> BitMap:
    """The images the change log names after change ``after`` up to ``up_to``."""
    statement = select(ImageChange.image_id).where(
        ImageChange.seq > after, ImageChange.seq <= up_to
    )
    return BitMap(session.scalars(statement).all())

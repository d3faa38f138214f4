"""The gallery's thumbnails made during 'sagashi index' (SAGASHI_INDEX_THUMBS), in a thread
beside the run, so a first gallery view reads cached files instead of decoding 60 images.

The thread follows what the run commits: every couple of seconds it reads the images
indexed since the run began (new ones and changed ones, whose content hash is new) and
makes the thumbnails the cache lacks, into the same cache the server reads
(``SAGASHI_DATA_DIR/thumbs``, keyed by content hash and size). At the end of the run it
catches up with the last batch. A file that no longer decodes is skipped: the server says
why when asked for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Engine, select

from app.settings import Settings
from app.store.db import session_factory
from app.store.models import Image
from app.store.repository import now
from app.store.thumbs import ThumbnailCache
from app.tagger.errors import ImageDecodeError

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
# A batch's rows carry the time they were written, before its commit: read back this far.
OVERLAP = timedelta(minutes=5)


def thumbnail_cache(settings: Settings) -> ThumbnailCache:
    """The server's cache (app.api.app makes the same one)."""
    return ThumbnailCache(
        settings.data_dir / "thumbs", settings.thumb_size, settings.max_image_pixels
    )


class BackgroundThumbnails:
    def __init__(self, engine: Engine, cache: ThumbnailCache) -> None:
        self.engine = engine
        self.cache = cache
        self.made = 0
        self.failed = 0
        self._since = now()
        self._seen: set[tuple[int, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="thumbnails", daemon=True)

    def start(self) -> BackgroundThumbnails:
        self._thread.start()
        return self

    def finish(self) -> int:
        """Catch up with the run's last batch, then stop; the thumbnails made."""
        self._stop.set()
        self._thread.join()
        self._catch_up()
        return self.made

    def stop(self) -> None:
        """Stop at once (the run failed or was interrupted): no catching up."""
        self._stop.set()
        self._thread.join()

    def _follow(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._catch_up()
            except Exception:  # the run goes on; finish() tries once more
                log.exception("thumbnails: stopped following the run")
                return

    def _catch_up(self) -> None:
        polled = now()
        with session_factory(self.engine)() as session:
            rows = session.execute(
                select(Image.id, Image.path, Image.sha256)
                .where(Image.indexed_at >= self._since, Image.deleted_at.is_(None))
                .order_by(Image.id)
            ).all()
        current = {(int(i), str(s)) for i, _, s in rows}
        self._seen &= current  # older ones are before the window and never come back
        for image_id, path, sha256 in rows:
            if self._stop.is_set() and threading.current_thread() is self._thread:
                return  # finish() catches up in the run's own thread
            key = (int(image_id), str(sha256))
            if key not in self._seen:
                self._seen.add(key)
                self._make(str(path), str(sha256))
        self._since = max(self._since, polled - OVERLAP)

    def _make(self, path: str, sha256: str) -> None:
        if self.cache.path_for(sha256).is_file():
            return
        try:
            with open(path, "rb") as source:
                # Pillow's warnings name the file, at DEBUG: the run's own decode of the
                # same file has already said them
                self.cache.get(sha256, source, name=path, note_level=logging.DEBUG)
            self.made += 1
        except (OSError, ImageDecodeError) as exc:
            self.failed += 1
            log.debug("thumbnail of %s: %s", path, exc)


def started(engine: Engine, settings: Settings) -> BackgroundThumbnails | None:
    if not settings.index_thumbs:
        return None
    return BackgroundThumbnails(engine, thumbnail_cache(settings)).start()


def finished(thumbs: BackgroundThumbnails | None) -> None:
    if thumbs is None:
        return
    waited = time.perf_counter()
    made = thumbs.finish()
    log.info(
        "made %d gallery thumbnails in the background (%d could not be made; %.1fs after the "
        "last batch)",
        made,
        thumbs.failed,
        time.perf_counter() - waited,
    )


@contextmanager
def following(engine: Engine, settings: Settings) -> Iterator[None]:
    """Thumbnails made beside the body (a run); caught up when it ends normally."""
    thumbs = started(engine, settings)
    try:
        yield
    except BaseException:
        if thumbs is not None:
            thumbs.stop()
        raise
    finished(thumbs)

"""Admission for image decodes done on request (uploads, URL fetches, thumbnails).

Bytes are bounded elsewhere; the cost of a request is its decode: a 200 KB PNG can claim
170 million pixels and take a gigabyte and seconds to decode. Two bounds hold that cost:
a request image's pixels are checked from its header before anything is decoded (see
:func:`check_pixels`), and at most ``slots`` decodes run at once, with at most ``queue``
more waiting up to ``wait`` seconds each. A request that finds the queue full, or waits
too long, is answered 503 with Retry-After instead of piling up memory.

So the decoding memory of a server is bounded by ``slots`` times the largest decode the
pixel limit allows (about 12 bytes a pixel at the peak: RGBA, its RGB copy and Pillow's
working buffers), whatever the number of requests.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from app.api.errors import ApiError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1


def busy(reason: str) -> ApiError:
    return ApiError(
        503,
        "busy",
        f"the server is decoding as many images as it may ({reason}); retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class DecodeGate:
    def __init__(self, slots: int, queue: int, wait_seconds: float) -> None:
        self.slots = slots
        self.queue = queue
        self.wait_seconds = wait_seconds
        self._running = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._admitted = 0  # running plus waiting
        self.refused = 0  # for metrics and tests

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one decode slot (blocking; call from a worker thread) or raise a 503."""
        with self._lock:
            if self._admitted >= self.slots + self.queue:
                self.refused += 1
                raise busy(f"{self.slots} running, {self.queue} waiting")
            self._admitted += 1
        try:
            if not self._running.acquire(timeout=self.wait_seconds):
                with self._lock:
                    self.refused += 1
                raise busy(f"waited {self.wait_seconds:g} s for a slot")
            try:
                yield
            finally:
                self._running.release()
        finally:
            with self._lock:
                self._admitted -= 1


def check_pixels(data: bytes, max_pixels: int) -> None:
    """413 for an image whose header claims more than ``max_pixels`` pixels. Reads only the
    header; anything Pillow cannot identify is left for the decoder to report."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise too_many_pixels(None, max_pixels) from None
    except Exception:  # not an image, or a broken header: the decoder says which, as a 415
        return
    if width * height > max_pixels:
        raise too_many_pixels((width, height), max_pixels)


def too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> ApiError:
    claimed = f"{size[0]}x{size[1]} is {size[0] * size[1]:,} pixels, " if size else ""
    return ApiError(
        413,
        "too_many_pixels",
        f"{claimed}over the limit of {max_pixels:,} pixels for query images "
        "(SAGASHI_MAX_UPLOAD_PIXELS)",
    )

"""Read, hash and decode one file to model-size pixels: the work of the indexer's readers.

It runs in reader threads or reader processes (:mod:`indexer.readers`), so it imports only
what decoding needs (no database, no torch) and returns plain data: a spawned process
starts quickly and sends back little besides the (S, S, 3) uint8 pixels.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from app.store.digests import of_bytes
from app.tagger import device_decode, pillow_notes
from app.tagger.decode import decode_with_meta
from app.tagger.device_decode import Frame, Jpeg
from app.tagger.errors import ImageDecodeError
from app.tagger.preprocess import ImagePreprocess


@dataclass(frozen=True)
class ReadSpec:
    """What every read of one run shares (sent once to each reader process)."""

    preprocess: ImagePreprocess
    max_pixels: int
    jpeg_draft: bool
    # Content already indexed elsewhere (a moved file): hashed, not decoded.
    skip_decode: frozenset[str] = frozenset()
    # JPEGs the model's device can decode are handed on as bytes (app.tagger.device_decode).
    device_jpeg: bool = False
    # Other decoded images are handed on at decoded size, for the device to pad and resize.
    device_resize: bool = False


# The most one file's device input holds: a JPEG's bytes or a decoded frame.
DEVICE_INPUT_MOST = max(device_decode.DEVICE_MAX_BYTES, device_decode.FRAME_MAX_BYTES)


class DeviceInputBudget:
    """The host memory that the inputs waiting for the device (JPEG bytes, decoded frames)
    may hold at once, across a run's readers. Without it the pipeline's depth (the
    lookahead, the batch filling, the batches waiting to be staged: six batches) times the
    per-file bounds is up to about 4 GB at batch 64. A reader that finds it spent does the work
    itself, as with the device paths off, so nothing waits for memory and nothing can
    deadlock; what an input held comes back when the input is dropped (staged, or its file
    not batched).

    Reader threads take from it as they read (:meth:`take`). A reader process cannot share
    it: the parent reserves a file's most before sending the file (:meth:`reserve`), the
    process reads within that, and the parent settles the reservation on what came back
    (:meth:`settle`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, owner: Jpeg | Frame) -> bool:
        """Hold what ``owner`` holds until it is dropped; False (nothing held) when over."""
        nbytes = held_by(owner)
        with self._lock:
            if self.held + nbytes > self.limit:
                return False
            self.held += nbytes
        weakref.finalize(owner, self.give_back, nbytes)
        return True

    def reserve(self, most: int = DEVICE_INPUT_MOST) -> int:
        """Hold up to ``most`` bytes for a read elsewhere: what is left, 0 when spent."""
        with self._lock:
            granted = max(0, min(most, self.limit - self.held))
            self.held += granted
        return granted

    def settle(self, reserved: int, read: Read) -> None:
        """Keep what ``read``'s device input holds, until the input is dropped, and give the
        rest of the reservation back now."""
        owner = read.deferred
        kept = min(reserved, held_by(owner)) if owner is not None else 0
        self.give_back(reserved - kept)
        if owner is not None and kept:
            weakref.finalize(owner, self.give_back, kept)

    def give_back(self, nbytes: int) -> None:
        """Give back bytes held for an input or a reservation."""
        with self._lock:
            self.held -= nbytes


def held_by(owner: Jpeg | Frame) -> int:
    """The host bytes an input waiting for the device holds."""
    return len(owner.data) if isinstance(owner, Jpeg) else int(owner.pixels.nbytes)


@dataclass
class Read:
    """One file as read: its hash and pixels, or why it could not be."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    md5: str = ""
    pixels: np.ndarray | None = field(default=None, repr=False)
    # Instead of pixels, what the model's device finishes (see ReadSpec).
    deferred: Jpeg | Frame | None = field(default=None, repr=False)
    width: int = 0
    height: int = 0
    format: str = ""
    error: ImageDecodeError | None = None

    def model_input(self) -> np.ndarray | Jpeg | Frame | None:
        """What the model needs of the file: pixels, or what the device finishes; None when
        it was not decoded (an error, or content known already)."""
        return self.pixels if self.deferred is None else self.deferred


def read_file(
    spec: ReadSpec,
    path: str,
    expect: tuple[int, int] | None,
    budget: DeviceInputBudget | None = None,
) -> Read:
    """Read, hash and decode one file from the same bytes, so the hash always describes the
    pixels that were tagged. ``expect`` is the (size, mtime_ns) the scan saw; a file that
    differs from it, or changes while it is read, is skipped. ``None``: take the file as it
    is now. ``budget`` bounds what the inputs handed to the device hold (None: each file's
    own bound only)."""
    read = Read(path)
    try:
        with open(path, "rb") as handle:
            before = os.fstat(handle.fileno())
            data = handle.read()
            after = os.fstat(handle.fileno())
    except FileNotFoundError:
        read.error = ImageDecodeError("not_found", "file vanished during the scan")
        return read
    except OSError as exc:
        read.error = ImageDecodeError("unreadable", f"cannot read file: {exc.strerror or exc}")
        return read
    stamp = (before.st_size, before.st_mtime_ns)
    read.size, read.mtime_ns = stamp
    if stamp != (after.st_size, after.st_mtime_ns) or stamp != (expect or stamp):
        read.error = ImageDecodeError(
            "changed", "file changed during the scan; it will be indexed on the next run"
        )
        return read
    return decode_bytes(spec, read, data, budget)


def decode_bytes(
    spec: ReadSpec, read: Read, data: bytes, budget: DeviceInputBudget | None = None
) -> Read:
    """Hash and decode a file's bytes into ``read``: shared by the local read above and the
    object-store read (:mod:`indexer.object_store`), so both give the same facts and errors."""
    path = read.path
    digests = of_bytes(data)
    read.sha256, read.md5 = digests.sha256, digests.md5
    if read.sha256 in spec.skip_decode:
        return read
    header = device_decode.for_device(data, spec.max_pixels) if spec.device_jpeg else None
    if header is not None and _within(budget, header.jpeg):
        read.deferred, read.width, read.height, read.format = (
            header.jpeg,
            header.width,
            header.height,
            "jpeg",
        )
        return read
    try:
        draft = spec.preprocess.draft_request if spec.jpeg_draft else None
        with pillow_notes.noting(path):  # Pillow's warnings name the file
            image, meta = decode_with_meta(data, max_pixels=spec.max_pixels, draft=draft)
        read.pixels, read.deferred = _for_model(spec, image, budget)
    except ImageDecodeError as exc:
        read.error = exc
        return read
    except MemoryError:
        read.error = ImageDecodeError("too_large", "out of memory decoding")
        return read
    read.width, read.height, read.format = meta.width, meta.height, meta.format
    return read


def _for_model(
    spec: ReadSpec, image: Image.Image, budget: DeviceInputBudget | None
) -> tuple[np.ndarray | None, Frame | None]:
    """Model-size pixels, or the frame the device pads and resizes (``device_resize``)."""
    frame = device_decode.frame_for_device(image, spec.preprocess) if spec.device_resize else None
    if frame is not None and not _within(budget, frame):
        frame = None
    return (spec.preprocess.pixels(image), None) if frame is None else (None, frame)


def _within(budget: DeviceInputBudget | None, owner: Jpeg | Frame) -> bool:
    return budget is None or budget.take(owner)

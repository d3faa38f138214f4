"""The thumbnail cache: one WebP per image content and size, made on first request.

Thumbnails are keyed by the file's SHA-256, so a moved file keeps its thumbnail, an edited
file gets a new one, and the key doubles as a strong ETag.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO

from PIL import Image

from app.atomic_files import atomic_file
from app.tagger import pillow_notes
from app.tagger.decode import decode_image

log = logging.getLogger(__name__)

THUMB_QUALITY = 82
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ThumbnailCache:
    def __init__(self, directory: Path, size: int, max_pixels: int) -> None:
        self.directory = directory
        self.size = size
        self.max_pixels = max_pixels

    def path_for(self, sha256: str) -> Path:
        if not _HEX64.fullmatch(sha256):  # never let a stored value shape a path
            sha256 = hashlib.sha256(sha256.encode("utf-8", "replace")).hexdigest()
        return self.directory / str(self.size) / sha256[:2] / f"{sha256}.webp"

    def get(
        self,
        sha256: str,
        source: IO[bytes],
        admit: Callable[[], AbstractContextManager[None]] = nullcontext,
        *,
        name: str = "an image file",
        note_level: int = logging.WARNING,
    ) -> Path:
        """The cached thumbnail, made when missing from ``source``, the image file opened by
        :func:`app.store.safe_open.open_within` (never reopened by path, so a link swapped
        in meanwhile cannot change what is decoded). Raises ImageDecodeError for a file
        that no longer decodes. A decode runs inside ``admit()``, the server's bound on
        concurrent decodes; a cached thumbnail costs none. Pillow's warnings about the file
        name ``name`` (its path), at ``note_level`` (app.tagger.pillow_notes)."""
        target = self.path_for(sha256)
        if target.is_file():
            return target
        with admit(), pillow_notes.noting(name, note_level):
            # A cheap JPEG draft decode: a thumbnail needs a fraction of the pixels.
            image = decode_image(source, max_pixels=self.max_pixels, draft=self._draft)
            image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A concurrent reader sees all or nothing; no fsync: a lost thumbnail is remade.
        with atomic_file(target, durable=False) as stream:
            image.save(stream, "WEBP", quality=THUMB_QUALITY, method=4)
        return target

    def _draft(self, width: int, height: int) -> tuple[int, int] | None:
        scale = max(width, height) / (self.size * 2)
        if scale <= 1:
            return None
        return (max(1, int(width / scale)), max(1, int(height / scale)))

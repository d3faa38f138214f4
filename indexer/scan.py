"""Find image files under the paths a user names."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".gif",
        ".webp",
        ".bmp",
        ".tif",
        ".tiff",
        ".avif",
        ".heic",
        ".heif",
        ".jxl",
    }
)


def has_image_extension(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def iter_image_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Named files always; directories recursively, by image extension, in sorted order.

    A named file that is not an image is still yielded, so its error is reported rather
    than silently skipped.
    """
    for path in paths:
        if path.is_dir():
            yield from _walk(path)
        else:
            yield path


def _walk(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            candidate = Path(directory, name)
            if has_image_extension(candidate):
                yield candidate

"""Find image files under the paths a user names.

Directories are walked recursively in sorted order. A file counts as an image by its
extension, or, without one, by its first bytes. Symlinks are followed, with loop
detection. Problems (unreadable directories, symlink loops, names that are not UTF-8)
are reported per path and the walk goes on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.tagger.decode import sniff_format

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
SNIFF_BYTES = 32


@dataclass(frozen=True)
class Found:
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Problem:
    path: str
    code: str
    message: str


def os_problem(path: str, exc: OSError) -> Problem:
    """A failed stat or open, as a per-file problem."""
    code = "not_found" if isinstance(exc, FileNotFoundError) else "unreadable"
    return Problem(path, code, f"cannot open: {exc.strerror or exc}")


def has_image_extension(path: Path | str) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def iter_image_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Named files always; directories recursively. For ``sagashi tag``, where a named
    file that is not an image is still yielded so its error is reported."""
    for path in paths:
        if path.is_dir():
            yield from (Path(f.path) for f in walk([path]) if isinstance(f, Found))
        else:
            yield path


def walk(roots: Iterable[Path]) -> Iterator[Found | Problem]:
    visited: set[tuple[int, int]] = set()
    for root in roots:
        absolute = os.path.abspath(root)
        try:
            info = os.stat(absolute)
        except OSError as exc:
            yield os_problem(absolute, exc)
            continue
        if stat.S_ISDIR(info.st_mode):
            yield from _walk_dir(absolute, info, visited)
        else:
            yield from _file(absolute, info, named=True)


def _walk_dir(
    directory: str, info: os.stat_result, visited: set[tuple[int, int]]
) -> Iterator[Found | Problem]:
    key = (info.st_dev, info.st_ino)
    if key in visited:
        yield Problem(
            directory, "symlink_loop", "directory already visited (symlink loop); skipped"
        )
        return
    visited.add(key)
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        yield Problem(directory, "unreadable", f"cannot list directory: {exc.strerror or exc}")
        return
    for entry in entries:
        path = entry.path
        if _not_utf8(path):
            yield Problem(
                _printable(path), "bad_name", "file name is not valid UTF-8; rename it to index it"
            )
            continue
        try:
            child = os.stat(path)  # follows symlinks
        except OSError as exc:
            code = "symlink_loop" if exc.errno == 40 else "unreadable"
            if isinstance(exc, FileNotFoundError) and entry.is_symlink():
                code = "not_found"
            yield Problem(path, code, f"cannot stat: {exc.strerror or exc}")
            continue
        if stat.S_ISDIR(child.st_mode):
            yield from _walk_dir(path, child, visited)
        elif stat.S_ISREG(child.st_mode):
            yield from _file(path, child, named=False)


def _file(path: str, info: os.stat_result, named: bool) -> Iterator[Found | Problem]:
    if named or has_image_extension(path) or _sniffs_as_image(path):
        yield Found(path, info.st_size, info.st_mtime_ns)


def _sniffs_as_image(path: str) -> bool:
    if os.path.splitext(path)[1]:
        return False  # a file with a non-image extension is not opened
    try:
        with open(path, "rb") as handle:
            return sniff_format(handle.read(SNIFF_BYTES)) is not None
    except OSError:
        return False


def _not_utf8(path: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in path)


def _printable(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")

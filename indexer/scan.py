"""Find image files under the paths a user names.

Directories are walked recursively in sorted order. A file counts as an image by its
extension, or, without one, by its first bytes. Symlinks are followed, with loop
detection, when their target lies inside a library root (a folder being walked, one
indexed before, or one of SAGASHI_MEDIA_ROOTS): the server serves only files there, so a
link leading anywhere else is reported as ``outside_library`` rather than recorded as an
image whose metadata is searchable but whose file is never served. Problems (unreadable
directories, symlink loops, links out of the library, names that are not UTF-8) are
reported per path and the walk goes on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.store.roots import is_within, real_roots, root_folder
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
            found = walk([path], follow_outside=True)  # tagging records and serves nothing
            yield from (Path(f.path) for f in found if isinstance(f, Found))
        else:
            yield path


def walk(
    roots: Iterable[Path], other_roots: Sequence[str] = (), *, follow_outside: bool = False
) -> Iterator[Found | Problem]:
    """Every image under ``roots``, and a Problem for each path that cannot be indexed.

    A symlink is followed only when its target lies inside ``roots`` or ``other_roots``
    (the library roots already known, the extra folders the server may serve), unless
    ``follow_outside``.
    """
    roots = list(roots)
    inside = None if follow_outside else real_roots([*map(root_folder, roots), *other_roots])
    walker = _Walker(inside)
    for root in roots:
        absolute = os.path.abspath(root)
        try:
            info = os.stat(absolute)
        except OSError as exc:
            yield os_problem(absolute, exc)
            continue
        if stat.S_ISDIR(info.st_mode):
            yield from walker.folder(absolute, info)
        elif (problem := walker.leaves_library(absolute)) is not None:
            yield problem
        else:
            yield from _file(absolute, info, named=True)


class _Walker:
    def __init__(self, inside: list[Path] | None) -> None:
        self.inside = inside  # resolved roots a link may lead into; None: anywhere
        self.visited: set[tuple[int, int]] = set()

    def folder(self, directory: str, info: os.stat_result) -> Iterator[Found | Problem]:
        key = (info.st_dev, info.st_ino)
        if key in self.visited:
            yield Problem(
                directory, "symlink_loop", "directory already visited (symlink loop); skipped"
            )
            return
        self.visited.add(key)
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            yield Problem(directory, "unreadable", f"cannot list directory: {exc.strerror or exc}")
            return
        for entry in entries:
            yield from self._entry(entry)

    def _entry(self, entry: os.DirEntry[str]) -> Iterator[Found | Problem]:
        path = entry.path
        if _not_utf8(path):
            yield Problem(
                _printable(path), "bad_name", "file name is not valid UTF-8; rename it to index it"
            )
            return
        try:
            child = os.stat(path)  # follows symlinks
        except OSError as exc:
            code = "symlink_loop" if exc.errno == 40 else "unreadable"
            if isinstance(exc, FileNotFoundError) and entry.is_symlink():
                code = "not_found"
            yield Problem(path, code, f"cannot stat: {exc.strerror or exc}")
            return
        if entry.is_symlink() and (problem := self.leaves_library(path)) is not None:
            yield problem
        elif stat.S_ISDIR(child.st_mode):
            yield from self.folder(path, child)
        elif stat.S_ISREG(child.st_mode):
            yield from _file(path, child, named=False)

    def leaves_library(self, path: str) -> Problem | None:
        """An ``outside_library`` problem when ``path`` resolves outside the roots.

        Only links need the check: the entries of a folder already inside the roots are
        inside too, and ``folder`` is entered only that way or from a root."""
        if self.inside is None:
            return None
        real = Path(os.path.realpath(path))
        if is_within(real, self.inside):
            return None
        return Problem(
            path,
            "outside_library",
            f"symlink to {real}, outside the library roots; not indexed (the server would "
            "not serve it): index that folder too, or add it to SAGASHI_MEDIA_ROOTS",
        )


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

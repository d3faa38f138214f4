"""Open a library file for a request so that a symlink swapped in later cannot lead out.

Checking a path (resolve it, compare it with the roots) and then opening it again by name
leaves a window: a folder on the path can be replaced by a symlink to anywhere on disk in
between, and the open follows it. So the path is resolved once, checked against the roots,
and then that *resolved* path is opened one component at a time from ``/``, each with
``O_NOFOLLOW`` relative to the descriptor of the folder before it. Every component of a
resolved path is a real directory (or the file itself), so a component that has become a
symlink since fails the open (``ENOTDIR`` for a folder, ``ELOOP`` for the file) instead of
being followed. The caller then reads only from the descriptor it got.

Symlinks inside the library keep working when their target lies inside a root: the
resolution follows them, and the walk opens the target's real path. Walking from ``/``
rather than from a root's descriptor also covers a root's own parent folders.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from app.errors import SagashiError
from app.store.roots import resolve_within

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_PATH needs only search permission on each folder; elsewhere a plain read-only open.
_FOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# Non-blocking so that a named pipe with an image's name cannot hang the request.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_SWAPPED = (errno.ELOOP, errno.ENOTDIR)


class OpenRefused(SagashiError):
    """The file cannot be served; ``code`` is the API error code, the message says why."""

    http_status = 404

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = self.error_code = code
        self.message = message


@dataclass
class LibraryFile:
    """An open regular file inside the library, with the ``fstat`` of that descriptor."""

    file: BinaryIO
    info: os.stat_result
    path: Path

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> LibraryFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_within(path: str, roots: Sequence[str]) -> LibraryFile:
    """Open ``path`` for reading when its real location lies inside one of ``roots``.

    Raises :class:`OpenRefused` with code ``file_missing``, ``outside_roots``,
    ``path_changed`` (a folder on the path became a symlink while it was opened),
    ``not_a_file`` or ``file_unreadable``.
    """
    real = resolve_within(path, roots)
    if real is None:
        if not os.path.exists(path):  # missing, or a dangling link
            raise OpenRefused("file_missing", "the file is gone")
        raise OpenRefused("outside_roots", "the file lies outside the library roots")
    fd = _open_without_links(real)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OpenRefused("not_a_file", "the path is not a regular file")
        os.set_blocking(fd, True)
        return LibraryFile(os.fdopen(fd, "rb"), info, real)
    except BaseException:
        os.close(fd)
        raise


def _open_without_links(real: Path) -> int:
    """The descriptor of ``real`` (absolute, resolved), reached without following a link."""
    folder = os.open("/", _FOLDER_FLAGS)
    try:
        for part in real.parts[1:-1]:
            child = _open_at(part, _FOLDER_FLAGS, folder)
            os.close(folder)
            folder = child
        return _open_at(real.name, _FILE_FLAGS, folder)
    finally:
        os.close(folder)


def _open_at(name: str, flags: int, folder: int) -> int:
    try:
        return os.open(name, flags, dir_fd=folder)
    except FileNotFoundError as exc:
        raise OpenRefused("file_missing", "the file is gone") from exc
    except PermissionError as exc:
        raise OpenRefused("file_unreadable", f"the server cannot read it: {exc.strerror}") from exc
    except OSError as exc:
        if exc.errno in _SWAPPED:
            raise OpenRefused(
                "path_changed",
                "a folder on its path changed (became a link?) while it was being opened",
            ) from exc
        raise OpenRefused("file_unreadable", f"the server cannot open it: {exc.strerror}") from exc

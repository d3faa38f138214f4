"""Files replaced whole: a reader sees the old file or the new one, never a part.

Every writer of derived or exported files (thumbnails, FAISS files, segment pointers, import
shards, captions, a dataset's manifest) goes through here: the data is written to a hidden
temporary name in the target's folder (same filesystem, so the rename is atomic), then
renamed over the target; on any error the temporary file is removed and the target is left
as it was. ``durable`` adds the fsyncs (file, then folder) that make the new file survive a
power cut once the call returns; writers of files that are cheap to remake, and that make
millions of them, leave it off.

Temporary names start with ``.`` and end with ``.tmp``: scanners and shard readers skip
hidden files, and ``sweep`` removes the ones a killed process left.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def temporary_for(target: Path) -> Path:
    """A fresh hidden name beside ``target`` (unique per call, so writers never collide)."""
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


@contextmanager
def atomic_path(target: Path, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path for a writer that needs a path (FAISS, a copy, a link); renamed over
    ``target`` when the block ends cleanly, removed when it raises."""
    temporary = temporary_for(target)
    try:
        yield temporary
        if durable and temporary.is_file() and not temporary.is_symlink():
            fsync_file(temporary)
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            temporary.unlink()
        raise
    if durable:
        fsync_dir(target.parent)


@contextmanager
def atomic_file(
    target: Path, *, durable: bool = True, mode: int | None = None
) -> Iterator[BinaryIO]:
    """A binary file open for writing that becomes ``target`` when the block ends cleanly.
    ``mode``: its permissions (else the umask's 0o666, as ``open`` gives)."""
    with atomic_path(target, durable=durable) as temporary, temporary.open("xb") as handle:
        if mode is not None:
            os.fchmod(handle.fileno(), mode)
        yield handle


def write_atomic(target: Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_file(target, durable=durable) as handle:
        handle.write(data)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (where the OS allows it)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep(folder: Path) -> int:
    """Remove the temporary files writers killed mid-write left in ``folder``; how many."""
    if not folder.is_dir():
        return 0
    left = [path for path in folder.glob(f".*{TEMP_SUFFIX}") if path.is_file()]
    for path in left:
        path.unlink(missing_ok=True)
    return len(left)

"""Library roots: the folders the indexer was pointed at.

The file and thumbnail endpoints serve a path only when its real location (symlinks
resolved) lies inside a root, so neither a crafted database row nor a symlink placed in
the collection can expose the rest of the disk. The indexer applies the same test to the
symlinks it meets (see indexer.scan), so it records only files the server will serve.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import LibraryRoot
from app.store.repository import now


def add_roots(session: Session, roots: Iterable[Path]) -> None:
    """Record folders being indexed (absolute, as the scanner walks them); the caller commits."""
    known = set(library_roots(session))
    for root in roots:
        folder = root_folder(root)
        if folder not in known:
            session.add(LibraryRoot(path=folder, added_at=now()))
            known.add(folder)


def root_folder(root: str | os.PathLike[str]) -> str:
    """The folder a path given to the indexer makes a root: itself, or a file's folder."""
    absolute = os.path.abspath(root)
    return absolute if os.path.isdir(absolute) else os.path.dirname(absolute)


def library_roots(session: Session) -> list[str]:
    return list(session.scalars(select(LibraryRoot.path).order_by(LibraryRoot.path)).all())


def resolve_within(path: str, roots: Sequence[str]) -> Path | None:
    """The real path of ``path`` when it lies inside one of ``roots`` (also resolved), else
    None. A missing file resolves to None too."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
        return None
    return real if is_within(real, real_roots(roots)) else None


def real_roots(roots: Iterable[str]) -> list[Path]:
    """``roots`` with symlinks resolved; a root that does not exist is left out."""
    found = []
    for root in roots:
        try:
            found.append(Path(root).resolve(strict=True))
        except (OSError, RuntimeError):
            continue
    return found


def is_within(real: Path, bases: Sequence[Path]) -> bool:
    """Whether the resolved path ``real`` is one of ``bases`` or lies under one."""
    return any(real == base or real.is_relative_to(base) for base in bases)

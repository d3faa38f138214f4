"""The content digests of a file, from one read of its bytes: sha256 (Sagashi's key for
content: moves, duplicates, thumbnails, ETags) and md5 (the key Danbooru and its clients
use: the ``md5:`` metatag, file names, the Danbooru API's ``md5`` field)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

CHUNK = 1 << 20


@dataclass(frozen=True)
class Digests:
    sha256: str
    md5: str


def of_bytes(data: bytes) -> Digests:
    return Digests(
        hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()
    )


def of_file(path: str) -> Digests:
    """Both digests of a file, read once in chunks. Raises OSError."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return Digests(sha.hexdigest(), md5.hexdigest())

"""One name per image format, whether it came from Pillow or from a file extension."""

from __future__ import annotations

_ALIASES = {
    "jpg": "jpeg",
    "jpe": "jpeg",
    "jfif": "jpeg",
    "tif": "tiff",
    "apng": "png",
    "mpo": "jpeg",
    "heic": "heif",
}


def canonical_format(name: str) -> str:
    """``jpg`` and Pillow's ``JPEG`` are both ``jpeg``; MPO (multi-picture JPEG) too."""
    lowered = name.strip().lower().lstrip(".")
    return _ALIASES.get(lowered, lowered)

"""Robust decoding of one image file into an RGB ``PIL.Image``.

Every failure becomes an :class:`ImageDecodeError` with a stable code, so a batch of
thousands of files never stops on one bad file.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from app.tagger import pillow_notes
from app.tagger.errors import ImageDecodeError
from app.tagger.png_idat import PNG_SIGNATURE, coalesce_idat
from app.text import article

DraftRequest = Callable[[int, int], tuple[int, int] | None]

# Pillow's own bomb check runs inside Image.open with a process-wide limit; ours runs
# right after with the configured limit, so Pillow's warning is only noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow's other warnings about a file name the file, in one line (app.tagger.pillow_notes).
pillow_notes.install()

_DECODE_FAILURES = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    TypeError,
    KeyError,
    MemoryError,
)

# Opening without blocking: a FIFO (or other special file) with an image name would
# otherwise block open() forever and stall the whole batch behind it.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)

_PILLOW_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

# Pillow hands its decoders 64 KiB at a time and takes the GIL back after each call: a
# wait of up to the switch interval each time while another thread runs Python (see
# app.tagger.png_idat). The whole file in one call, up to this much (the readers already
# hold the file in memory; the cap bounds the copy for a file decoded from disk).
DECODE_BLOCK_MAX = 64 << 20


@dataclass(frozen=True)
class SourceMeta:
    """The file's own format and full-resolution upright size (before any draft scaling)."""

    width: int
    height: int
    format: str


def decode_image(
    source: str | os.PathLike[str] | bytes | IO[bytes],
    *,
    max_pixels: int,
    draft: DraftRequest | None = None,
) -> Image.Image:
    """Decode the first frame of ``source`` to RGB, alpha composited on white.

    ``source`` is a path, the file's bytes, or a file already open for binary reading
    (read from its start; the caller keeps it and closes it). ``draft`` maps the stored
    (width, height) to a reduced JPEG decode size, or None.
    """
    return decode_with_meta(source, max_pixels=max_pixels, draft=draft)[0]


def decode_with_meta(
    source: str | os.PathLike[str] | bytes | IO[bytes],
    *,
    max_pixels: int,
    draft: DraftRequest | None = None,
) -> tuple[Image.Image, SourceMeta]:
    """Like :func:`decode_image`, also returning the source's format and upright size."""
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError("empty", "empty file (0 bytes)")
        with pillow_notes.noting("an image given as bytes"):
            data = coalesce_idat(source)
            return _decode_stream(io.BytesIO(data), max_pixels, draft, len(data))
    try:
        if not isinstance(source, (str, os.PathLike)):
            return _decode_open_file(source, max_pixels, draft)
        fd = os.open(Path(source), _OPEN_FLAGS)
        with open(fd, "rb") as stream, pillow_notes.noting(os.fsdecode(source)):
            return _decode_open_file(stream, max_pixels, draft)
    except FileNotFoundError as exc:
        raise ImageDecodeError("not_found", f"no such file: {exc.filename}") from exc
    except IsADirectoryError as exc:
        raise ImageDecodeError("unreadable", "is a directory, not a file") from exc
    except PermissionError as exc:
        raise ImageDecodeError("unreadable", f"permission denied: {exc.strerror}") from exc
    except ImageDecodeError:
        raise
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"cannot read file: {exc.strerror or exc}") from exc


def _decode_open_file(
    stream: IO[bytes], max_pixels: int, draft: DraftRequest | None
) -> tuple[Image.Image, SourceMeta]:
    """Decode from an open file: a regular, non-empty one only (a FIFO or device would
    block or never end), from its first byte."""
    fd = stream.fileno()
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise ImageDecodeError("unreadable", "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageDecodeError("unreadable", f"not a regular file ({_file_kind(info.st_mode)})")
    if _OPEN_FLAGS & getattr(os, "O_NONBLOCK", 0) and not os.get_blocking(fd):
        os.set_blocking(fd, True)
    if info.st_size == 0:
        raise ImageDecodeError("empty", "empty file (0 bytes)")
    stream.seek(0)
    return _decode_stream(stream, max_pixels, draft, info.st_size)


def _decode_stream(
    stream: IO[bytes], max_pixels: int, draft: DraftRequest | None, size: int
) -> tuple[Image.Image, SourceMeta]:
    """Decode from ``stream``, ``size`` bytes long."""
    _let_configured_limit_apply(max_pixels)
    try:
        image = Image.open(stream)
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb_error(exc, max_pixels) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified_error(stream) from exc
    except _DECODE_FAILURES as exc:
        if _is_truncation(exc):
            raise ImageDecodeError(
                "truncated", f"truncated file, header incomplete: {exc}"
            ) from exc
        raise ImageDecodeError("corrupt", f"corrupt image header: {exc}") from exc
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageDecodeError("corrupt", f"invalid image size {width}x{height}")
        if width * height > max_pixels:
            raise ImageDecodeError(
                "too_large",
                f"{width}x{height} is {width * height:,} pixels, over the limit of "
                f"{max_pixels:,} (SAGASHI_MAX_IMAGE_PIXELS)",
            )
        if draft is not None and image.format == "JPEG":
            request = draft(width, height)
            if request is not None:
                image.draft(image.mode, request)
        image.decodermaxblock = max(ImageFile.MAXBLOCK, min(size, DECODE_BLOCK_MAX))
        try:
            image.seek(0)
            image.load()
            upright = _upright(image)
            rotated = upright.size != image.size
            meta = SourceMeta(
                height if rotated else width,
                width if rotated else height,
                (image.format or "unknown").lower(),  # see app.store.formats for aliases
            )
            rgb = to_rgb(upright)
            # ``image`` is closed on leaving this block: hand back an image of our own.
            return (rgb.copy() if rgb is image else rgb), meta
        except Image.DecompressionBombError as exc:
            raise _pillow_bomb_error(exc, max_pixels) from exc
        except OSError as exc:
            if _is_truncation(exc):
                raise ImageDecodeError("truncated", f"truncated file: {exc}") from exc
            raise ImageDecodeError("corrupt", f"cannot decode image data: {exc}") from exc
        except _DECODE_FAILURES as exc:
            raise ImageDecodeError("corrupt", f"cannot decode image data: {exc}") from exc


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; the image itself when there is none
    to apply (``ImageOps.exif_transpose`` would copy it, a whole frame for nothing)."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _let_configured_limit_apply(max_pixels: int) -> None:
    """Raise (never lower) Pillow's process-wide bomb limit to the configured one.

    ``Image.open`` refuses anything over ``2 * Image.MAX_IMAGE_PIXELS`` (178,956,970 by
    default) before our own check runs, so without this a SAGASHI_MAX_IMAGE_PIXELS above
    that would silently have no effect.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and 2 * current < max_pixels:
        Image.MAX_IMAGE_PIXELS = -(-max_pixels // 2)


def _pillow_bomb_error(exc: Image.DecompressionBombError, max_pixels: int) -> ImageDecodeError:
    """Pillow's own bomb refusal, reworded to name the setting that controls it."""
    match = _PILLOW_BOMB_PIXELS.search(str(exc))
    if match and int(match.group(1)) > max_pixels:
        return ImageDecodeError(
            "too_large",
            f"image is {int(match.group(1)):,} pixels, over the limit of {max_pixels:,} "
            "(SAGASHI_MAX_IMAGE_PIXELS); refused before decoding as a possible "
            "decompression bomb",
        )
    return ImageDecodeError(
        "too_large",
        f"image too large for Pillow's decompression-bomb check: {exc} "
        f"(SAGASHI_MAX_IMAGE_PIXELS is {max_pixels:,})",
    )


def _is_truncation(exc: BaseException) -> bool:
    # Pillow's OSError says "image file is truncated" while decoding, "Truncated File Read"
    # when the header itself ends early. (Its ValueError "APNG contains truncated acTL
    # chunk" is a malformed chunk, not a short file.)
    message = str(exc)
    return isinstance(exc, OSError) and ("truncated" in message or "Truncated File" in message)


def _unidentified_error(stream: IO[bytes]) -> ImageDecodeError:
    """Pillow identified no format; say so, naming the format the first bytes claim."""
    try:
        stream.seek(0)
        claimed = sniff_format(stream.read(32))
    except (OSError, ValueError):
        claimed = None
    if claimed is None:
        return ImageDecodeError("not_an_image", "not a recognised image format")
    return ImageDecodeError(
        "not_an_image",
        f"not a recognised image format: the file starts with {article(claimed)} signature but "
        "its header cannot be read (damaged, or a variant this build cannot decode)",
    )


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes of a file claim, or None."""
    if head.startswith(PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1"):
        return "HEIF"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _wide_grey_to_l(image)
        mode = image.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy() if image.readonly else image
    return image.convert("RGB")


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale: scale to 8 bits instead of clipping at 255.

    A PNG tRNS grey value (``info["transparency"]``) marks fully transparent pixels; they
    become white, as every other transparent pixel does.
    """
    raw = np.asarray(image)
    values = raw.astype(np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    values = np.nan_to_num(values * scale, nan=0.0)
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and not isinstance(transparent, bool):
        grey[raw == transparent] = 255
    return Image.fromarray(grey, mode="L")

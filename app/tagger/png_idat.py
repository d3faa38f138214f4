"""A PNG's image data as one IDAT chunk, so Pillow inflates it in one call.

Pillow feeds its PNG decoder one IDAT chunk per call and takes the GIL back between calls;
encoders split the data into chunks of 8 to 64 KiB, so a 3 MB PNG is about 50 calls. Each
return to the GIL waits for whichever Python thread holds it, up to the interpreter's
switch interval (5 ms) when that thread is busy: beside one busy Python thread (the index's
writer, the model's thread), one reader took 150 ms per PNG instead of 36
(docs/benchmarks.md). The same bytes as one chunk decode in a single call: the same
decoder, the same pixels and the same errors.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IDAT = b"IDAT"
_HEADER = struct.Struct(">I4s")
_MAX_LENGTH = 2**31 - 1  # a chunk's longest, by the PNG specification


def coalesce_idat(data: bytes) -> bytes:
    """``data`` with its consecutive IDAT chunks joined into one, or ``data`` itself when it
    has fewer than two, is not a PNG, or is damaged anywhere up to the end of its image data
    (Pillow then reads, and reports, the file as it is)."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    first = end = 0
    parts: list[memoryview] = []
    view = memoryview(data)
    position = len(PNG_SIGNATURE)
    while position + _HEADER.size <= len(data):
        length, kind = _HEADER.unpack_from(data, position)
        following = position + _HEADER.size + length + 4  # 4: the CRC
        if following > len(data):
            return data  # cut short: Pillow says where
        if kind == _IDAT:
            if parts and position != end:
                return data  # IDATs apart: not a valid PNG, leave it to Pillow
            first = first or position
            parts.append(view[position + _HEADER.size : following - 4])
            end = following
        elif parts:
            break
        position = following
    length = sum(len(part) for part in parts)
    if len(parts) < 2 or length > _MAX_LENGTH:
        return data
    # The parts joined first and the CRC taken over the whole: zlib and bytes.join each give
    # the GIL up once per call on large data, which is what this module is here to avoid.
    body = b"".join(parts)
    crc = zlib.crc32(body, zlib.crc32(_IDAT))
    return b"".join(
        (view[:first], _HEADER.pack(length, _IDAT), body, struct.pack(">I", crc), view[end:])
    )

"""A response that streams a library file from the descriptor already opened for it.

Starlette's ``FileResponse`` takes a path and opens it again when it sends the body, which
would undo :mod:`app.store.safe_open` (the path could lead elsewhere by then). This one
reads with ``pread`` from the open descriptor, sizes the body from the ``fstat`` of that
same descriptor, and closes it when the response ends. Like ``FileResponse`` it answers a
single byte range with 206 (``Accept-Ranges: bytes``); a request for several ranges, or a
malformed one, gets the whole file, which HTTP allows.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from email.utils import formatdate

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.errors import ApiError
from app.store.safe_open import LibraryFile

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")

Span = tuple[int, int]  # [start, end) in bytes


def requested_span(headers: Mapping[str, str], size: int, etag: str) -> Span | None:
    """The byte range a request asks for, or None for the whole file.

    Raises a 416 ApiError (with ``Content-Range: bytes */size``) for a range that starts
    past the end. ``If-Range`` is honoured with a strong ETag only, as RFC 9110 requires.
    """
    match = _SINGLE_RANGE.fullmatch(headers.get("range", "").replace(" ", ""))
    if match is None or match.groups() == ("", ""):
        return None
    if_range = headers.get("if-range")
    if if_range is not None and (etag.startswith("W/") or if_range != etag):
        return None
    first, last = match.groups()
    if first == "":  # "bytes=-N": the last N bytes
        start, end = max(0, size - int(last)), size
        if int(last) == 0:
            start = size
    else:
        start, end = int(first), size if last == "" else min(size, int(last) + 1)
        if last != "" and int(last) < start:
            return None  # malformed: ignored
    if start >= size:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the requested range lies outside the file ({size} bytes)",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


class OpenFileResponse(StreamingResponse):
    def __init__(
        self,
        opened: LibraryFile,
        *,
        media_type: str,
        headers: Mapping[str, str],
        span: Span | None = None,
    ) -> None:
        size = opened.info.st_size
        start, end = span if span is not None else (0, size)
        all_headers = {
            **headers,
            "Accept-Ranges": "bytes",
            "Content-Length": str(end - start),
            "Last-Modified": formatdate(opened.info.st_mtime, usegmt=True),
        }
        if span is not None:
            all_headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.opened = opened
        super().__init__(
            self._chunks(start, end),
            status_code=200 if span is None else 206,
            headers=all_headers,
            media_type=media_type,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.opened.close()

    async def _chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        fd = self.opened.fileno()
        offset = start
        while offset < end:
            chunk = await run_in_threadpool(os.pread, fd, min(CHUNK_BYTES, end - offset), offset)
            if not chunk:  # shrank since fstat; the server ends the short response
                log.warning("%s shrank while it was being served", self.opened.path)
                return
            offset += len(chunk)
            yield chunk

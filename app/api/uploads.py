"""Query images from a request: a multipart upload, base64 text, or a URL (when enabled).

Every path enforces the same size limit (413) and turns malformed input into a 4xx with a
reason; decoding itself happens later, in the inference thread pool (415 if it fails).
"""

from __future__ import annotations

import base64
import binascii
import re

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.errors import ApiError
from app.api.urlfetch import FetchPolicy, fetch_image_bytes
from app.settings import Settings

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, "too_large", f"the image exceeds {max_bytes} bytes (SAGASHI_MAX_UPLOAD_BYTES)"
    )


def empty() -> ApiError:
    return ApiError(415, "bad_image", "not a decodable image (empty): the image is empty")


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    if not data:
        raise empty()
    return data


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Plain or URL-safe base64, or a data: URL; whitespace is ignored."""
    body = _WHITESPACE.sub("", _DATA_URL.sub("", text.strip(), count=1))
    if len(body) * 3 // 4 > max_bytes + 3:
        raise too_large(max_bytes)
    body = body.replace("-", "+").replace("_", "/")
    body += "=" * (-len(body) % 4)
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_base64", f"the image is not valid base64: {exc}") from exc
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    if not data:
        raise empty()
    return data


async def fetch_url(url: str, settings: Settings) -> bytes:
    if not settings.url_fetch:
        raise ApiError(
            400,
            "url_fetch_disabled",
            "this server does not download URLs (SAGASHI_URL_FETCH is off); upload the image",
        )
    policy = FetchPolicy.of(
        settings.max_upload_bytes, settings.url_fetch_timeout, settings.url_fetch_allow
    )
    data: bytes = await run_in_threadpool(fetch_image_bytes, url, policy)
    if not data:
        raise empty()
    return data

"""GET /api/images/{id}, its file and its thumbnail.

Files are served only from inside the library roots (symlinks resolved), with ETags from
the content hash, so browsers and proxies revalidate with a cheap 304. Each request opens
the file once through :mod:`app.store.safe_open` and reads only from that descriptor (the
file itself, its ETag and size, the thumbnail's source), so a folder swapped for a
symlink during the request cannot make it serve a file from outside the roots.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from app.api.errors import ApiError
from app.api.open_file import OpenFileResponse, requested_span
from app.api.resources import Res, Resources
from app.api.routes.common import Thresholds
from app.api.schemas import ImageDetail, ImageTagOut, TagDropOut
from app.search.details import image_row, tags_of
from app.search.service import EmptyIndex
from app.store.models import Image
from app.store.safe_open import LibraryFile, OpenRefused, open_within
from app.tagger.errors import ImageDecodeError
from app.tagrules.configured import refinement
from app.tagrules.listing import list_tags

router = APIRouter(tags=["images"])

ImageId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
CACHE_CONTROL = "private, max-age=3600"
MEDIA_TYPES = {  # by the canonical format names the index stores
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "avif": "image/avif",
    "heif": "image/heif",
    "jxl": "image/jxl",
    "ico": "image/vnd.microsoft.icon",
}


@router.get("/api/images/{image_id}", response_model=ImageDetail)
def image_detail(image_id: ImageId, res: Res, wanted: Thresholds) -> ImageDetail:
    """An image's metadata and every stored tag, with scores, groups, each tag's image count
    and whether it reaches the thresholds in force (threshold_* parameters, else the
    server's defaults): the gallery lists those, the rest under "low confidence"."""
    try:
        catalog = res.search.catalog()
        generation = res.search.generation_id()
    except EmptyIndex as exc:
        raise _missing(image_id) from exc
    thresholds = res.search.thresholds(wanted)
    with res.session() as session:
        image = image_row(session, image_id)
        if image is None:
            raise _missing(image_id)
        tags = tags_of(session, generation, [image_id]).get(image_id, [])
    listed = list_tags(
        [(t.name, t.score, t.group) for t in tags],
        thresholds,
        lambda name: info.group if (info := catalog.tags.get(name)) else None,
        catalog.implications,
        refinement(res.settings, overlap=True),
    )
    return ImageDetail(
        id=image.id,
        path=image.path,
        width=image.width,
        height=image.height,
        size_bytes=image.size_bytes,
        format=image.format,
        sha256=image.sha256,
        indexed_at=image.indexed_at.isoformat(),
        generation=generation,
        thresholds=thresholds,
        tags=[
            ImageTagOut(
                name=t.name,
                score=t.score,
                group=t.group,
                count=info.count if (info := catalog.tags.get(t.name)) else 0,
                confident=t.confident,
                implied_by=t.implied_by,
                dropped=TagDropOut(rule=t.dropped.rule, by=t.dropped.by) if t.dropped else None,
            )
            for t in listed
        ],
    )


@router.get(
    "/api/images/{image_id}/file",
    response_class=Response,
    responses={
        200: {"content": {"image/*": {}}},
        206: {"description": "The byte range asked for"},
        304: {"description": "Not modified"},
    },
)
def image_file(image_id: ImageId, request: Request, res: Res) -> Response:
    """The original file, with its content type and an ETag."""
    image, opened = _opened(res, image_id)
    etag = _file_etag(image, opened.info)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    try:
        if _not_modified(request, etag):
            opened.close()
            return Response(status_code=304, headers=headers)
        span = requested_span(request.headers, opened.info.st_size, etag)
    except BaseException:
        opened.close()
        raise
    # The response reads from this descriptor and closes it when it is sent.
    return OpenFileResponse(
        opened, media_type=_media_type(image.format), headers=headers, span=span
    )


@router.get(
    "/api/images/{image_id}/thumb",
    response_class=FileResponse,
    responses={200: {"content": {"image/webp": {}}}, 304: {"description": "Not modified"}},
)
async def image_thumb(image_id: ImageId, request: Request, res: Res) -> Response:
    """A WebP thumbnail (longest side SAGASHI_THUMB_SIZE), made once and cached."""
    image, opened = await run_in_threadpool(_opened, res, image_id)
    with opened:
        etag = f'"{image.sha256}-{res.thumbs.size}"'
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        try:
            thumb = await run_in_threadpool(
                res.thumbs.get, image.sha256, opened.file, res.decodes.slot, name=image.path
            )
        except ImageDecodeError as exc:
            raise ApiError(
                415, "bad_image", f"image {image_id} no longer decodes ({exc.code}): {exc.message}"
            ) from exc
    # The thumbnail lies in our own data folder, so serving it by path is safe.
    return FileResponse(thumb, media_type="image/webp", headers=headers)


_REFUSAL_HINTS = {
    "outside_roots": "; add its folder to SAGASHI_MEDIA_ROOTS to serve it",
    "path_changed": "; retry once it has settled",
}


def _opened(res: Resources, image_id: int) -> tuple[Image, LibraryFile]:
    with res.session() as session:  # one session per file request
        image = image_row(session, image_id)
        roots = res.roots(session) if image is not None else []
    if image is None:
        raise _missing(image_id)
    try:
        return image, open_within(image.path, roots)
    except OpenRefused as exc:
        hint = _REFUSAL_HINTS.get(exc.code, "")
        raise ApiError(
            404, exc.code, f"image {image_id}'s file {image.path}: {exc.message}{hint}"
        ) from exc


def _file_etag(image: Image, info: os.stat_result) -> str:
    if info.st_size == image.size_bytes and info.st_mtime_ns == image.mtime_ns:
        return f'"{image.sha256}"'
    return f'W/"{info.st_size:x}-{info.st_mtime_ns:x}"'  # changed since it was indexed


def _not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    wanted = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in wanted or etag.removeprefix("W/") in wanted


def _media_type(image_format: str) -> str:
    return MEDIA_TYPES.get(image_format, "application/octet-stream")


def _missing(image_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no image {image_id} in the index")

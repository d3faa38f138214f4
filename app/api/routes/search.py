"""GET /api/search (tag queries) and POST /api/similar (reverse image search)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from app.api.errors import ApiError, describe_validation
from app.api.resources import Res, Resources
from app.api.routes.common import (
    Thresholds,
    empty_page,
    page_body,
    search_errors,
    unknown_tags,
)
from app.api.schemas import SearchResponse, SimilarRequest
from app.api.uploads import decode_base64, fetch_url, read_upload
from app.search.service import EmptyIndex, SearchRequest

router = APIRouter(tags=["search"])

TagsPerItem = Annotated[int, Query(ge=0, le=100, description="Top tags listed per result.")]


@router.get("/api/search", response_model=SearchResponse)
def search(
    res: Res,
    wanted: Thresholds,
    q: Annotated[str, Query(max_length=10_000, description="Danbooru-syntax query.")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 40,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    tags: TagsPerItem = 8,
) -> SearchResponse:
    """Images matching a query, one page at a time (pass next_cursor back as cursor).

    Tag terms take confidence thresholds (`hu_tao_(genshin_impact),>=0.9`); a bare term
    uses its group's threshold (the threshold_* parameters, else the model card's
    defaults). A malformed query is a 400 whose error.position points into q."""
    request = SearchRequest(q, limit, cursor, thresholds=wanted)
    with search_errors():
        try:
            page = res.search.search(request)
        except EmptyIndex:
            return empty_page(res.search.kind)
        body = page_body(res, page, wanted, tags)
    body.suggestions = unknown_tags(res, q)
    return body


SIMILAR_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SimilarRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "q": {"type": "string"},
                        "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "hide_duplicates": {"type": "boolean"},
                        "cursor": {"type": "string"},
                    },
                }
            },
        },
    }
}


@router.post("/api/similar", response_model=SearchResponse, openapi_extra=SIMILAR_BODY)
async def similar(request: Request, res: Res, wanted: Thresholds) -> SearchResponse:
    """Images that look like a query image, most similar first, optionally filtered by q.

    The image is an indexed one (image_id), an upload (multipart field file), base64
    (image) or a URL (url; only when the server enables URL fetching). hide_duplicates
    drops near-copies of the query image."""
    body, uploaded = await _similar_body(request)
    given = [x for x in (body.image_id, uploaded, body.image, body.url) if x is not None]
    if len(given) != 1:
        raise ApiError(
            422,
            "invalid_request",
            "give exactly one query image: image_id, image (base64), url or a file upload",
        )
    embedding = None
    if body.image_id is None:
        data = uploaded if uploaded is not None else await _query_image(body, res)
        inferred = await run_in_threadpool(res.inference.infer, data)
        embedding = inferred.embedding
    return await run_in_threadpool(_similar_page, res, body, embedding, wanted)


def _similar_page(
    res: Resources,
    body: SimilarRequest,
    embedding: np.ndarray | None,
    wanted: dict[str, float],
) -> SearchResponse:
    request = SearchRequest(
        body.q,
        body.k,
        body.cursor,
        thresholds=wanted,
        embedding=embedding,
        hide_duplicates=body.hide_duplicates,
        similar_to=body.image_id,
    )
    with search_errors():
        page = res.search.search(request)
        answer = page_body(res, page, wanted, 8)
    answer.suggestions = unknown_tags(res, request.query)
    return answer


async def _similar_body(request: Request) -> tuple[SimilarRequest, bytes | None]:
    """The request's fields, and the uploaded file's bytes for a multipart request."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/json":
        try:
            raw = await request.json()
        except ValueError as exc:
            raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from exc
        return _validated(raw), None
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=20) as form:  # closes spooled files
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "invalid_request", "file: the multipart field file is required")
            body = _validated(_form_fields(form))
            return body, await read_upload(
                upload, request.app.state.resources.settings.max_upload_bytes
            )
    raise ApiError(
        415,
        "unsupported_media_type",
        "send application/json (image_id, image or url) or multipart/form-data (file)",
    )


def _form_fields(form: FormData) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("q", "k", "hide_duplicates", "cursor"):
        value = form.get(name)
        if isinstance(value, str):
            fields[name] = value
    return fields


def _validated(raw: Any) -> SimilarRequest:
    try:
        body = SimilarRequest.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation(exc.errors())) from exc
    return body


async def _query_image(body: SimilarRequest, res: Resources) -> bytes:
    if body.image is not None:
        return decode_base64(body.image, res.settings.max_upload_bytes)
    assert body.url is not None
    return await fetch_url(body.url, res.settings)

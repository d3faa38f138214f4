"""Drop-in tagging endpoints: POST /api/tag (the PixAI card's endpoint contract) and
POST /evaluate (Danbooru's autotagger), so existing clients can point at Sagashi."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.errors import ApiError
from app.api.inference import Inferred
from app.api.resources import Res, Resources
from app.api.schemas import EvaluateItem, PixaiRequest, PixaiTag
from app.api.uploads import decode_base64, fetch_url, read_upload
from app.search.plan import RATING_LETTERS, RATING_TAGS
from app.tagger.policy import OutputPolicy, TagScore
from app.tagger.vocab import RATING

router = APIRouter(tags=["tagging"])

MAX_EVALUATE_FILES = 32


@router.post("/api/tag", response_model=list[PixaiTag])
async def tag(body: PixaiRequest, res: Res) -> list[PixaiTag]:
    """Tag one image, as PixAI's inference endpoint does: `{"inputs": {"url": ...} |
    {"image": <base64>}, "parameters": {"top_k", "threshold_general",
    "threshold_character"}}` gives `[{"tag", "score", "group"}]`, by score."""
    inputs = body.inputs
    if (inputs.url is None) == (inputs.image is None):
        raise ApiError(422, "invalid_request", "inputs: give exactly one of url or image")
    if inputs.image is not None:
        data = decode_base64(inputs.image, res.settings.max_upload_bytes)
    else:
        assert inputs.url is not None
        data = await fetch_url(inputs.url, res.settings)
    params = body.parameters
    policy = OutputPolicy(
        top_k=params.top_k,
        threshold_general=params.threshold_general,
        threshold_character=params.threshold_character,
    )
    selected = await run_in_threadpool(_select, res, data, policy)
    return [PixaiTag(tag=t.tag, score=round(t.score, 6), group=t.group) for t in selected]


@router.post("/evaluate", response_model=list[EvaluateItem])
async def evaluate(
    res: Res,
    file: Annotated[list[UploadFile], File(description="One or more images (repeat the field).")],
    threshold: Annotated[float, Form(ge=0.0, le=1.0)] = 0.1,
    limit: Annotated[int, Form(ge=1, le=10_000)] = 50,
    format: Annotated[str, Form(description="Only json is served.")] = "json",
) -> list[EvaluateItem]:
    """Danbooru autotagger's endpoint: multipart file (repeatable), threshold, limit,
    format=json; answers `[{"filename", "tags": {tag: score}}]` with ratings as
    `rating:g|s|q|e`, as Danbooru reads them."""
    if format != "json":
        raise ApiError(400, "bad_format", f"only format=json is served, not {format!r}")
    if len(file) > MAX_EVALUATE_FILES:
        raise ApiError(413, "too_large", f"at most {MAX_EVALUATE_FILES} files per request")
    policy = OutputPolicy(top_k=limit, threshold_general=threshold, threshold_character=threshold)
    results = []
    for upload in file:
        data = await read_upload(upload, res.settings.max_upload_bytes)
        selected = await run_in_threadpool(_select, res, data, policy)
        kept = [t for t in selected if t.group != RATING or t.score >= threshold][:limit]
        tags = {_danbooru_name(t): round(t.score, 6) for t in kept}
        results.append(EvaluateItem(filename=upload.filename or "", tags=tags))
    return results


def _select(res: Resources, data: bytes, policy: OutputPolicy) -> list[TagScore]:
    inferred: Inferred = res.inference.infer(data)
    return policy.select(inferred.probs, res.inference.load().vocab)


def _danbooru_name(tag: TagScore) -> str:
    if tag.group == RATING and tag.tag in RATING_TAGS:
        return "rating:" + RATING_LETTERS[RATING_TAGS.index(tag.tag)]
    return tag.tag

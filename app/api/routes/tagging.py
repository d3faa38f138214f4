"""Drop-in tagging endpoints, so existing clients can point at Sagashi: the PixAI card's
endpoint (POST / and POST /api/tag, which also answer huggingface_hub's image
classification) and Danbooru's autotagger (POST /evaluate)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from app.api.errors import ApiError
from app.api.evaluate_page import render_evaluate_page
from app.api.hf_errors import ENDPOINT_PATH, PIXAI_PATH
from app.api.inference import Inferred
from app.api.resources import Res, Resources
from app.api.schemas import (
    ClassificationLabel,
    ClassificationParameters,
    ClassificationRequest,
    ErrorDetail,
    EvaluateItem,
    PixaiParameters,
    PixaiRequest,
    PixaiTag,
)
from app.api.tag_request import TAG_REQUEST_BODY, read_tag_request
from app.api.uploads import decode_base64, fetch_url, read_upload
from app.search.plan import RATING_LETTERS, RATING_TAGS
from app.tagger.policy import OutputPolicy, TagScore
from app.tagger.vocab import RATING
from app.tagrules.configured import refinement
from app.tagrules.refine import Refinement

router = APIRouter(tags=["tagging"])

MAX_EVALUATE_FILES = 32
MAX_EVALUATE_LIMIT = 10_000
# Danbooru autotagger's own defaults for a request that leaves them out.
EVALUATE_THRESHOLD = 0.1
EVALUATE_LIMIT = 50
EVALUATE_FORMATS = ("json", "html")
# autotagger defaults to html (its web form); Sagashi keeps json, what API clients (and
# those generated from the OpenAPI schema) expect when they leave format out. Danbooru
# always sends format=json.
EVALUATE_FORMAT = "json"
# Statuses that belong to one uploaded file (too large, not an image): with several files,
# that file's item carries the error and the others are still tagged. Anything else (no
# model, busy) fails the whole request.
FILE_ERRORS = frozenset({413, 415})

TagResponse = list[PixaiTag] | list[ClassificationLabel]
T = TypeVar("T")


@router.post(
    ENDPOINT_PATH,
    response_model=TagResponse,
    openapi_extra=TAG_REQUEST_BODY,
    operation_id="tag_at_endpoint_root",
    summary="Tag (at the endpoint URL itself, as Hugging Face clients post)",
)
@router.post(PIXAI_PATH, response_model=TagResponse, openapi_extra=TAG_REQUEST_BODY)
async def tag(request: Request, res: Res) -> TagResponse:
    """Tag one image. Three contracts, told apart by Content-Type and the body's shape:

    - **PixAI** (the model card's endpoint snippet): JSON whose `inputs` is an object,
      `{"inputs": {"url": ...} | {"image": <base64>}, "parameters": {"top_k",
      "threshold_general", "threshold_character"}}` gives `[{"tag", "score", "group"}]`,
      by score.
    - **Hugging Face image classification with parameters**: JSON whose `inputs` is a
      string, `{"inputs": <base64>, "parameters": {"top_k", "function_to_apply"}}`.
    - **Hugging Face image classification**: the image itself as the body, with
      `Content-Type: image/*`, `application/octet-stream`, or none.

    Both classification forms give `[{"label", "score"}]`, by score: the tags the card's
    default thresholds keep, at most `top_k`. Any other Content-Type is a 415.

    Errors are `{"error": "<message>", "code": "<code>"}`, the shape huggingface_hub's
    clients read, so they show the message.
    """
    body = await read_tag_request(request, res.settings.max_upload_bytes)
    if isinstance(body, PixaiRequest):
        return await _tag_pixai(body, res)
    if isinstance(body, ClassificationRequest):
        data = decode_base64(body.inputs, res.settings.max_upload_bytes)
        return await _classify(data, body.parameters, res)
    return await _classify(body, ClassificationParameters(), res)


async def _tag_pixai(body: PixaiRequest, res: Resources) -> list[PixaiTag]:
    inputs = body.inputs
    if (inputs.url is None) == (inputs.image is None):
        raise ApiError(422, "invalid_request", "inputs: give exactly one of url or image")
    if inputs.image is not None:
        data = decode_base64(inputs.image, res.settings.max_upload_bytes)
    else:
        assert inputs.url is not None
        data = await fetch_url(inputs.url, res.settings)
    selected = await run_in_threadpool(_select, res, data, _pixai_policy(res, body.parameters))
    return [PixaiTag(tag=t.tag, score=round(t.score, 6), group=t.group) for t in selected]


async def _classify(
    data: bytes, params: ClassificationParameters, res: Resources
) -> list[ClassificationLabel]:
    selected = await run_in_threadpool(_select, res, data, _classification_policy(res, params))
    return [ClassificationLabel(label=t.tag, score=round(t.score, 6)) for t in selected]


@router.post(
    "/evaluate",
    response_model=list[EvaluateItem],
    response_model_exclude_none=True,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
)
async def evaluate(
    res: Res,
    file: Annotated[list[UploadFile], File(description="One or more images (repeat the field).")],
    threshold: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
    limit: Annotated[int | None, Form(ge=1, le=MAX_EVALUATE_LIMIT)] = None,
    format: Annotated[str | None, Form(description="json (the default) or html.")] = None,
    threshold_in_query: Annotated[float | None, Query(alias="threshold", ge=0.0, le=1.0)] = None,
    limit_in_query: Annotated[int | None, Query(alias="limit", ge=1, le=MAX_EVALUATE_LIMIT)] = None,
    format_in_query: Annotated[str | None, Query(alias="format")] = None,
) -> list[EvaluateItem] | HTMLResponse:
    """Danbooru autotagger's endpoint: multipart `file` (repeatable); `threshold` (0.1),
    `limit` (50) and `format` (`json`, or `html`: autotagger's default, not Sagashi's) in
    the form or the query string, the query string winning as in autotagger (Flask's
    `request.values`).

    json answers `[{"filename", "tags": {tag: score}}]`, by score, with every rating at or
    above the threshold as `rating:g|s|q|e`, as Danbooru reads them; html answers a small
    page of the same. Errors are JSON whatever the format. With several files, one that
    cannot be tagged (not an image, too large) does not fail the others: its item has
    empty `tags` and its `error` (`{"code", "message"}`); one file alone answers the
    error's status, as autotagger does."""
    chosen_format = _given(format_in_query, format) or EVALUATE_FORMAT
    if chosen_format not in EVALUATE_FORMATS:
        raise ApiError(400, "bad_format", f"format must be html or json, not {chosen_format!r}")
    if len(file) > MAX_EVALUATE_FILES:
        raise ApiError(413, "too_large", f"at most {MAX_EVALUATE_FILES} files per request")
    policy = _evaluate_policy(
        res, _given(threshold_in_query, threshold), _given(limit_in_query, limit)
    )
    results = []
    for upload in file:
        name = upload.filename or ""
        try:
            data = await read_upload(upload, res.settings.max_upload_bytes)
            selected = await run_in_threadpool(_select, res, data, policy)
        except ApiError as exc:
            if len(file) == 1 or exc.status not in FILE_ERRORS:
                raise
            error = ErrorDetail(code=exc.code, message=exc.message)
            results.append(EvaluateItem(filename=name, tags={}, error=error))
            continue
        tags = {_danbooru_name(t): round(t.score, 6) for t in selected}
        results.append(EvaluateItem(filename=name, tags=tags))
    if chosen_format == "html":
        return HTMLResponse(render_evaluate_page(results))
    return results


def _given(in_query: T | None, in_form: T | None) -> T | None:
    return in_query if in_query is not None else in_form


# One function per endpoint builds its OutputPolicy, so where defaults come from is
# decided in one place each. Every one applies the tag rules of app.tagrules (the
# contradictions; overlap is for captions, and these answer lists).


def _rules(res: Resources) -> Refinement:
    return refinement(res.settings, overlap=False)


def _pixai_policy(res: Resources, params: PixaiParameters) -> OutputPolicy:
    return OutputPolicy.of(
        res.settings.tag_defaults(),
        top_k=params.top_k,
        threshold_general=params.threshold_general,
        threshold_character=params.threshold_character,
        refine=_rules(res),
    )


def _classification_policy(res: Resources, params: ClassificationParameters) -> OutputPolicy:
    return OutputPolicy.of(res.settings.tag_defaults(), top_k=params.top_k, refine=_rules(res))


def _evaluate_policy(res: Resources, threshold: float | None, limit: int | None) -> OutputPolicy:
    # One threshold for every group, ratings included (all of them, as autotagger lists).
    cut = EVALUATE_THRESHOLD if threshold is None else threshold
    return OutputPolicy(
        top_k=EVALUATE_LIMIT if limit is None else limit,
        threshold_general=cut,
        threshold_character=cut,
        rating_threshold=cut,
        refine=_rules(res),
    )


def _select(res: Resources, data: bytes, policy: OutputPolicy) -> list[TagScore]:
    """The answer of every drop-in endpoint: the policy's tags, by score, at most ``top_k``
    in all (copyrights and ratings included, as Hugging Face's top_k counts: a request for
    5 gets 5, not 5 general and character tags plus their copyrights)."""
    inferred: Inferred = res.inference.infer(data)
    return policy.select(inferred.probs, res.inference.load().vocab)[: policy.top_k]


def _danbooru_name(tag: TagScore) -> str:
    if tag.group == RATING and tag.tag in RATING_TAGS:
        return "rating:" + RATING_LETTERS[RATING_TAGS.index(tag.tag)]
    return tag.tag

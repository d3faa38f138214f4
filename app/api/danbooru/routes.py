"""Danbooru's read API, so the booru tools people already use (gallery-dl, Pybooru,
Grabber, Hydrus) work against Sagashi unchanged: posts, counts, tags, autocomplete, related
tags and IQDB's reverse search, with Danbooru's parameters, limits and error shape
(``contract``). The routes only read parameters; ``service`` and ``tags`` do the work, in
the thread pool (every route here is a plain ``def`` or awaits it there)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.danbooru import service, tags
from app.api.danbooru.contract import (
    AUTOCOMPLETE_LIMIT,
    IQDB_LIMIT,
    MAX_LIMIT,
    RELATED_LIMIT,
    clamped_limit,
    not_found,
    ruby_int,
)
from app.api.errors import ApiError
from app.api.resources import Res, Resources
from app.api.routes import images
from app.api.routes.common import Thresholds
from app.api.uploads import fetch_url, read_upload

router = APIRouter(tags=["danbooru"])

Text = Annotated[str | None, Query(max_length=10_000)]
TRUE = frozenset({"true", "yes", "1", "t", "y", "on"})


def _base(request: Request) -> str:
    return str(request.base_url)


def _post_id(text: str) -> int:
    """A post id from the path; anything else is a missing record, as on Danbooru."""
    if not text.isdigit() or not 0 < int(text) < 2**31:
        raise not_found()
    return int(text)


@router.get("/posts.json")
def posts(
    request: Request,
    res: Res,
    wanted: Thresholds,
    tags: Text = "",
    limit: Text = None,
    page: Text = None,
    md5: Text = None,
    random: Text = None,
    only: Text = None,
) -> Any:
    """Danbooru's post search: `tags` (Sagashi's syntax, Danbooru's plus thresholds),
    `limit` (1-200, default 20), `page` (a number up to 1000, `b<id>` or `a<id>`), `md5`
    (that post alone), `random`, `only` (fields)."""
    base = _base(request)
    if md5:
        return service.shaped(service.post_by_md5(res, md5, wanted, base), only)
    found = service.post_list(
        res, tags or "", limit, page, (random or "").lower() in TRUE, wanted, base
    )
    return [service.shaped(post, only) for post in found]


@router.get("/posts/random.json")
def random_post(
    request: Request, res: Res, wanted: Thresholds, tags: Text = "", only: Text = None
) -> Any:
    """One random post matching `tags`; 404 when none does."""
    return service.shaped(service.random_post(res, tags or "", wanted, _base(request)), only)


@router.get("/posts/{post_id}.json")
def post(request: Request, post_id: str, res: Res, wanted: Thresholds, only: Text = None) -> Any:
    """One post."""
    found = service.post_show(res, _post_id(post_id), wanted, _base(request))
    return service.shaped(found, only)


@router.get("/counts/posts.json")
def count(res: Res, wanted: Thresholds, tags: Text = "") -> Any:
    """`{"counts": {"posts": n}}`: the exact number of posts matching `tags`."""
    return {"counts": {"posts": service.count_posts(res, tags or "", wanted)}}


@router.get("/data/original/{post_id}/{name}", response_class=Response)
def original(post_id: str, name: str, request: Request, res: Res) -> Response:
    """A post's file (`file_url`), named by its md5 as Danbooru's CDN names it."""
    return images.image_file(_post_id(post_id), request, res)


@router.get("/data/preview/{post_id}/{name}", response_class=Response)
async def preview(post_id: str, name: str, request: Request, res: Res) -> Response:
    """A post's thumbnail (`preview_file_url`)."""
    return await images.image_thumb(_post_id(post_id), request, res)


@router.get("/tags.json")
def tag_list(request: Request, res: Res, limit: Text = None, page: Text = None) -> Any:
    """Tags: `search[name_matches]` (`*` wildcards), `search[name]`, `search[category]`,
    `search[hide_empty]`, `search[order]` (`name`, `date`, `count`), `limit`, `page`."""
    search = _search(request)
    return tags.tag_list(res, search, limit, page)


@router.get("/autocomplete.json")
def autocomplete(request: Request, res: Res, limit: Text = None) -> Any:
    """Tag completion: `search[query]`, `search[type]=tag_query`, `limit` (10)."""
    search = _search(request)
    size = clamped_limit(limit, AUTOCOMPLETE_LIMIT, 100)
    return tags.autocomplete(res, search.get("query", ""), search.get("type", ""), size)


@router.get("/related_tag.json")
def related_tag(
    request: Request,
    res: Res,
    wanted: Thresholds,
    query: Text = "",
    category: Text = None,
    limit: Text = None,
) -> Any:
    """Tags that go with a search (`query`), optionally of one `category`."""
    search = _search(request)  # search[query] and search[category] work as well
    text = query or search.get("query", "")
    kind = category or search.get("category") or None
    size = clamped_limit(limit, RELATED_LIMIT, MAX_LIMIT)
    return tags.related(res, text, kind, size, wanted)


IQDB_FIELDS = ("url", "image_url", "file_url", "post_id", "limit", "similarity")


IQDB_FORM: dict[str, Any] = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "url": {"type": "string"},
                        "post_id": {"type": "integer"},
                        "limit": {"type": "integer"},
                        "similarity": {"type": "number"},
                    },
                }
            }
        }
    }
}


@router.get("/iqdb_queries.json")
async def iqdb(request: Request, res: Res, wanted: Thresholds) -> Any:
    """IQDB's reverse search, by our embeddings: `post_id` or `url` (bare or as
    `search[...]`), `limit` (20), `similarity` (the lowest score, 0-100) →
    `[{"post_id", "score", "post"}]`, score = 100 x cosine similarity."""
    return await _iqdb(request, res, wanted)


@router.post("/iqdb_queries.json", openapi_extra=IQDB_FORM)
async def iqdb_upload(request: Request, res: Res, wanted: Thresholds) -> Any:
    """IQDB's reverse search of an uploaded `file` (or `url`, `post_id`), as the GET."""
    return await _iqdb(request, res, wanted)


async def _iqdb(request: Request, res: Resources, wanted: dict[str, float]) -> Any:
    fields, upload = await _iqdb_fields(request)
    sources = [k for k in ("post_id", "url") if fields.get(k)] + (["file"] if upload else [])
    if len(sources) != 1:
        raise ApiError(422, "invalid_request", "give exactly one of post_id, url or a file upload")
    limit = clamped_limit(fields.get("limit"), IQDB_LIMIT, MAX_LIMIT)
    minimum = _number(fields.get("similarity"))
    base = _base(request)
    if fields.get("post_id"):
        post_id = _post_id(fields["post_id"])
        return await run_in_threadpool(
            service.similar_posts, res, limit, minimum, wanted, base, post_id
        )
    data = upload if upload is not None else await fetch_url(fields["url"], res.settings)
    inferred = await run_in_threadpool(res.inference.infer, data)
    return await run_in_threadpool(
        service.similar_posts, res, limit, minimum, wanted, base, None, inferred.embedding
    )


async def _iqdb_fields(request: Request) -> tuple[dict[str, str], bytes | None]:
    """The fields from the query string and (POST) the form, bare or as ``search[...]``;
    ``url`` stands for image_url and file_url too."""
    fields: dict[str, str] = {}
    upload: bytes | None = None
    sources: list[Any] = [request.query_params]
    form = None
    if request.method == "POST":
        form = await request.form(max_files=1, max_fields=30)
        sources.append(form)
    try:
        for source in sources:
            for name in IQDB_FIELDS:
                for key in (name, f"search[{name}]"):
                    value = source.get(key)
                    if isinstance(value, str) and value:
                        fields["url" if name in ("image_url", "file_url") else name] = value
            for key in ("file", "search[file]"):
                value = source.get(key)
                if isinstance(value, UploadFile):
                    upload = await read_upload(value, res_limit(request))
    finally:
        if form is not None:
            await form.close()
    return fields, upload


def _number(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return float(ruby_int(text))


def res_limit(request: Request) -> int:
    limit: int = request.app.state.resources.settings.max_upload_bytes
    return limit


def _search(request: Request) -> dict[str, str]:
    """Danbooru's ``search[...]`` parameters."""
    found: dict[str, str] = {}
    for key, value in request.query_params.items():
        if key.startswith("search[") and key.endswith("]"):
            found[key[len("search[") : -1]] = value
    return found

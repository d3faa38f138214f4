"""The work behind the Danbooru routes, on the search service: a Danbooru request becomes
a :class:`SearchRequest` (page numbers, ``b<id>`` and ``a<id>`` become our cursors and
skips; ``limit`` is clamped as Danbooru clamps it) and the hits become post objects.
Everything here blocks (database, engine): the routes are plain ``def``, run in the
thread pool."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import select

from app.api.danbooru.contract import (
    POSTS_DEFAULT_LIMIT,
    POSTS_MAX_LIMIT,
    Page,
    clamped_limit,
    not_found,
    only_fields,
    select_fields,
)
from app.api.danbooru.posts import build_posts
from app.api.errors import ApiError
from app.api.resources import Resources
from app.query import Order, QueryError, parse
from app.search.paging import Cursor, order_token
from app.search.service import EmptyIndex, Hit, NotFound, SearchRequest
from app.store.models import Image

BY_ID_DESC = Order("id", descending=True)
BY_ID_ASC = Order("id", descending=False)
RANDOM = Order("random", descending=False)


@contextmanager
def query_errors() -> Iterator[None]:
    """Search failures as Danbooru reports them: a bad search is a 422 (Post::SearchError)."""
    try:
        yield
    except QueryError as exc:
        raise ApiError(422, f"query_{exc.code.value}", exc.message, exc.position) from exc
    except NotFound as exc:
        raise not_found() from exc
    except ValueError as exc:
        raise ApiError(422, "bad_request", str(exc)) from exc


def posts_for(
    res: Resources, ids: list[int], wanted: Mapping[str, float], base_url: str
) -> list[dict[str, Any]]:
    """Post objects of these ids, in this order."""
    if not ids:
        return []
    state = res.search.current()
    with res.session() as session:
        found = build_posts(
            session,
            state.catalog,
            state.generation_id,
            ids,
            res.search.thresholds(wanted),
            base_url,
        )
    return [found[i] for i in ids if i in found]


def post_list(
    res: Resources,
    tags: str,
    limit: str | None,
    page: str | None,
    random: bool,
    wanted: Mapping[str, float],
    base_url: str,
) -> list[dict[str, Any]]:
    """``GET /posts.json``: a page of a search, newest first unless the query orders."""
    where = Page.parse(page)
    with query_errors():
        query = parse(tags, max_terms=res.settings.max_query_terms)
    default = min(query.limit, POSTS_MAX_LIMIT) if query.limit else POSTS_DEFAULT_LIMIT
    size = clamped_limit(limit, default, POSTS_MAX_LIMIT)
    request = SearchRequest(tags, size, thresholds=wanted, fixed_limit=True)
    if where.before is not None:  # ids below, newest first, whatever the query orders by
        request = _by_id(request, BY_ID_DESC, where.before)
    elif where.after is not None:  # the lowest ids above, answered newest first
        request = _by_id(request, BY_ID_ASC, where.after)
    else:
        order = RANDOM if random else None
        request = SearchRequest(
            tags, size, thresholds=wanted, order=order, skip=where.skip(size), fixed_limit=True
        )
    ids = _search_ids(res, request)
    if where.after is not None:
        ids.reverse()
    return posts_for(res, ids, wanted, base_url)


def _by_id(request: SearchRequest, order: Order, bound: int) -> SearchRequest:
    cursor = Cursor(order_token(order), float(bound), bound).encode()
    return SearchRequest(
        request.query,
        request.limit,
        cursor,
        thresholds=request.thresholds,
        order=order,
        fixed_limit=True,
    )


def _search_ids(res: Resources, request: SearchRequest) -> list[int]:
    with query_errors():
        try:
            page = res.search.search(request)
        except EmptyIndex:
            return []
    return [hit.id for hit in page.hits]


def post_by_md5(
    res: Resources, md5: str, wanted: Mapping[str, float], base_url: str
) -> dict[str, Any]:
    """``GET /posts.json?md5=``: the one post with this md5 (Danbooru answers it alone)."""
    live = (Image.md5 == md5.strip().lower(), Image.deleted_at.is_(None))
    with res.session() as session:
        image_id = session.scalar(select(Image.id).where(*live).order_by(Image.id).limit(1))
    if image_id is None:
        raise not_found()
    return post_show(res, image_id, wanted, base_url)


def post_show(
    res: Resources, image_id: int, wanted: Mapping[str, float], base_url: str
) -> dict[str, Any]:
    try:
        posts = posts_for(res, [image_id], wanted, base_url)
    except EmptyIndex as exc:
        raise not_found() from exc
    if not posts:
        raise not_found()
    return posts[0]


def random_post(
    res: Resources, tags: str, wanted: Mapping[str, float], base_url: str
) -> dict[str, Any]:
    """``GET /posts/random.json``: one random match; 404 when nothing matches."""
    ids = _search_ids(
        res, SearchRequest(tags, 1, thresholds=wanted, order=RANDOM, fixed_limit=True)
    )
    if not ids:
        raise not_found()
    return posts_for(res, ids, wanted, base_url)[0]


def count_posts(res: Resources, tags: str, wanted: Mapping[str, float]) -> int:
    """``GET /counts/posts.json``: the exact number of matches."""
    with query_errors():
        try:
            return res.search.search(SearchRequest(tags, 1, thresholds=wanted)).count
        except EmptyIndex:
            return 0


def similar_posts(
    res: Resources,
    limit: int,
    minimum: float,
    wanted: Mapping[str, float],
    base_url: str,
    post_id: int | None = None,
    embedding: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """IQDB's answer: ``[{"post_id", "score", "post"}]`` by score, highest first. Our score
    is the embeddings' cosine similarity as 0-100 (``score_of``); a query by post id finds
    the post itself first at 100, as IQDB does."""
    hits: list[Hit] = []
    with query_errors():
        try:
            if post_id is not None:
                if not posts_for(res, [post_id], wanted, base_url):
                    raise not_found()
                hits.append(Hit(post_id, "", 0, 0, 1.0))
            request = SearchRequest(
                "", limit, thresholds=wanted, embedding=embedding, similar_to=post_id
            )
            hits.extend(res.search.search(request).hits)
        except EmptyIndex as exc:
            raise not_found() from exc
    scored = [(hit.id, score_of(hit.similarity or 0.0)) for hit in hits[:limit]]
    scored = [(i, s) for i, s in scored if s >= minimum]
    posts = {post["id"]: post for post in posts_for(res, [i for i, _ in scored], wanted, base_url)}
    return [{"post_id": i, "score": s, "post": posts[i]} for i, s in scored if i in posts]


def score_of(similarity: float) -> float:
    """IQDB's 0-100 score for a cosine similarity: 100 x the similarity, floored at 0 (our
    near-duplicate cut, SAGASHI_DUPLICATE_SIMILARITY 0.98, is a score of 98)."""
    return round(100.0 * max(similarity, 0.0), 2)


def shaped(record: dict[str, Any], only: str | None) -> dict[str, Any]:
    return select_fields(record, only_fields(only))

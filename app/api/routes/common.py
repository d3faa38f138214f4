"""Helpers shared by the routes: threshold parameters, search errors as API errors, and
turning a search page into its JSON body."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Query

from app.api.errors import ApiError
from app.api.resources import Resources
from app.api.schemas import (
    ClosestTag,
    SearchItem,
    SearchResponse,
    TagScoreOut,
    UnknownTagOut,
)
from app.errors import SagashiError
from app.query import QueryError, parse
from app.search import suggest
from app.search.details import tags_of
from app.search.service import EmptyIndex, Page

ThresholdParam = Annotated[
    float | None, Query(ge=0.0, le=1.0, description="Score threshold for this tag group.")
]


def thresholds(
    threshold_general: ThresholdParam = None,
    threshold_character: ThresholdParam = None,
    threshold_copyright: ThresholdParam = None,
    threshold_rating: ThresholdParam = None,
) -> dict[str, float]:
    """Per-group thresholds given in the request (the rest keep their defaults)."""
    given = {
        "general": threshold_general,
        "character": threshold_character,
        "copyright": threshold_copyright,
        "rating": threshold_rating,
    }
    return {group: value for group, value in given.items() if value is not None}


@contextmanager
def search_errors() -> Iterator[None]:
    """Search failures a caller caused, as 4xx errors: Sagashi's own errors go to the
    app's handler with their own status and code; any other ValueError is a bad request."""
    try:
        yield
    except SagashiError:
        raise
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from exc


def page_body(
    res: Resources, page: Page, wanted: dict[str, float], tags_per_item: int
) -> SearchResponse:
    ids = [hit.id for hit in page.hits]
    tags: dict[int, list[TagScoreOut]] = {}
    if ids and tags_per_item:
        state = res.search.current()
        names = state.catalog.names_by_id()
        with res.session() as session:
            found = tags_of(
                session,
                state.generation_id,
                ids,
                res.search.thresholds(wanted),
                tags_per_item,
                names,
            )
        tags = {
            image_id: [TagScoreOut(name=t.name, score=t.score, group=t.group) for t in rows]
            for image_id, rows in found.items()
        }
    items = [
        SearchItem(
            id=hit.id,
            path=hit.path,
            width=hit.width,
            height=hit.height,
            similarity=hit.similarity,
            tags=tags.get(hit.id, []),
        )
        for hit in page.hits
    ]
    return SearchResponse(
        items=items,
        next_cursor=page.next_cursor,
        count=page.count,
        estimated=page.estimated,
        engine=page.engine,
        plan=page.plan,
    )


EMPTY_INDEX_NOTICE = (
    "The index is empty: index a folder with 'sagashi index PATH' (or queue an index job, "
    "POST /api/admin/reindex), and its images appear here."
)


def empty_page(engine: str) -> SearchResponse:
    return SearchResponse(
        items=[],
        next_cursor=None,
        count=0,
        estimated=False,
        engine=engine,
        notice=EMPTY_INDEX_NOTICE,
    )


def unknown_tags(res: Resources, q: str) -> list[UnknownTagOut]:
    """The query's tags the index does not know, with the closest known ones."""
    if not q.strip():
        return []
    try:
        root = parse(q, max_terms=res.settings.max_query_terms).root
        catalog = res.search.catalog()
    except (QueryError, EmptyIndex):
        return []
    return [
        UnknownTagOut(
            tag=item.tag,
            suggestions=[ClosestTag(**vars(s)) for s in item.suggestions],
        )
        for item in suggest.unknown_tags(root, catalog)
    ]


# A route's parameter for the per-group thresholds it was given: ``wanted: Thresholds``.
Thresholds = Annotated[dict[str, float], Depends(thresholds)]

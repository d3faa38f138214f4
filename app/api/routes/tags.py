"""GET /api/tags (autocomplete) and GET /api/tags/{name}/related (co-occurrence)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from app.api.errors import ApiError
from app.api.related import related_tags
from app.api.resources import Res
from app.api.routes.common import Thresholds, search_errors
from app.api.schemas import RelatedResponse, RelatedTag, TagDefaultsOut, TagSuggestion
from app.query.ast import TagTerm
from app.search.service import EmptyIndex

router = APIRouter(tags=["tags"])


def normalise_prefix(text: str) -> str:
    """What a user types to what tags are named: Danbooru's lower case and underscores,
    without a leading negation or or-marker."""
    return text.strip().lstrip("-~").lower().replace(" ", "_")


@router.get("/api/defaults", response_model=TagDefaultsOut)
def tag_defaults(res: Res) -> TagDefaultsOut:
    """The server's default threshold per group and its tag cap, as set by
    SAGASHI_THRESHOLD_* and SAGASHI_TOP_K (the gallery's sliders start from these), and
    whether reverse search by URL is on (SAGASHI_URL_FETCH)."""
    defaults = res.settings.tag_defaults()
    return TagDefaultsOut(
        thresholds=defaults.thresholds(),
        top_k=defaults.top_k,
        url_fetch=res.settings.url_fetch,
    )


@router.get("/api/tags", response_model=list[TagSuggestion])
def autocomplete(
    res: Res,
    prefix: Annotated[str, Query(max_length=200)] = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> list[TagSuggestion]:
    """Tags starting with prefix (or with an alias that does), most used first, with their
    image counts (at the default thresholds) and groups."""
    try:
        catalog = res.search.catalog()
    except EmptyIndex:
        return []
    found = catalog.complete(normalise_prefix(prefix), limit)
    return [
        TagSuggestion(name=name, group=info.group, count=info.count, alias_of=None)
        if alias is None
        else TagSuggestion(name=alias, group=info.group, count=info.count, alias_of=name)
        for name, info, alias in found
    ]


@router.get("/api/tags/{name}/related", response_model=RelatedResponse)
def related(
    res: Res,
    name: Annotated[str, Path(min_length=1, max_length=255)],
    wanted: Thresholds,
    order: Annotated[Literal["frequency", "cosine"], Query()] = "frequency",
    limit: Annotated[int, Query(ge=1, le=500)] = 25,
    sample_size: Annotated[int, Query(alias="sample", ge=10, le=20_000)] = 1000,
) -> RelatedResponse:
    """Tags that co-occur with name, counted on an even sample of its images: frequency is
    the share of those images that carry the other tag; cosine divides the co-occurrence
    by the geometric mean of both tags' counts, favouring specific companions."""
    try:
        catalog = res.search.catalog()
    except EmptyIndex as exc:
        raise ApiError(404, "not_found", f"no tag {name!r} in the index") from exc
    canonical = catalog.aliases.get(name, name)
    info = catalog.lookup(name)
    if info is None or "*" in name:
        raise ApiError(404, "not_found", f"no tag {name!r} in the index")
    with search_errors():
        matches = res.search.matching(TagTerm(canonical), wanted)
    total, sampled, found = related_tags(res, matches, {canonical}, wanted, sample_size)
    rows = [
        RelatedTag(
            name=r.name, group=r.group, count=r.count, frequency=r.frequency, cosine=r.cosine
        )
        for r in found
    ]
    rows.sort(key=lambda r: (-(r.frequency if order == "frequency" else r.cosine), r.name))
    return RelatedResponse(tag=canonical, count=total, sampled=sampled, related=rows[:limit])

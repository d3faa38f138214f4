"""Danbooru's tag endpoints over the tag catalog: ``/tags.json``, ``/autocomplete.json``
and ``/related_tag.json``. Counts are images at the default thresholds (the catalog's);
rating tags are left out, since ratings are no tags on Danbooru but the posts' ``rating``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from app.api.danbooru.contract import (
    CATEGORY,
    CATEGORY_NAMES,
    MAX_LIMIT,
    Page,
    clamped_limit,
)
from app.api.danbooru.service import query_errors
from app.api.related import related_tags
from app.api.resources import Resources
from app.api.routes.tags import normalise_prefix
from app.query import parse
from app.query.ast import And, Node, Or, TagTerm
from app.search.catalog import Catalog, TagInfo
from app.search.service import EmptyIndex
from app.store.models import ModelGeneration

FALSE = frozenset({"false", "no", "0", "f", "n", "off"})
TAG_DEFAULT_LIMIT = 20
RELATED_SAMPLE = 1000


def _named(catalog: Catalog) -> list[tuple[str, TagInfo]]:
    return [(name, info) for name, info in catalog.tags.items() if info.group in CATEGORY]


def tag_json(name: str, info: TagInfo, stamp: str | None) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": name,
        "post_count": info.count,
        "category": CATEGORY[info.group],
        "created_at": stamp,
        "updated_at": stamp,
        "is_deprecated": False,
        "words": [word for word in name.split("_") if word],
    }


def _stamp(res: Resources) -> str | None:
    """When the active generation (the model's tags) entered the index: a tag's dates."""
    with res.session() as session:
        moment = session.scalar(
            select(ModelGeneration.created_at).where(
                ModelGeneration.id == res.search.generation_id()
            )
        )
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return datetime.isoformat(moment, timespec="milliseconds")


def _categories(text: str) -> set[int]:
    wanted = set()
    for item in text.split(","):
        item = item.strip().lower()
        if item.isdigit():
            wanted.add(int(item))
        elif item in CATEGORY_NAMES:
            wanted.add(CATEGORY_NAMES[item])
    return wanted


def _pattern(text: str) -> re.Pattern[str]:
    name = normalise_prefix(text)
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in name), re.DOTALL)


def tag_list(
    res: Resources, search: Mapping[str, str], limit: str | None, page: str | None
) -> list[dict[str, Any]]:
    """``GET /tags.json`` with ``search[name_matches]`` (``*`` wildcards), ``search[name]``
    (a comma list), ``search[category]``, ``search[hide_empty]`` (yes by default, as on
    Danbooru) and ``search[order]`` (``name``, ``date``, ``count``; newest id otherwise)."""
    where = Page.parse(page)
    size = clamped_limit(limit, TAG_DEFAULT_LIMIT, MAX_LIMIT)
    try:
        catalog = res.search.catalog()
    except EmptyIndex:
        return []
    rows = _named(catalog)
    if "name_matches" in search and search["name_matches"].strip():
        pattern = _pattern(search["name_matches"])
        rows = [(n, i) for n, i in rows if pattern.fullmatch(n)]
    if "name" in search and search["name"].strip():
        names = {normalise_prefix(n) for n in search["name"].split(",")}
        rows = [(n, i) for n, i in rows if n in names]
    if "category" in search and search["category"].strip():
        categories = _categories(search["category"])
        rows = [(n, i) for n, i in rows if CATEGORY[i.group] in categories]
    if search.get("hide_empty", "true").strip().lower() not in FALSE:
        rows = [(n, i) for n, i in rows if i.count > 0]
    if where.before is not None or where.after is not None:
        rows = _sequential(rows, where, size)
    else:
        order = search.get("order", "")
        if order == "name":
            rows.sort(key=lambda row: row[0])
        elif order == "count":
            rows.sort(key=lambda row: (-row[1].count, -row[1].id))
        else:  # "date" and the default: newest first
            rows.sort(key=lambda row: -row[1].id)
        start = where.skip(size)
        rows = rows[start : start + size]
    stamp = _stamp(res) if rows else None
    return [tag_json(name, info, stamp) for name, info in rows]


def _sequential(
    rows: list[tuple[str, TagInfo]], where: Page, size: int
) -> list[tuple[str, TagInfo]]:
    if where.before is not None:
        before = where.before
        kept = sorted((r for r in rows if r[1].id < before), key=lambda r: -r[1].id)
        return kept[:size]
    after = where.after or 0
    kept = sorted((r for r in rows if r[1].id > after), key=lambda r: r[1].id)
    return kept[:size][::-1]  # the lowest ids above, newest first, as Danbooru answers


def autocomplete(res: Resources, query: str, kind: str, limit: int) -> list[dict[str, Any]]:
    """``GET /autocomplete.json?search[query]=&search[type]=tag_query``: tags starting
    with the text, or with an alias of it (``antecedent``), most used first."""
    if kind not in ("tag_query", "tag", ""):
        return []
    try:
        catalog = res.search.catalog()
    except EmptyIndex:
        return []
    prefix = normalise_prefix(query)
    if not prefix:
        return []
    found = catalog.complete(prefix, limit * 2)  # room for the rating tags left out
    items = []
    for name, info, alias in found:
        if info.group not in CATEGORY:
            continue
        item: dict[str, Any] = {
            "type": "tag" if alias is None else "tag-alias",
            "label": name.replace("_", " "),
            "value": name,
            "category": CATEGORY[info.group],
            "post_count": info.count,
        }
        if alias is not None:
            item["antecedent"] = alias
        items.append(item)
    return items[:limit]


def _query_tags(node: Node) -> set[str]:
    if isinstance(node, TagTerm):
        return {node.name}
    if isinstance(node, And | Or):
        return set().union(*(_query_tags(child) for child in node.children))
    return set()


def related(
    res: Resources,
    query: str,
    category: str | None,
    limit: int,
    wanted: Mapping[str, float],
) -> dict[str, Any]:
    """``GET /related_tag.json?query=&category=``: the tags that co-occur with a search,
    by cosine similarity, or (with a category) the most frequent of that category, as
    Danbooru's RelatedTagQuery picks them."""
    answer: dict[str, Any] = {
        "query": query,
        "category": category,
        "post_count": 0,
        "tag": None,
        "related_tags": [],
        "wiki_page_tags": [],
        "other_wikis": {},
    }
    if not query.strip():
        return answer
    with query_errors():
        parsed = parse(query, max_terms=res.settings.max_query_terms)
        try:
            catalog = res.search.catalog()
            matches = res.search.matching(parsed.root, wanted)
        except EmptyIndex:
            return answer
    named = {catalog.aliases.get(name, name) for name in _query_tags(parsed.root)}
    total, _sampled, rows = related_tags(res, matches, named, wanted, RELATED_SAMPLE)
    wanted_category = _categories(category) if category else None
    rows = [r for r in rows if r.group in CATEGORY]
    if wanted_category is not None:
        rows = [r for r in rows if CATEGORY[r.group] in wanted_category]
        rows.sort(key=lambda r: (-r.frequency, r.name))
    else:
        rows.sort(key=lambda r: (-r.cosine, r.name))
    stamp = _stamp(res)
    only = next(iter(named)) if len(named) == 1 else None
    single = catalog.tags.get(only) if only is not None else None
    answer["post_count"] = total
    if only is not None and single is not None and single.group in CATEGORY:
        answer["tag"] = tag_json(only, single, stamp)
    answer["related_tags"] = [
        {
            "tag": tag_json(r.name, catalog.tags[r.name], stamp),
            "cosine_similarity": r.cosine,
            "jaccard_similarity": r.jaccard,
            "overlap_coefficient": r.overlap,
            "frequency": r.frequency,
        }
        for r in rows[:limit]
    ]
    return answer

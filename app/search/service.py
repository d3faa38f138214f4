"""One search, end to end: parse, bind to the active generation, execute, fetch paths."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, select

from app.query import ErrorCode, QueryError, parse
from app.search.plan import Catalog, bind
from app.search.sql_engine import execute
from app.store.db import session_factory
from app.store.models import Image, Tag
from app.store.repository import active_generation
from app.tagger.vocab import DEFAULT_THRESHOLDS


class EmptyIndex(Exception):
    """There is no active generation to search."""


@dataclass(frozen=True)
class Hit:
    id: int
    path: str
    width: int
    height: int


def search(
    engine: Engine,
    text: str,
    aliases: Mapping[str, str],
    limit: int = 100,
    thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
) -> tuple[int, list[Hit]]:
    """(total matches, the first ``limit`` hits by id descending, newest first)."""
    query = parse(text)
    for name, value in (("order", query.order), ("similar", query.similar)):
        if value is not None:
            raise QueryError(
                ErrorCode.UNSUPPORTED,
                f"the metatag '{name}:' is not supported by the search engine yet",
                max(0, text.lower().find(f"{name}:")),
            )
    with session_factory(engine)() as session:
        generation = active_generation(session)
        if generation is None:
            raise EmptyIndex("the index is empty; run 'sagashi index' first")
        rows = session.execute(select(Tag.id, Tag.name, Tag.group, Tag.image_count)).all()
        catalog = Catalog.from_rows([(r[0], r[1], r[2], r[3]) for r in rows], aliases)
        ids = execute(session, bind(query.root, catalog, thresholds), generation.id)
        wanted = sorted(ids, reverse=True)[: query.limit or limit]
        found = {
            row.id: Hit(row.id, row.path, row.width, row.height)
            for row in session.execute(
                select(Image.id, Image.path, Image.width, Image.height).where(Image.id.in_(wanted))
            )
        }
    return len(ids), [found[i] for i in wanted if i in found]

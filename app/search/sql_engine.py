"""Engine (a): a bound plan executed as SQL over the inverted table, on SQLite or PostgreSQL.

Each tag term is a range scan of the clustered ``(generation, tag, score, image)`` key; AND,
OR and NOT become INTERSECT, UNION and EXCEPT. Negation is relative to the live images of
the generation (those with an embedding in it: deleted images have none). This engine is the
fallback and the oracle for the in-memory posting engine.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, except_, false, intersect, or_, select, true, union
from sqlalchemy.orm import Session

from app.query.ranges import Range
from app.search.plan import (
    PAll,
    PAnd,
    PAttr,
    PFormat,
    PlanNode,
    PNot,
    PNothing,
    POr,
    PPath,
    PSha,
    PTag,
)
from app.store.models import Embedding, Image, ImageTag


def to_select(plan: PlanNode, generation_id: int, dialect: str = "sqlite") -> Select[Any]:
    """A SELECT of the matching image ids (unordered, distinct)."""
    if isinstance(plan, PAll):
        return select(Embedding.image_id).where(Embedding.generation_id == generation_id)
    if isinstance(plan, PNothing):
        return select(ImageTag.image_id).where(false())
    if isinstance(plan, PTag):
        return _tag(plan, generation_id)
    if isinstance(plan, PAttr | PSha | PFormat | PPath):
        return _image_filter(plan, generation_id, dialect)
    if isinstance(plan, PNot):
        return _flat(
            except_(
                to_select(PAll(), generation_id, dialect),
                to_select(plan.child, generation_id, dialect),
            )
        )
    if isinstance(plan, POr):
        return _flat(union(*(to_select(c, generation_id, dialect) for c in plan.children)))
    assert isinstance(plan, PAnd)
    positives = [
        to_select(c, generation_id, dialect) for c in plan.children if not isinstance(c, PNot)
    ]
    negatives = [
        to_select(c.child, generation_id, dialect) for c in plan.children if isinstance(c, PNot)
    ]
    if not positives:
        positives = [to_select(PAll(), generation_id, dialect)]
    result = positives[0] if len(positives) == 1 else _flat(intersect(*positives))
    if negatives:
        removed = negatives[0] if len(negatives) == 1 else _flat(union(*negatives))
        result = _flat(except_(result, removed))
    return result


def _tag(plan: PTag, generation_id: int) -> Select[Any]:
    score = ImageTag.score
    query = select(ImageTag.image_id).where(
        ImageTag.generation_id == generation_id,
        ImageTag.tag_id == plan.tag_id,
        score >= plan.lo if plan.lo_inclusive else score > plan.lo,
    )
    if plan.hi is not None:
        query = query.where(score <= plan.hi if plan.hi_inclusive else score < plan.hi)
    return query


def _image_filter(
    plan: PAttr | PSha | PFormat | PPath, generation_id: int, dialect: str
) -> Select[Any]:
    live = select(Embedding.image_id).where(Embedding.generation_id == generation_id)
    query = select(Image.id).where(Image.deleted_at.is_(None), Image.id.in_(live))
    if isinstance(plan, PSha):
        return query.where(Image.sha256 == plan.sha256)
    if isinstance(plan, PFormat):
        return query.where(Image.format.in_(sorted(plan.formats)))
    if isinstance(plan, PPath):
        return query.where(_glob(plan.pattern, dialect))
    column = getattr(Image, plan.column)
    return query.where(or_(*(_in_range(column, part) for part in plan.ranges.ranges)))


def _glob(pattern: str, dialect: str) -> Any:
    """The path glob as SQL: SQLite's GLOB is case-sensitive already (only ``[`` needs
    escaping); elsewhere LIKE, case-sensitive on PostgreSQL, with its own characters escaped."""
    if dialect == "sqlite":
        return Image.path.op("GLOB")(pattern.replace("[", "[[]"))
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return Image.path.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _in_range(column: Any, part: Range[int]) -> Any:
    conditions = []
    if part.lo is not None:
        conditions.append(column >= part.lo if part.lo_inclusive else column > part.lo)
    if part.hi is not None:
        conditions.append(column <= part.hi if part.hi_inclusive else column < part.hi)
    return and_(*conditions) if conditions else true()


def _flat(compound: object) -> Select[Any]:
    """Wrap a compound select as a plain one: SQLite rejects a compound select as a member
    of another, so every operand of INTERSECT/UNION/EXCEPT is a plain SELECT."""
    sub = compound.subquery()  # type: ignore[attr-defined]
    return select(sub.c[0])


def execute(session: Session, plan: PlanNode, generation_id: int) -> list[int]:
    """The matching image ids, ascending."""
    bind = session.get_bind()
    sub = to_select(plan, generation_id, bind.dialect.name).subquery()
    column = sub.c[0]
    return [int(i) for i in session.scalars(select(column).distinct().order_by(column)).all()]

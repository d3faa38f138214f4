"""Engine (a): a bound plan executed as SQL over the inverted table, on SQLite or PostgreSQL.

Each tag term is a range scan of the clustered ``(generation, tag, score, image)`` key; AND,
OR and NOT become INTERSECT, UNION and EXCEPT. Negation is relative to the live images of
the generation (those with an embedding in it: deleted images have none). This engine is the
fallback and the oracle for the in-memory posting engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pyroaring import BitMap
from sqlalchemy import (
    Float,
    Select,
    and_,
    cast,
    except_,
    false,
    func,
    intersect,
    or_,
    select,
    true,
    union,
)
from sqlalchemy.orm import Session, aliased

from app.query.ranges import Range
from app.search.engine import Counted, Described
from app.search.epoch import moment_of
from app.search.keys import sql_keys
from app.search.paging import KeySource, Presorted
from app.search.plan import (
    PAll,
    PAnd,
    PAttr,
    PFormat,
    PlanNode,
    PMd5,
    PNot,
    PNothing,
    POr,
    PPath,
    PRating,
    PSha,
    PTag,
    PTagCount,
)
from app.store.models import Embedding, Image, ImageTag, Tag


def to_select(plan: PlanNode, generation_id: int, dialect: str = "sqlite") -> Select[Any]:
    """A SELECT of the matching image ids (unordered, distinct)."""
    if isinstance(plan, PAll):
        return select(Embedding.image_id).where(Embedding.generation_id == generation_id)
    if isinstance(plan, PNothing):
        return select(ImageTag.image_id).where(false())
    if isinstance(plan, PTag):
        return _tag(plan, generation_id)
    if isinstance(plan, PAttr | PSha | PMd5 | PFormat | PPath):
        return _image_filter(plan, generation_id, dialect)
    if isinstance(plan, PRating):
        return _rating(plan, generation_id)
    if isinstance(plan, PTagCount):
        return _tag_count(plan, generation_id)
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
    plan: PAttr | PSha | PMd5 | PFormat | PPath, generation_id: int, dialect: str
) -> Select[Any]:
    live = select(Embedding.image_id).where(Embedding.generation_id == generation_id)
    query = select(Image.id).where(Image.deleted_at.is_(None), Image.id.in_(live))
    if isinstance(plan, PSha):
        return query.where(Image.sha256 == plan.sha256)
    if isinstance(plan, PMd5):
        return query.where(Image.md5 == plan.md5)
    if isinstance(plan, PFormat):
        return query.where(Image.format.in_(sorted(plan.formats)))
    if isinstance(plan, PPath):
        return query.where(_glob(plan.pattern, dialect))
    column, ranges = _attribute(plan)
    return query.where(or_(*(_in_range(column, part) for part in ranges)))


def _attribute(plan: PAttr) -> tuple[Any, list[Range[Any]]]:
    """The SQL expression of an attribute, and the ranges in its terms. Derived values are
    computed in double precision, as the posting engine computes them."""
    ranges: list[Range[Any]] = list(plan.ranges.ranges)
    if plan.column == "mpixels":
        pixels = cast(Image.width, Float(precision=53)) * Image.height
        return pixels / 1_000_000.0, ranges
    if plan.column == "ratio":
        return cast(Image.width, Float(precision=53)) / func.nullif(Image.height, 0), ranges
    if plan.column == "indexed_us":
        return Image.indexed_at, [_as_datetimes(part) for part in ranges]
    return getattr(Image, plan.column), ranges


def _as_datetimes(part: Range[Any]) -> Range[Any]:
    def moment(micros: int | None) -> datetime | None:
        return None if micros is None else moment_of(int(micros))

    return Range(moment(part.lo), moment(part.hi), part.lo_inclusive, part.hi_inclusive)


def _rating(plan: PRating, generation_id: int) -> Select[Any]:
    """An image's rating is the rating tag it scores highest; a tie goes to the milder one,
    so the chosen tag beats the milder ones strictly and the harsher ones or equals them.
    A rating tag below the storage floor has no row and never wins."""
    chosen = []
    for wanted in sorted(plan.wanted):
        tag_id = plan.tag_ids[wanted]
        if tag_id is None:
            continue
        mine = aliased(ImageTag)
        rivals = []
        for index, other_id in enumerate(plan.tag_ids):
            if other_id is None or index == wanted:
                continue
            other = aliased(ImageTag)
            beaten = other.score >= mine.score if index < wanted else other.score > mine.score
            rivals.append(
                select(other.image_id)
                .where(
                    other.generation_id == generation_id,
                    other.tag_id == other_id,
                    other.image_id == mine.image_id,
                    beaten,
                )
                .exists()
            )
        chosen.append(
            select(mine.image_id).where(
                mine.generation_id == generation_id, mine.tag_id == tag_id, *(~r for r in rivals)
            )
        )
    if not chosen:
        return select(ImageTag.image_id).where(false())
    return chosen[0] if len(chosen) == 1 else _flat(union(*chosen))


def _tag_count(plan: PTagCount, generation_id: int) -> Select[Any]:
    """Images whose count of tags above their group's threshold lies in the ranges; images
    with no such tag count zero."""
    counted = or_(
        *(and_(Tag.group == group, ImageTag.score >= threshold) for group, threshold in plan.groups)
    )
    count = (
        select(func.count())
        .select_from(ImageTag)
        .join(Tag, Tag.id == ImageTag.tag_id)
        .where(
            ImageTag.generation_id == generation_id,
            ImageTag.image_id == Embedding.image_id,
            counted,
        )
        .scalar_subquery()
    )
    condition = or_(*(_in_range(count, part) for part in plan.ranges.ranges))
    return select(Embedding.image_id).where(Embedding.generation_id == generation_id, condition)


def _glob(pattern: str, dialect: str) -> Any:
    """The path glob as SQL: SQLite's GLOB is case-sensitive already (only ``[`` needs
    escaping); elsewhere LIKE, case-sensitive on PostgreSQL, with its own characters escaped."""
    if dialect == "sqlite":
        return Image.path.op("GLOB")(pattern.replace("[", "[[]"))
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return Image.path.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _in_range(column: Any, part: Range[Any]) -> Any:
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


@dataclass(frozen=True)
class SqlEngine:
    """Tag queries answered by the database itself: nothing held in memory, always current.
    The oracle the other engines are tested against, and the fallback on small hosts."""

    generation_id: int
    name: str = "sql"

    @classmethod
    def open(cls, session: Session, generation_id: int, data_dir: Path) -> SqlEngine:
        return cls(generation_id)

    def evaluate(self, session: Session, plan: PlanNode) -> BitMap:
        return BitMap(execute(session, plan, self.generation_id))

    def live(self, session: Session) -> BitMap:
        # Deleted images have no embedding: the generation's embeddings are its live images.
        statement = select(Embedding.image_id).where(Embedding.generation_id == self.generation_id)
        return BitMap(session.scalars(statement).all())

    def describe(self, session: Session, image_ids: Sequence[int]) -> dict[int, Described]:
        if not image_ids:
            return {}
        statement = select(Image.id, Image.path, Image.width, Image.height).where(
            Image.id.in_(list(image_ids))
        )
        return {row.id: (row.path, row.width, row.height) for row in session.execute(statement)}

    def keys(self, session: Session, counted: Counted, score_tag: int | None) -> KeySource:
        return sql_keys(session, self.generation_id, counted, score_tag)

    def verify(self, session: Session) -> str | None:
        return None  # the database is the store of record: no files to check

    def presorted(self) -> Presorted | None:
        return None

    def refreshed(self, session: Session) -> SqlEngine:
        return self

    def held_images(self) -> int | None:
        return None

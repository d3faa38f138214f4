"""The tag-engine interface: what the search service asks of the engine that answers tag
queries, and the registry that opens one by name (SAGASHI_SEARCH_ENGINE), chosen once.

An engine belongs to one generation and is current up to some change of the database; the
service asks it for a current one (``refreshed``) at most once a second. Every engine
evaluates the same bound plan (:mod:`app.search.plan`) and must give the same answer: the
SQL engine is the store of record's own answer and the oracle of the others. Adding an engine
(the segment engine, a distributed one) is one class and one line in ``ENGINES``; the service
does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pyroaring import BitMap
from sqlalchemy.orm import Session

from app.search.paging import KeySource, Presorted
from app.search.plan import PlanNode

# (group code, threshold) pairs whose tags an image's tag count counts.
Counted = tuple[tuple[int, float], ...]
# An image as a search page lists it: (path, width, height).
Described = tuple[str, int, int]


class TagEngine(Protocol):
    @property
    def name(self) -> str:
        """Reported with each page: "memory", "sql", ..."""
        ...

    @property
    def generation_id(self) -> int: ...

    def evaluate(self, session: Session, plan: PlanNode) -> BitMap:
        """The live images the plan matches."""
        ...

    def live(self, session: Session) -> BitMap:
        """Every live image of the generation."""
        ...

    def describe(self, session: Session, image_ids: Sequence[int]) -> dict[int, Described]:
        """Path, width and height of the given live images (unknown ids are left out)."""
        ...

    def keys(self, session: Session, counted: Counted, score_tag: int | None) -> KeySource:
        """Sort keys for ``order:`` over given images; the same numbers from every engine."""
        ...

    def presorted(self) -> Presorted | None:
        """Every image already sorted by an attribute order, when the engine has that."""
        ...

    def refreshed(self, session: Session) -> TagEngine:
        """An engine current with the database: this one when nothing changed."""
        ...

    def held_images(self) -> int | None:
        """Live images held in memory, for metrics; None when the engine holds none."""
        ...

    def verify(self, session: Session) -> str | None:
        """Check the files the engine opened whose checks were left for after the start
        (a server runs this once ready); the problem found, after which the engine refuses
        searches until ``refreshed`` rebuilds them, or None."""
        ...


# (session, generation id, data folder): an engine of that generation.
Opener = Callable[[Session, int, Path], TagEngine]


def engines() -> dict[str, Opener]:
    """The engines by the name SAGASHI_SEARCH_ENGINE gives them."""
    # Imported here: each engine module imports this one for the types it shares.
    from app.search.memory_engine import MemoryEngine
    from app.search.segment_engine import SegmentEngine
    from app.search.sql_engine import SqlEngine

    return {"memory": MemoryEngine.open, "segments": SegmentEngine.open, "sql": SqlEngine.open}


def open_engine(kind: str, session: Session, generation_id: int, data_dir: Path) -> TagEngine:
    try:
        opener = engines()[kind]
    except KeyError:
        raise ValueError(
            f"unknown search engine {kind!r}; choose from {sorted(engines())}"
        ) from None
    return opener(session, generation_id, data_dir)

"""The in-memory posting engine behind the tag-engine interface: the generation's postings,
attributes and prebuilt bitmaps loaded from the database (app.search.postings), kept current
from the change log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyroaring import BitMap
from sqlalchemy.orm import Session

from app.search.engine import Counted, Described
from app.search.keys import posting_keys, posting_presorted
from app.search.paging import KeySource, Presorted
from app.search.plan import PlanNode
from app.search.postings import PostingEngine


class PostingBacked:
    """The tag-engine methods of any engine that answers from a posting engine in memory
    (loaded from the database, or mapped from segment files)."""

    postings: PostingEngine

    @property
    def generation_id(self) -> int:
        return self.postings.generation_id

    def evaluate(self, session: Session, plan: PlanNode) -> BitMap:
        return self.postings.evaluate(plan)

    def live(self, session: Session) -> BitMap:
        return self.postings.live

    def describe(self, session: Session, image_ids: Sequence[int]) -> dict[int, Described]:
        return self.postings.describe(image_ids)

    def keys(self, session: Session, counted: Counted, score_tag: int | None) -> KeySource:
        return posting_keys(self.postings, counted, score_tag)

    def presorted(self) -> Presorted | None:
        return posting_presorted(self.postings)

    def held_images(self) -> int | None:
        return len(self.postings.live)

    def verify(self, session: Session) -> str | None:
        return None  # read from the database: no files to check


@dataclass(frozen=True)
class MemoryEngine(PostingBacked):
    postings: PostingEngine
    name: str = "memory"

    @classmethod
    def open(cls, session: Session, generation_id: int, data_dir: Path) -> MemoryEngine:
        return cls(PostingEngine.load(session, generation_id))

    def refreshed(self, session: Session) -> MemoryEngine:
        current = self.postings.refresh(session)
        return self if current is self.postings else MemoryEngine(current)

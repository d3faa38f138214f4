"""Tags that co-occur with a search, counted over an even sample of its matches: the one
computation behind ``GET /api/tags/{name}/related`` and Danbooru's ``/related_tag.json``.

With ``n`` matches, a tag of ``c`` images seen on ``k`` of ``s`` sampled matches overlaps an
estimated ``o = k n / s`` of them: frequency ``k / s``, cosine ``o / sqrt(n c)``, Jaccard
``o / (n + c - o)`` and the overlap coefficient ``o / min(n, c)`` (each at most 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pyroaring import BitMap

from app.api.resources import Resources
from app.search.details import co_occurrences, sample


@dataclass(frozen=True)
class Related:
    name: str
    group: str
    count: int
    frequency: float
    cosine: float
    jaccard: float
    overlap: float


def related_tags(
    res: Resources,
    matches: BitMap,
    exclude: set[str],
    wanted: Mapping[str, float] | None,
    sample_size: int,
) -> tuple[int, int, list[Related]]:
    """(matches, sampled, the co-occurring tags other than ``exclude``), unordered."""
    catalog = res.search.catalog()
    levels = res.search.thresholds(wanted)
    ids = sample(list(matches), sample_size)
    with res.session() as session:
        counts, groups = co_occurrences(
            session, res.search.generation_id(), ids, levels, catalog.names_by_id()
        )
    total, sampled = len(matches), len(ids)
    rows = []
    for other, together in counts.items():
        tag = catalog.lookup(other)
        if other in exclude or tag is None:
            continue
        overlap = together * total / sampled
        size = max(tag.count, 1)
        rows.append(
            Related(
                name=other,
                group=groups[other],
                count=tag.count,
                frequency=round(together / sampled, 6),
                cosine=round(min(1.0, overlap / math.sqrt(max(total, 1) * size)), 6),
                jaccard=round(min(1.0, overlap / max(total + size - overlap, 1)), 6),
                overlap=round(min(1.0, overlap / max(min(total, size), 1)), 6),
            )
        )
    return total, sampled, rows

"""Pages found by walking presorted images equal pages found by sorting every match, in
both directions, through whole cursor chains, with many tied keys and at several
densities of the match set."""

from __future__ import annotations

import numpy as np
import pytest
from pyroaring import BitMap

from app.query import Order
from app.search.paging import Cursor, page


def _chain(matches: BitMap, order: Order, limit: int, keys, presorted) -> list[int]:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    cursor = None
    for _ in range(10_000):
        found = page(matches, order, limit, cursor, keys, 0, presorted)
        seen += found.ids
        if found.next_cursor is None:
            return seen
        cursor = Cursor.decode(found.next_cursor, order)
    raise AssertionError("the chain did not end")


@pytest.mark.parametrize("share", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("limit", [1, 7, 40])
def test_walking_presorted_images_pages_like_sorting(
    share: float, descending: bool, limit: int
) -> None:
    rng = np.random.default_rng(int(share * 100) + limit)
    ids = np.sort(rng.choice(np.arange(1, 20_000, dtype=np.uint32), 3000, replace=False))
    values = rng.integers(0, 40, len(ids)).astype(np.float64)  # many ties
    by_id = dict(zip(ids.tolist(), values.tolist(), strict=True))
    order_index = np.lexsort((ids, values))
    ready = (ids[order_index], values[order_index])
    matches = BitMap(rng.choice(ids, int(share * len(ids)), replace=False).tolist())
    order = Order("filesize", descending)

    def keys(_order: Order, wanted: np.ndarray) -> np.ndarray:
        return np.array([by_id[int(i)] for i in wanted], dtype=np.float64)

    walked = _chain(matches, order, limit, keys, lambda _order: ready)
    sorted_ = _chain(matches, order, limit, keys, None)
    assert walked == sorted_
    assert sorted(walked) == sorted(matches)

"""The metatag registries stay in step: every metatag the parser knows has a value reader,
and every one that filters has a binding (the singletons are the service's)."""

from __future__ import annotations

from app.query.metatags import _READERS, KNOWN_METATAGS, SINGLETON_METATAGS
from app.search.metatags import METATAGS


def test_every_known_metatag_is_read_and_bound() -> None:
    assert set(_READERS) | {"limit"} == KNOWN_METATAGS
    assert set(METATAGS) == KNOWN_METATAGS - SINGLETON_METATAGS

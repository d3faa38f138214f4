"""The fast subset's list of slow tests names tests that exist: a renamed test must not
silently fall back into `pytest -m "not slow"`."""

from __future__ import annotations

import re

from tests.support.paths import TESTS
from tests.support.slow import SLOW_MODULES, SLOW_TESTS


def test_every_slow_module_and_test_exists() -> None:
    for module in SLOW_MODULES:
        assert (TESTS / module).is_file(), module
    for entry in SLOW_TESTS:
        module, name = entry.split("::")
        source = (TESTS / module).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.MULTILINE), entry

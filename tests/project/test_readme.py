"""The README stays true: it is the front page, CI runs exactly its test command, and it
points a newcomer at the code in one hop. The commands and settings it used to list are in
the generated references, checked by tests/project/test_docs.py."""

from __future__ import annotations

import re

from tests.support.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"\*\*Test\*\*.*?```sh\n(.+?)\n```", README, flags=re.S)
    assert len(blocks) == 1
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert blocks[0] in ci, "the README's test command must be a line of .ci/run"


def test_the_readme_is_a_front_page() -> None:
    assert len(README) < 12_000, "the README is the front page: details belong in docs/"


def test_the_readme_says_where_the_code_lives() -> None:
    """A newcomer given only the README finds the parser, the planner, each engine and how
    to add a metatag in one hop."""
    for needle in (
        "app/query/parser.py",
        "app/search/binder.py",
        "app/search/plan.py",
        "app/search/segment_engine.py",
        "app/search/memory_engine.py",
        "app/search/sql_engine.py",
        "docs/architecture.md#how-to-add-a-metatag",
    ):
        assert needle in README, f"the README should name {needle}"

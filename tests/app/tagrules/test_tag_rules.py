"""The tag rules every output applies (app/tagrules): tables of (scores -> kept tags) for
contradictions and overlap, the shipped rules file, rules files with errors, the output
policy that applies them before top_k, and the image page's listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.store.aliases import load_aliases
from app.tagger.policy import OutputPolicy, TagScore
from app.tagger.vocab import TagVocabulary
from app.tagrules import (
    Drop,
    Edge,
    Implications,
    Refinement,
    RulesError,
    TagRules,
    load_exclusions,
    load_rules,
    parse_exclusions,
)
from app.tagrules.listing import ListedTag, list_tags
from tests.support.paths import shared_path

SHIPPED = load_rules(aliases=load_aliases())


def kept(
    scores: dict[str, float], *, overlap: bool = False, contradictions: bool = True
) -> set[str]:
    pairs = list(scores.items())
    return {n for n, _ in SHIPPED.kept(pairs, overlap=overlap, contradictions=contradictions)}


# (scores of the tags at or above their thresholds) -> the tags a list keeps
CONTRADICTIONS = [
    ({"1girl": 0.9, "2girls": 0.4}, {"1girl"}),
    ({"1girl": 0.4, "2girls": 0.9, "multiple_girls": 0.8}, {"2girls", "multiple_girls"}),
    ({"1girl": 0.85, "2girls": 0.9, "multiple_girls": 0.8}, {"2girls", "multiple_girls"}),
    ({"1girl": 0.95, "2girls": 0.9, "multiple_girls": 0.8}, {"1girl"}),
    ({"2girls": 0.6, "3girls": 0.7, "multiple_girls": 0.9}, {"3girls", "multiple_girls"}),
    # each rule judges the same tags: 1girl loses to multiple_girls, 2girls to 3girls
    (
        {"1girl": 0.6, "2girls": 0.5, "3girls": 0.55, "multiple_girls": 0.7},
        {"3girls", "multiple_girls"},
    ),
    ({"solo": 0.9, "multiple_girls": 0.5, "1girl": 0.8}, {"solo", "1girl"}),
    ({"solo": 0.5, "multiple_boys": 0.9, "1girl": 0.8}, {"multiple_boys", "1girl"}),
    ({"1girl": 0.9, "1boy": 0.8, "solo": 0.6}, {"1girl", "1boy", "solo"}),  # no rule
    ({"no_humans": 0.7, "1girl": 0.6}, {"no_humans"}),
    ({"no_humans": 0.5, "1girl": 0.6, "solo": 0.6}, {"1girl", "solo"}),
    (
        {"long_hair": 0.9, "very_long_hair": 0.6, "short_hair": 0.5},
        {"long_hair", "very_long_hair"},
    ),
    (
        {"short_hair": 0.7, "very_short_hair": 0.4, "medium_hair": 0.5},
        {"short_hair", "very_short_hair"},
    ),
    ({"indoors": 0.5, "outdoors": 0.5}, {"indoors"}),  # a tie goes to the name first sorted
    ({"smile": 0.9, "blush": 0.8}, {"smile", "blush"}),
    ({}, set()),
]


@pytest.mark.parametrize(("scores", "expected"), CONTRADICTIONS)
def test_contradictions(scores: dict[str, float], expected: set[str]) -> None:
    assert kept(scores) == expected
    assert kept(scores, contradictions=False) == set(scores)


OVERLAP = [
    ({"plaid_skirt": 0.9, "skirt": 0.4}, {"plaid_skirt"}),
    ({"plaid_skirt": 0.4, "skirt": 0.9}, {"plaid_skirt"}),  # specific beats likely
    ({"skirt": 0.9}, {"skirt"}),
    # a chain: absurdly_long_hair -> very_long_hair -> long_hair
    ({"long_hair": 0.9, "very_long_hair": 0.8, "absurdly_long_hair": 0.5}, {"absurdly_long_hair"}),
    ({"long_hair": 0.9, "very_long_hair": 0.8}, {"very_long_hair"}),
    ({"2girls": 0.9, "multiple_girls": 0.9}, {"2girls"}),
    (
        {"plaid_skirt": 0.9, "plaid": 0.5, "skirt": 0.6, "smile": 0.7},
        {"plaid_skirt", "plaid", "smile"},
    ),
]


@pytest.mark.parametrize(("scores", "expected"), OVERLAP)
def test_overlap(scores: dict[str, float], expected: set[str]) -> None:
    assert kept(scores, overlap=True) == expected
    assert kept(scores, overlap=False) == set(scores)


def test_overlap_comes_after_contradictions() -> None:
    # 1girl beats 2girls, so 2girls does not drop multiple_girls... which 1girl contradicts
    scores = {"1girl": 0.95, "2girls": 0.6, "multiple_girls": 0.5, "plaid_skirt": 0.9, "skirt": 0.8}
    assert SHIPPED.drops(list(scores.items()), overlap=True) == {
        "2girls": Drop("contradiction", "1girl"),
        "multiple_girls": Drop("contradiction", "1girl"),
        "skirt": Drop("overlap", "plaid_skirt"),
    }


def test_tags_that_imply_each_other_both_stay() -> None:
    rules = TagRules(Implications.of([Edge("a", "b"), Edge("b", "a"), Edge("c", "a")]))
    assert rules.kept([("a", 0.9), ("b", 0.8)], overlap=True) == [("a", 0.9), ("b", 0.8)]
    assert rules.kept([("a", 0.9), ("b", 0.8), ("c", 0.1)], overlap=True) == [("c", 0.1)]


def test_old_names_are_aliased() -> None:
    rules = TagRules(
        Implications.of([Edge("donut", "food")]),
        parse_exclusions("donut | bagel\n"),
        {"doughnut": "donut"},
    )
    scores = [("doughnut", 0.9), ("food", 0.5), ("bagel", 0.6)]
    assert rules.kept(scores, overlap=True) == [("doughnut", 0.9)]


def test_the_shipped_rules_name_tags_of_both_models() -> None:
    pixai = shared_path("tags", "pixai_v0.9_tags_v0.9_13k.json")
    wd = shared_path("tags", "wd_v3_selected_tags.csv")
    from indexer.build_aliases import vocabulary

    rules = load_exclusions()
    assert len(rules) >= 8
    for path in (pixai, wd):
        names = vocabulary(path)
        for rule in rules:
            assert rule.tags() <= names, (path.name, rule.line, rule.tags() - names)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1girl | 2girls\nsolo\n", "rules.txt, line 2: a rule needs at least two alternatives"),
        ("\n# c\n1girl |\n", "rules.txt, line 3: an empty alternative"),
        ("| 1girl 2girls\n", "rules.txt, line 1: an empty alternative"),
        ("a | | b\n", "rules.txt, line 1: an empty alternative"),
        ("a b | c a\n", "rules.txt, line 1: 'a' is in two alternatives of one rule"),
        ("a | b  # trailing\nc d\n", "rules.txt, line 2: a rule needs at least two"),
    ],
)
def test_rules_files_with_errors_say_the_line(text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_exclusions(text, "rules.txt")
    assert str(caught.value).startswith(message)


def test_rules_file_format() -> None:
    rules = parse_exclusions(
        "# one rule per line\n\n1Girl 1girl | |_| x # comment\n  a  |  b | c\n#x | y\n"
    )
    assert [r.line for r in rules] == [3, 4]
    assert rules[0].alternatives == (frozenset({"1girl"}), frozenset({"|_|", "x"}))
    assert rules[1].alternatives == (frozenset({"a"}), frozenset({"b"}), frozenset({"c"}))


def test_a_users_rules_file_replaces_the_shipped_one(tmp_path: Path) -> None:
    mine = tmp_path / "rules.txt"
    mine.write_text("smile | frown\n")
    rules = load_rules(exclusion_file=mine)
    assert rules.kept([("smile", 0.5), ("frown", 0.6), ("1girl", 0.9), ("2girls", 0.8)]) == [
        ("frown", 0.6),
        ("1girl", 0.9),
        ("2girls", 0.8),
    ]
    mine.write_bytes(b"\xff\xfe")
    with pytest.raises(RulesError, match="unreadable rules file"):
        load_rules(exclusion_file=mine)


def test_the_policy_applies_the_rules_before_top_k() -> None:
    names = ("1girl", "2girls", "multiple_girls", "plaid_skirt", "skirt", "smile", "hatsune_miku")
    vocab = TagVocabulary(names, np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.int8))
    probs = np.array([0.5, 0.9, 0.8, 0.7, 0.6, 0.4, 0.95], dtype=np.float32)
    caption = Refinement(SHIPPED, overlap=True)
    listing = Refinement(SHIPPED, overlap=False)

    def chosen(refine: Refinement | None, top_k: int = 128) -> list[str]:
        policy = OutputPolicy(top_k=top_k, threshold_character=0.5, refine=refine)
        return [t.tag for t in policy.select(probs, vocab)]

    assert chosen(None) == [
        "hatsune_miku",
        "2girls",
        "multiple_girls",
        "plaid_skirt",
        "skirt",
        "1girl",
        "smile",
    ]
    assert chosen(listing) == [
        "hatsune_miku",
        "2girls",
        "multiple_girls",
        "plaid_skirt",
        "skirt",
        "smile",
    ]
    # 2girls implies multiple_girls, plaid_skirt skirt
    assert chosen(caption) == ["hatsune_miku", "2girls", "plaid_skirt", "smile"]
    assert chosen(caption, top_k=3) == ["hatsune_miku", "2girls", "plaid_skirt"]
    # The store's path (sagashi export) chooses the same tags from the same scores.
    stored = [
        TagScore(n, float(p), vocab.group(i))
        for i, (n, p) in enumerate(zip(names, probs, strict=True))
    ]
    policy = OutputPolicy(threshold_character=0.5, refine=caption)
    assert sorted(t.tag for t in policy.choose(stored, 0.75)) == sorted(chosen(caption))


def test_the_image_page_listing() -> None:
    table = Implications.of([Edge("plaid_skirt", "skirt"), Edge("plaid_skirt", "plaid")])
    rules = TagRules(table, parse_exclusions("1girl | 2girls multiple_girls\n"))
    stored = [
        ("plaid_skirt", 0.9, "general"),
        ("1girl", 0.8, "general"),
        ("2girls", 0.5, "general"),
        ("skirt", 0.2, "general"),
        ("smile", 0.1, "general"),
    ]
    groups = {"plaid": "general", "skirt": "general", "smile": "general"}
    thresholds = {"general": 0.3, "character": 0.75, "copyright": 0.75, "rating": 0.5}
    listed = list_tags(stored, thresholds, groups.get, table, Refinement(rules, overlap=True))
    assert listed == [
        ListedTag("plaid_skirt", 0.9, "general", True),
        ListedTag("1girl", 0.8, "general", True),
        ListedTag("2girls", 0.5, "general", True, None, Drop("contradiction", "1girl")),
        ListedTag("skirt", 0.2, "general", True, "plaid_skirt", Drop("overlap", "plaid_skirt")),
        ListedTag("smile", 0.1, "general", False),
        ListedTag("plaid", 0.0, "general", True, "plaid_skirt", Drop("overlap", "plaid_skirt")),
    ]
    plain = list_tags(stored, thresholds, groups.get, None, None)
    assert [t.confident for t in plain] == [True, True, True, False, False]
    high = list_tags(stored, {**thresholds, "general": 0.95}, groups.get, table, None)
    assert not any(t.confident for t in high) and len(high) == 5

"""The PixAI card's output policy and Danbooru-style captions."""

from __future__ import annotations

import numpy as np
import pytest

from app.tagger.caption import format_caption
from app.tagger.policy import OutputPolicy, TagScore
from app.tagger.vocab import GROUP_CODE, TagVocabulary

NAMES = (
    "1girl",
    "solo",
    "doughnut",
    "^_^",
    "smile",
    "hu_tao_(genshin_impact)",
    "amiya_(arknights)",
    "surtr_(arknights)",
    "general",
    "sensitive",
    "questionable",
    "explicit",
)
GROUPS = ["general"] * 5 + ["character"] * 3 + ["rating"] * 4
VOCAB = TagVocabulary(
    NAMES,
    np.array([GROUP_CODE[g] for g in GROUPS], dtype=np.int8),
    {
        "hu_tao_(genshin_impact)": ("genshin_impact",),
        "amiya_(arknights)": ("arknights",),
        "surtr_(arknights)": ("arknights",),
    },
)
PROBS = np.array(
    [0.97, 0.30, 0.12, 0.45, 0.29, 0.99, 0.74, 0.80, 0.2, 0.7, 0.05, 0.01], dtype=np.float32
)


def tags(policy: OutputPolicy) -> list[tuple[str, str]]:
    return [(t.tag, t.group) for t in policy.select(PROBS, VOCAB)]


def test_card_defaults() -> None:
    policy = OutputPolicy()
    assert (policy.top_k, policy.threshold_general, policy.threshold_character) == (128, 0.30, 0.75)
    assert tags(policy) == [
        ("hu_tao_(genshin_impact)", "character"),
        ("genshin_impact", "copyright"),
        ("1girl", "general"),
        ("surtr_(arknights)", "character"),
        ("arknights", "copyright"),
        ("sensitive", "rating"),
        ("^_^", "general"),
        ("solo", "general"),  # 0.30 >= 0.30: thresholds are inclusive
    ]


def test_copyright_takes_its_best_characters_score() -> None:
    policy = OutputPolicy(threshold_character=0.7)
    result = {t.tag: t for t in policy.select(PROBS, VOCAB)}
    assert result["arknights"].score == pytest.approx(0.80)
    assert result["genshin_impact"].score == pytest.approx(0.99)
    assert result["amiya_(arknights)"].group == "character"


def test_coverage_preset_lowers_only_general() -> None:
    policy = OutputPolicy.preset("coverage")
    assert (policy.threshold_general, policy.threshold_character) == (0.10, 0.75)
    assert ("doughnut", "general") in tags(policy)
    assert ("smile", "general") in tags(policy)
    assert ("amiya_(arknights)", "character") not in tags(policy)


def test_top_k_counts_general_and_character_tags() -> None:
    result = tags(OutputPolicy(top_k=2))
    assert [t for t in result if t[1] in ("general", "character")] == [
        ("hu_tao_(genshin_impact)", "character"),
        ("1girl", "general"),
    ]
    assert ("genshin_impact", "copyright") in result


def test_allow_and_deny_lists() -> None:
    denied = tags(OutputPolicy(deny=frozenset({"1girl", "genshin_impact"})))
    assert ("1girl", "general") not in denied
    assert ("genshin_impact", "copyright") not in denied
    assert ("hu_tao_(genshin_impact)", "character") in denied
    allowed = tags(OutputPolicy(allow=frozenset({"solo", "surtr_(arknights)", "arknights"})))
    assert allowed == [
        ("surtr_(arknights)", "character"),
        ("arknights", "copyright"),
        ("solo", "general"),
    ]


def test_rating_is_the_most_likely_one() -> None:
    result = OutputPolicy().select(PROBS, VOCAB)
    assert [t.tag for t in result if t.group == "rating"] == ["sensitive"]
    assert [
        t.tag
        for t in OutputPolicy(include_rating=False).select(PROBS, VOCAB)
        if t.group == "rating"
    ] == []


def test_a_rating_threshold_keeps_every_rating_at_or_above_it() -> None:
    def ratings(policy: OutputPolicy) -> list[str]:
        return [t.tag for t in policy.select(PROBS, VOCAB) if t.group == "rating"]

    # 0.7, 0.2 and 0.05 (inclusive, as the other thresholds); explicit's 0.01 is below.
    assert ratings(OutputPolicy(rating_threshold=0.05)) == ["sensitive", "general", "questionable"]
    assert ratings(OutputPolicy(rating_threshold=0.8)) == []
    assert ratings(OutputPolicy(rating_threshold=0.0, deny=frozenset({"general"}))) == [
        "sensitive",
        "questionable",
        "explicit",
    ]
    with pytest.raises(ValueError, match="rating_threshold must be between 0 and 1"):
        OutputPolicy(rating_threshold=1.5)


def test_results_are_sorted_by_score_and_shaped_like_the_card() -> None:
    result = OutputPolicy().select(PROBS, VOCAB)
    scores = [t.score for t in result]
    assert scores == sorted(scores, reverse=True)
    assert result[0].as_dict() == {
        "tag": "hu_tao_(genshin_impact)",
        "score": pytest.approx(0.99),
        "group": "character",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"threshold_general": 1.5}, "threshold_general must be between 0 and 1"),
        ({"threshold_character": -0.1}, "threshold_character must be between 0 and 1"),
    ],
)
def test_invalid_policy(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutputPolicy(**kwargs)  # type: ignore[arg-type]


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'fast'; choose from default, coverage"):
        OutputPolicy.preset("fast")


CAPTION_TAGS = [
    TagScore("1girl", 0.97, "general"),
    TagScore("long_hair", 0.8, "general"),
    TagScore("^_^", 0.5, "general"),
    TagScore("hu_tao_(genshin_impact)", 0.99, "character"),
    TagScore("genshin_impact", 0.99, "copyright"),
    TagScore("sensitive", 0.7, "rating"),
]


def test_caption_orders_character_copyright_general_and_drops_rating() -> None:
    assert format_caption(CAPTION_TAGS) == (
        "hu tao (genshin impact), genshin impact, 1girl, long hair, ^_^"
    )
    assert format_caption(CAPTION_TAGS, underscores=True) == (
        "hu_tao_(genshin_impact), genshin_impact, 1girl, long_hair, ^_^"
    )
    assert format_caption(CAPTION_TAGS, order=("general",)) == "1girl, long hair, ^_^"


def test_empty_tag_names_are_never_reported() -> None:
    vocab = TagVocabulary(("1girl", ""), np.array([0, 0], dtype=np.int8), {})
    result = OutputPolicy().select(np.array([0.9, 0.99], dtype=np.float32), vocab)
    assert [t.tag for t in result] == ["1girl"]

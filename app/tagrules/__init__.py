"""Relations between tags, applied at query time and to every list of an image's tags:
Danbooru's implications (:mod:`.implications`), mutually exclusive tags
(:mod:`.exclusions`), and the one function that decides what a list drops (:mod:`.refine`).
"""

from app.tagrules.exclusions import Exclusion, load_exclusions, parse_exclusions
from app.tagrules.implications import (
    Edge,
    Implications,
    RulesError,
    load_implications,
    parse_implications,
)
from app.tagrules.refine import Drop, Refinement, TagRules, load_rules

__all__ = [
    "Drop",
    "Edge",
    "Exclusion",
    "Implications",
    "Refinement",
    "RulesError",
    "TagRules",
    "load_exclusions",
    "load_implications",
    "load_rules",
    "parse_exclusions",
    "parse_implications",
]

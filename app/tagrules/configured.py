"""The tag rules the settings ask for, made once per process: the entry points (CLI
commands, the server, the worker) take them from here.

Kept apart from the package's ``__init__`` because it reads :class:`app.settings.Settings`,
which the tagger's policy (an importer of :mod:`app.tagrules.refine`) must not import.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from app.settings import Settings
from app.store.aliases import AliasError, load_aliases
from app.tagrules.implications import Implications, RulesError
from app.tagrules.refine import Refinement, TagRules, load_rules


def tag_rules(settings: Settings) -> TagRules:
    """Implications (the shipped table plus SAGASHI_IMPLICATION_FILE) and exclusive tags
    (SAGASHI_EXCLUSION_FILE, else the shipped file). Raises RulesError with the file and
    line of a bad rule."""
    return _rules(settings.implication_file, settings.exclusion_file, settings.alias_file)


@cache
def _rules(
    implication_file: Path | None, exclusion_file: Path | None, alias_file: Path | None
) -> TagRules:
    try:
        aliases = load_aliases(alias_file)
    except AliasError as exc:
        raise RulesError(str(exc)) from exc
    return load_rules(implication_file, exclusion_file, aliases)


def search_implications(settings: Settings) -> Implications | None:
    """The implication table search applies; None when SAGASHI_IMPLICATIONS is off."""
    return tag_rules(settings).implications if settings.implications else None


def refinement(
    settings: Settings,
    *,
    overlap: bool,
    contradictions: bool = True,
    exclusion_file: Path | None = None,
) -> Refinement:
    """The rules of one output: overlap on for captions, off for JSON lists; an
    ``exclusion_file`` given to the command replaces the setting's."""
    rules = tag_rules(settings)
    if exclusion_file is not None:
        rules = _rules(settings.implication_file, exclusion_file, settings.alias_file)
    return Refinement(rules, overlap=overlap, contradictions=contradictions)

"""The default score thresholds and tag cap: one table, read from settings by every consumer.

The values here are the PixAI model card's (general 0.30, character 0.75, top_k 128);
copyright follows its character's threshold and rating is 0.5. ``SAGASHI_THRESHOLD_*`` and
``SAGASHI_TOP_K`` override them, and ``Settings.tag_defaults()`` hands the result to
``sagashi tag``, ``sagashi export``, search (CLI, API and the web gallery, which reads them
from ``GET /api/defaults``) and the drop-in tagging endpoints. A request's own thresholds
still win over these.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.tagger.vocab import CHARACTER, COPYRIGHT, GENERAL, RATING


@dataclass(frozen=True)
class TagDefaults:
    general: float = 0.30
    character: float = 0.75
    copyright: float = 0.75
    rating: float = 0.5
    top_k: int = 128

    def thresholds(self) -> dict[str, float]:
        """Per group, as search, tag counts and the sliders use them."""
        return {
            GENERAL: self.general,
            CHARACTER: self.character,
            COPYRIGHT: self.copyright,
            RATING: self.rating,
        }


CARD = TagDefaults()
"""The model card's values: what a setting left unset means."""

"""The tagger: PixAI Tagger v0.9 and WD v3 EVA02-Large, loaded offline from a directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.tagger.errors import ImageDecodeError, ModelLoadError
from app.tagger.policy import OutputPolicy, TagScore
from app.tagger.protocol import ModelInfo, Prediction, Tagger

if TYPE_CHECKING:
    from app.tagger.timm_tagger import TimmTagger


def __getattr__(name: str) -> Any:
    # torch and timm take seconds to import: only the commands that run a model pay for them
    # ('sagashi search' or '--help' start without them).
    if name == "TimmTagger":
        from app.tagger.timm_tagger import TimmTagger

        return TimmTagger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ImageDecodeError",
    "ModelInfo",
    "ModelLoadError",
    "OutputPolicy",
    "Prediction",
    "TagScore",
    "Tagger",
    "TimmTagger",
]

"""The tagger: PixAI Tagger v0.9 and WD v3 EVA02-Large, loaded offline from a directory."""

from app.tagger.errors import ImageDecodeError, ModelLoadError
from app.tagger.policy import OutputPolicy, TagScore
from app.tagger.protocol import ModelInfo, Prediction, Tagger
from app.tagger.timm_tagger import TimmTagger

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

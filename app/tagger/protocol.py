"""The swappable tagger interface the indexer and the service program against."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from app.tagger.errors import ImageDecodeError
from app.tagger.preprocess import ImagePreprocess
from app.tagger.vocab import TagVocabulary

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelInfo:
    """Identifies what produced a set of scores and embeddings (a model generation)."""

    name: str
    family: str
    vocabulary_digest: str
    embedding_dim: int
    num_tags: int
    preprocess: ImagePreprocess
    layout: str = ""  # e.g. "PixAI v0.9 ONNX"
    runtime: str = ""  # e.g. "torch", "onnxruntime CPUExecutionProvider"

    def preprocess_description(self) -> str:
        return self.preprocess.description()


@dataclass(frozen=True)
class Prediction:
    """``probs``: (N, num_tags) sigmoid scores; ``embeddings``: (N, D), L2-normalised;
    ``errors``: rows whose image could not be decoded after all (a JPEG handed to the
    device as bytes), whose scores are meaningless."""

    probs: np.ndarray
    embeddings: np.ndarray
    errors: Mapping[int, ImageDecodeError] = field(default_factory=dict)


@runtime_checkable
class Tagger(Protocol):
    def load(self) -> None: ...

    @property
    def info(self) -> ModelInfo: ...

    @property
    def vocab(self) -> TagVocabulary: ...

    @property
    def preprocess(self) -> ImagePreprocess: ...

    def predict(self, batch: torch.Tensor) -> Prediction:
        """Scores and embeddings for a (N, 3, S, S) float batch of model input."""
        ...

    def predict_pixels(self, pixels: torch.Tensor) -> Prediction:
        """The same for a (N, S, S, 3) uint8 batch of ``preprocess.pixels`` (normalised by
        the tagger, on its device)."""
        ...

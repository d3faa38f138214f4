"""Several copies of one model, one per device, used as one tagger.

``SAGASHI_DEVICE=cuda:all`` (or ``cuda:0,cuda:1``) loads the model once per GPU. Each
forward runs on whichever replica is idle, so the indexer keeps as many batches in flight
as there are replicas (:class:`indexer.forwarding.InFlight` reads :attr:`Replicas.replicas`)
and one thread writes them all.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Any

from app.tagger.preprocess import ImagePreprocess
from app.tagger.protocol import ModelInfo, Prediction, Tagger
from app.tagger.vocab import TagVocabulary

if TYPE_CHECKING:
    import torch


class Replicas:
    def __init__(self, taggers: list[Tagger]) -> None:
        if not taggers:
            raise ValueError("at least one tagger")
        self.taggers = taggers
        self._idle: queue.Queue[Tagger] = queue.Queue()
        for tagger in taggers:
            self._idle.put(tagger)

    @property
    def replicas(self) -> int:
        return len(self.taggers)

    @property
    def device(self) -> Any:
        return getattr(self.taggers[0], "device", None)

    def load(self) -> None:
        for tagger in self.taggers:
            tagger.load()
        first = self.taggers[0].info
        for tagger in self.taggers[1:]:
            if tagger.info.vocabulary_digest != first.vocabulary_digest:
                raise ValueError("replicas of different models")

    @property
    def info(self) -> ModelInfo:
        return self.taggers[0].info

    @property
    def vocab(self) -> TagVocabulary:
        return self.taggers[0].vocab

    @property
    def preprocess(self) -> ImagePreprocess:
        return self.taggers[0].preprocess

    def predict(self, batch: torch.Tensor) -> Prediction:
        tagger = self._idle.get()
        try:
            return tagger.predict(batch)
        finally:
            self._idle.put(tagger)

    def predict_pixels(self, pixels: torch.Tensor) -> Prediction:
        tagger = self._idle.get()
        try:
            return tagger.predict_pixels(pixels)
        finally:
            self._idle.put(tagger)

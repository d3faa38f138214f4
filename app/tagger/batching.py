"""Batched tagging of many images, with decoding overlapped with the model.

Decoding and preprocessing run in a thread pool (Pillow releases the GIL while it decodes
and resamples), a bounded number of images ahead of the model, so the forward pass never
waits on JPEG decoding. Results come back in input order; a file that fails to decode
yields a result with an error instead of stopping the batch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from app.tagger.decode import decode_image
from app.tagger.errors import ImageDecodeError
from app.tagger.preprocess import ImagePreprocess
from app.tagger.protocol import Prediction, Tagger

if TYPE_CHECKING:
    import torch

Source = str | os.PathLike[str] | bytes
T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    pool: Executor, fn: Callable[[T], R], items: Iterable[T], lookahead: int
) -> Iterator[tuple[T, R]]:
    """Apply ``fn`` in the pool, at most ``lookahead`` items ahead, yielding in input order."""
    pending: deque[tuple[T, Future[R]]] = deque()
    source = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < lookahead:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            pending.append((item, pool.submit(fn, item)))
        if not pending:
            return
        item, future = pending.popleft()
        yield item, future.result()


@dataclass
class TagOutcome:
    """One input's result: probabilities and embedding, or a decode error."""

    source: Source
    width: int = 0
    height: int = 0
    probs: np.ndarray | None = field(default=None, repr=False)
    embedding: np.ndarray | None = field(default=None, repr=False)
    error: ImageDecodeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Prepared:
    tensor: torch.Tensor | None
    width: int
    height: int
    error: ImageDecodeError | None


def prepare(source: Source, preprocess: ImagePreprocess, max_pixels: int, draft: bool) -> _Prepared:
    """Decode and preprocess one image; never raises for a bad image."""
    try:
        image = decode_image(
            source, max_pixels=max_pixels, draft=preprocess.draft_request if draft else None
        )
        width, height = image.size
        return _Prepared(preprocess.tensor(image), width, height, None)
    except ImageDecodeError as exc:
        return _Prepared(None, 0, 0, exc)
    except MemoryError:
        return _Prepared(None, 0, 0, ImageDecodeError("too_large", "out of memory decoding"))


def tag_sources(
    tagger: Tagger,
    sources: Iterable[Source],
    *,
    batch_size: int,
    workers: int,
    max_pixels: int,
    jpeg_draft: bool = True,
) -> Iterator[TagOutcome]:
    """Tag every source, yielding outcomes in input order."""
    preprocess = tagger.preprocess

    def load(src: Source) -> _Prepared:
        return prepare(src, preprocess, max_pixels, jpeg_draft)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sagashi-decode") as pool:
        waiting: list[TagOutcome] = []
        tensors: list[torch.Tensor] = []
        owners: list[TagOutcome] = []
        for src, prepared in ordered_map(pool, load, sources, lookahead(batch_size, workers)):
            outcome = TagOutcome(src, prepared.width, prepared.height, error=prepared.error)
            waiting.append(outcome)
            if prepared.tensor is not None:
                tensors.append(prepared.tensor)
                owners.append(outcome)
            if len(tensors) == batch_size:
                _run(tagger, tensors, owners)
                yield from waiting
                waiting, tensors, owners = [], [], []
        if tensors:
            _run(tagger, tensors, owners)
        yield from waiting


def lookahead(batch_size: int, workers: int) -> int:
    """How far decoding runs ahead of the model: two batches keeps the GPU fed."""
    return max(batch_size * 2, workers * 2)


def predict_stacked(tagger: Tagger, tensors: list[torch.Tensor]) -> Prediction:
    import torch  # the tensors exist, so torch is loaded already

    device = getattr(tagger, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        # Stacked straight into page-locked memory: one copy, and the copy to the GPU
        # runs at full speed.
        batch = torch.empty(
            (len(tensors), *tensors[0].shape), dtype=tensors[0].dtype, pin_memory=True
        )
        torch.stack(tensors, out=batch)
    else:
        batch = torch.stack(tensors)
    return tagger.predict(batch)


def _run(tagger: Tagger, tensors: list[torch.Tensor], owners: list[TagOutcome]) -> None:
    prediction = predict_stacked(tagger, tensors)
    for row, outcome in enumerate(owners):
        outcome.probs = prediction.probs[row]
        outcome.embedding = prediction.embeddings[row]

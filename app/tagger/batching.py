"""Batched tagging of many images, with decoding overlapped with the model.

Decoding and preprocessing run in a thread pool (Pillow releases the GIL while it decodes
and resamples), a bounded number of images ahead of the model, so the forward pass never
waits on JPEG decoding. Results come back in input order; a file that fails to decode
yields a result with an error instead of stopping the batch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from app.tagger.decode import decode_image
from app.tagger.errors import ImageDecodeError
from app.tagger.preprocess import Preprocess
from app.tagger.protocol import Tagger

Source = str | os.PathLike[str] | bytes


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


def prepare(source: Source, preprocess: Preprocess, max_pixels: int, draft: bool) -> _Prepared:
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
    device = getattr(tagger, "device", None)
    pin = isinstance(device, torch.device) and device.type == "cuda"
    lookahead = max(batch_size * 2, workers * 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sagashi-decode") as pool:
        pending: deque[tuple[Source, Future[_Prepared]]] = deque()
        source_iter = iter(sources)

        def refill() -> None:
            while len(pending) < lookahead:
                try:
                    src = next(source_iter)
                except StopIteration:
                    return
                pending.append((src, pool.submit(prepare, src, preprocess, max_pixels, jpeg_draft)))

        refill()
        waiting: list[TagOutcome] = []
        tensors: list[torch.Tensor] = []
        owners: list[TagOutcome] = []
        while pending:
            src, future = pending.popleft()
            refill()
            prepared = future.result()
            outcome = TagOutcome(src, prepared.width, prepared.height, error=prepared.error)
            waiting.append(outcome)
            if prepared.tensor is not None:
                tensors.append(prepared.tensor)
                owners.append(outcome)
            if len(tensors) == batch_size:
                _run(tagger, tensors, owners, pin)
                yield from waiting
                waiting, tensors, owners = [], [], []
        if tensors:
            _run(tagger, tensors, owners, pin)
        yield from waiting


def _run(tagger: Tagger, tensors: list[torch.Tensor], owners: list[TagOutcome], pin: bool) -> None:
    batch = torch.stack(tensors)
    if pin:
        batch = batch.pin_memory()
    prediction = tagger.predict(batch)
    for row, outcome in enumerate(owners):
        outcome.probs = prediction.probs[row]
        outcome.embedding = prediction.embeddings[row]

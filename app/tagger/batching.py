"""Batched tagging of many images, with decoding overlapped with the model.

Decoding and preprocessing run in a thread pool (Pillow releases the GIL while it decodes
and resamples), a bounded number of images ahead of the model, so the forward pass never
waits on JPEG decoding. Results come back in input order; a file that fails to decode
yields a result with an error instead of stopping the batch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from app.tagger.decode import decode_image, decode_with_meta
from app.tagger.device_decode import Frame, Jpeg, decode_batch, shape_frames
from app.tagger.errors import ImageDecodeError
from app.tagger.preprocess import ImagePreprocess, Preprocess
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
    pixels: np.ndarray | None
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
        return _Prepared(preprocess.pixels(image), width, height, None)
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
        tensors: list[np.ndarray] = []
        owners: list[TagOutcome] = []
        for src, prepared in ordered_map(pool, load, sources, lookahead(batch_size, workers)):
            outcome = TagOutcome(src, prepared.width, prepared.height, error=prepared.error)
            waiting.append(outcome)
            if prepared.pixels is not None:
                tensors.append(prepared.pixels)
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


def runs_on_gpu(tagger: Tagger) -> bool:
    """Whether the tagger's forward runs on a CUDA device (the torch tagger's ``device``)."""
    device = getattr(tagger, "device", None)
    return getattr(device, "type", None) == "cuda"


# (S, S, 3) uint8 at model size, or what the device finishes: a JPEG to decode and shape, a
# decoded frame to shape (app.tagger.device_decode).
Pixels = np.ndarray | Jpeg | Frame


@dataclass(frozen=True)
class Staged:
    """A batch ready for the forward: (N, S, S, 3) uint8 on the tagger's device (or in
    page-locked memory on its way there), and the rows that could not be decoded."""

    pixels: torch.Tensor
    errors: Mapping[int, ImageDecodeError] = field(default_factory=dict)


def predict_stacked(tagger: Tagger, images: Sequence[Pixels]) -> Prediction:
    """One forward over a batch: :func:`stage` then :func:`predict_staged`."""
    return predict_staged(tagger, stage(tagger, images))


def predict_staged(tagger: Tagger, staged: Staged) -> Prediction:
    prediction = tagger.predict_pixels(staged.pixels)
    if not staged.errors:
        return prediction
    return Prediction(prediction.probs, prediction.embeddings, staged.errors)


def stage(tagger: Tagger, images: Sequence[Pixels]) -> Staged:
    """Stack (S, S, 3) uint8 images in one copy (into page-locked memory for a GPU, so the
    copy there runs at full speed, started here without waiting); :class:`Jpeg` items are
    decoded on the tagger's device and :class:`Frame` items padded and resized there. The
    indexer runs this in a thread of its own, so a batch is staged while the one before
    runs through the model.

    The staging's kernels run on the default CUDA stream, behind the forward in flight: a
    stream of its own was measured to change nothing (docs/benchmarks.md)."""
    import torch

    if any(isinstance(image, Jpeg | Frame) for image in images):
        return _stage_mixed(tagger, images)
    pinned = runs_on_gpu(tagger)
    first = images[0]
    assert isinstance(first, np.ndarray)
    batch = torch.empty((len(images), *first.shape), dtype=torch.uint8, pin_memory=pinned)
    np.stack(images, out=batch.numpy())  # type: ignore[arg-type]
    if pinned:
        # Ordered before the forward's kernels on the same (default) stream; the pinned
        # buffer stays referenced by the copy until it is done.
        batch = batch.to(tagger.device, non_blocking=True)  # type: ignore[attr-defined]
    return Staged(batch)


def _stage_mixed(tagger: Tagger, images: Sequence[Pixels]) -> Staged:
    """Device-decoded JPEGs, device-shaped frames and host pixels in one batch on the
    tagger's device; a JPEG the device refuses is decoded on the CPU from its bytes, as the
    readers would have."""
    import torch

    preprocess = tagger.preprocess
    assert isinstance(preprocess, Preprocess)
    device = tagger.device  # type: ignore[attr-defined]
    size = preprocess.size
    batch = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=device)
    rows: dict[type, list[int]] = {np.ndarray: [], Jpeg: [], Frame: []}
    for row, image in enumerate(images):
        rows[type(image) if isinstance(image, Jpeg | Frame) else np.ndarray].append(row)
    if rows[np.ndarray]:
        host = torch.from_numpy(np.stack([images[row] for row in rows[np.ndarray]]))  # type: ignore[misc]
        batch[rows[np.ndarray]] = host.to(device)
    frames: list[Frame] = [images[row] for row in rows[Frame]]  # type: ignore[misc]
    for row, shaped in zip(rows[Frame], shape_frames(frames, preprocess, device), strict=True):
        batch[row] = shaped
    jpegs: list[Jpeg] = [images[row] for row in rows[Jpeg]]  # type: ignore[misc]
    errors: dict[int, ImageDecodeError] = {}
    decoded = decode_batch(jpegs, preprocess, device) if jpegs else []
    for row, jpeg, pixels in zip(rows[Jpeg], jpegs, decoded, strict=True):
        if pixels is None:
            try:
                pixels = torch.from_numpy(_decode_on_host(jpeg, preprocess)).to(device)
            except ImageDecodeError as exc:
                errors[row] = exc
                pixels = torch.zeros((size, size, 3), dtype=torch.uint8, device=device)
        batch[row] = pixels
    return Staged(batch, errors)


def _decode_on_host(jpeg: Jpeg, preprocess: Preprocess) -> np.ndarray:
    # The header passed the pixel limit already; the decode reports truncation, corruption.
    image, _meta = decode_with_meta(jpeg.data, max_pixels=2**62, draft=preprocess.draft_request)
    return preprocess.pixels(image)


def _run(tagger: Tagger, tensors: list[np.ndarray], owners: list[TagOutcome]) -> None:
    prediction = predict_stacked(tagger, tensors)
    for row, outcome in enumerate(owners):
        outcome.probs = prediction.probs[row]
        outcome.embedding = prediction.embeddings[row]

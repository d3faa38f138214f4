"""Forward passes of whole batches in model threads, written in order by the caller.

The index and the reindex share this: while the model runs a batch, a staging thread
prepares the next one (stacked, copied to the device, its JPEGs decoded there) and the
caller's thread reads the files after it and writes the batch before, so neither the
accelerator nor the database waits for the other. With several model replicas (one per
GPU) as many batches are in flight; results are written in submission order, each batch in
one transaction.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from app.tagger.batching import Pixels, Staged, predict_staged, stage
from app.tagger.protocol import Prediction, Tagger

T = TypeVar("T")

Write = Callable[[list[T], Prediction], None]


class InFlight(Generic[T]):
    """Submit batches; :meth:`drain` (or the next submits) writes them, oldest first."""

    def __init__(self, tagger: Tagger, write: Write[T]) -> None:
        self.tagger = tagger
        self.write = write
        self.depth = max(1, getattr(tagger, "replicas", 1))
        # Staging (stacking, the copy to the device, JPEGs decoded there) runs in a thread
        # of its own: the next batch is staged while the model runs this one.
        self.stager = ThreadPoolExecutor(1, thread_name_prefix="sagashi-stage")
        self.model = ThreadPoolExecutor(self.depth, thread_name_prefix="sagashi-model")
        self.queue: deque[tuple[list[T], Future[Prediction]]] = deque()

    def submit(self, items: list[T], pixels: Sequence[Pixels]) -> None:
        """Start the forward of one batch, then write the oldest ones beyond the depth."""
        if items:
            staged = self.stager.submit(stage, self.tagger, pixels)
            self.queue.append((items, self.model.submit(self._forward, staged)))
        while len(self.queue) > self.depth:
            self._write_oldest()

    def _forward(self, staged: Future[Staged]) -> Prediction:
        return predict_staged(self.tagger, staged.result())

    def drain(self) -> None:
        while self.queue:
            self._write_oldest()

    def _write_oldest(self) -> None:
        items, future = self.queue.popleft()
        self.write(items, future.result())

    def close(self) -> None:
        """Wait for the forwards still running (their results are dropped: the caller
        stopped before writing them)."""
        self.stager.shutdown(wait=True, cancel_futures=True)
        self.model.shutdown(wait=True, cancel_futures=True)
        self.queue.clear()

    def __enter__(self) -> InFlight[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

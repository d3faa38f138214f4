"""Forward passes of whole batches in model threads, written in order by the caller.

The index and the reindex share this: while the model runs a batch, two staging threads
prepare the next two (stacked, copied to the device, their JPEGs decoded there) and the
caller's thread reads the files after them and writes the batch before, so neither the
accelerator nor the database waits for the other. With several model replicas (one per
GPU) as many more batches are in flight; results are written in submission order, each
batch in one transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.tagger.batching import Pixels, Staged, predict_staged, stage
from app.tagger.protocol import Prediction, Tagger
from indexer.switch_interval import short_switch_interval

log = logging.getLogger(__name__)
T = TypeVar("T")
STAGERS = 2  # staging threads (the bench compares one)

Write = Callable[[list[T], Prediction], None]


@dataclass
class Timings:
    """Where a run's time went, summed over its batches (seconds): what tells a run bound
    by the model from one bound by its input or its writes (logged at DEBUG at the end)."""

    batches: int = 0
    staging: float = 0.0  # stacking, copies, device JPEG decoding (staging thread)
    input_wait: float = 0.0  # model threads waiting for a staged batch
    forward: float = 0.0  # model threads in the forward, results back on the host
    result_wait: float = 0.0  # the writer waiting for a forward to finish
    writing: float = 0.0  # the writer writing batches
    started: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        with self.lock:
            setattr(self, name, getattr(self, name) + now - since)
        return now

    def line(self) -> str:
        wall = time.perf_counter() - self.started
        return (
            f"{self.batches} batches in {wall:.1f}s: forward {self.forward:.1f}s "
            f"({100 * self.forward / max(wall, 1e-9):.0f}% of the wall time), model waited "
            f"{self.input_wait:.1f}s for input, staging {self.staging:.1f}s, writer waited "
            f"{self.result_wait:.1f}s for results and wrote for {self.writing:.1f}s"
        )


class InFlight(Generic[T]):
    """Submit batches; :meth:`drain` (or the next submits) writes them, oldest first."""

    def __init__(self, tagger: Tagger, write: Write[T]) -> None:
        self.tagger = tagger
        self.write = write
        self.depth = max(1, getattr(tagger, "replicas", 1))
        # Staging (stacking, the copy to the device, JPEGs decoded there) runs in threads
        # of its own: the next batches are staged while the model runs this one. Two,
        # because a staging thread waits out the device's JPEG decode of its batch
        # (torchvision decodes one batch at a time) and then shapes it: the second
        # decodes while the first shapes.
        self.stager = ThreadPoolExecutor(STAGERS, thread_name_prefix="sagashi-stage")
        self.model = ThreadPoolExecutor(self.depth, thread_name_prefix="sagashi-model")
        self.queue: deque[tuple[list[T], Future[Prediction]]] = deque()
        # Batches kept in flight: one in each model, and one more per extra staging thread.
        self.limit = self.depth + STAGERS - 1
        self.timings = Timings()
        # The staging threads give the GIL up in every torch call: see the module named.
        self._interval = ExitStack()
        self._interval.enter_context(short_switch_interval())

    def submit(self, items: list[T], pixels: Sequence[Pixels]) -> None:
        """Start the forward of one batch, then write the oldest ones beyond the limit."""
        if items:
            self.timings.batches += 1
            staged = self.stager.submit(self._stage, pixels)
            self.queue.append((items, self.model.submit(self._forward, staged)))
        while len(self.queue) > self.limit:
            self._write_oldest()

    def _stage(self, pixels: Sequence[Pixels]) -> Staged:
        began = time.perf_counter()
        try:
            return stage(self.tagger, pixels)
        finally:
            self.timings.add("staging", began)

    def _forward(self, staged: Future[Staged]) -> Prediction:
        began = time.perf_counter()
        batch = staged.result()
        began = self.timings.add("input_wait", began)
        try:
            return predict_staged(self.tagger, batch)
        finally:
            self.timings.add("forward", began)

    def drain(self) -> None:
        while self.queue:
            self._write_oldest()

    def _write_oldest(self) -> None:
        items, future = self.queue.popleft()
        began = time.perf_counter()
        prediction = future.result()
        began = self.timings.add("result_wait", began)
        self.write(items, prediction)
        self.timings.add("writing", began)

    def close(self) -> None:
        """Wait for the forwards still running (their results are dropped: the caller
        stopped before writing them)."""
        self.stager.shutdown(wait=True, cancel_futures=True)
        self.model.shutdown(wait=True, cancel_futures=True)
        self.queue.clear()
        self._interval.close()
        if self.timings.batches:
            log.debug("in flight: %s", self.timings.line())

    def __enter__(self) -> InFlight[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

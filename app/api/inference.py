"""The model behind the upload endpoints: loaded once per process, fed by a micro-batcher.

Requests decode and preprocess their image in the server's thread pool, then hand the
tensor to one inference thread, which runs whatever has arrived together as one batch (up
to ``batch_size``). Concurrent uploads thus share forward passes instead of queueing for
the model one by one, and the event loop never runs model code.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from app.api.decode_gate import DecodeGate, check_pixels, too_many_pixels
from app.api.errors import ApiError
from app.settings import Settings
from app.tagger import ModelLoadError
from app.tagger.batching import predict_stacked, prepare
from app.tagger.protocol import Tagger

log = logging.getLogger(__name__)

# After the first request of a batch arrives, wait this long for company.
BATCH_WINDOW_SECONDS = 0.004


@dataclass(frozen=True)
class Inferred:
    probs: np.ndarray
    embedding: np.ndarray


class MicroBatcher:
    def __init__(self, tagger: Tagger, batch_size: int) -> None:
        self.tagger = tagger
        self.batch_size = batch_size
        self._queue: queue.Queue[tuple[np.ndarray, Future[tuple[np.ndarray, np.ndarray]]]]
        self._queue = queue.Queue()
        self.batches = 0  # forward passes run, for metrics and tests
        self._thread = threading.Thread(target=self._loop, name="sagashi-infer", daemon=True)
        self._thread.start()

    def submit(self, pixels: np.ndarray) -> Future[tuple[np.ndarray, np.ndarray]]:
        future: Future[tuple[np.ndarray, np.ndarray]] = Future()
        self._queue.put((pixels, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while len(batch) < self.batch_size:
                    batch.append(self._queue.get(timeout=BATCH_WINDOW_SECONDS))
            except queue.Empty:
                pass
            self._run(batch)

    def _run(self, batch: list[tuple[np.ndarray, Future[tuple[np.ndarray, np.ndarray]]]]) -> None:
        self.batches += 1
        try:
            prediction = predict_stacked(self.tagger, [pixels for pixels, _ in batch])
        except Exception as exc:  # the requests see the failure; the thread lives on
            log.exception("inference failed for a batch of %d", len(batch))
            for _, future in batch:
                future.set_exception(exc)
            return
        for row, (_, future) in enumerate(batch):
            future.set_result((prediction.probs[row], prediction.embeddings[row]))


class Inference:
    """The process's one model, loaded on first use (or at start-up) under a lock."""

    def __init__(self, settings: Settings, gate: DecodeGate, tagger: Tagger | None = None) -> None:
        self.settings = settings
        self.gate = gate
        self._tagger = tagger
        self._batcher: MicroBatcher | None = None
        self._lock = threading.Lock()
        self._error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._batcher is not None

    @property
    def error(self) -> str | None:
        """Why the last load failed, if it did."""
        return self._error

    def load(self) -> Tagger:
        with self._lock:
            if self._batcher is None:
                tagger = self._tagger or self._build()
                self._batcher = MicroBatcher(tagger, self.settings.batch_size)
                self._tagger = tagger
                log.info("model %s loaded for uploads", tagger.info.name)
            return self._batcher.tagger

    def _build(self) -> Tagger:
        settings = self.settings
        if settings.model_dir is None:
            raise ApiError(
                503,
                "model_unavailable",
                "no model is configured on this server (set SAGASHI_MODEL_DIR)",
            )
        # Imported here: torch and timm take seconds to import, and a server that only
        # searches never needs them (its /readyz waits for nothing of theirs).
        from app.tagger.factory import tagger_from_settings

        try:
            tagger = tagger_from_settings(settings, settings.model_dir, serving=True)
        except ModelLoadError as exc:
            self._error = str(exc)
            raise ApiError(503, "model_unavailable", f"the model failed to load: {exc}") from exc
        return tagger

    def infer(self, data: bytes) -> Inferred:
        """Tag and embed one image (blocking; call from a worker thread)."""
        tagger = self.load()
        max_pixels = self.settings.max_upload_pixels
        check_pixels(data, max_pixels)  # from the header, before any decode is admitted
        with self.gate.slot():
            prepared = prepare(data, tagger.preprocess, max_pixels, self.settings.jpeg_draft)
        if prepared.error is not None or prepared.pixels is None:
            code = prepared.error.code if prepared.error else "corrupt"
            message = prepared.error.message if prepared.error else "cannot decode"
            if code == "too_large":  # a header that lied about its size, or out of memory
                raise too_many_pixels(None, max_pixels)
            raise ApiError(415, "bad_image", f"not a decodable image ({code}): {message}")
        assert self._batcher is not None
        probs, embedding = self._batcher.submit(prepared.pixels).result()
        return Inferred(probs, embedding)

"""The readers' GIL changes, undone on demand, and a busy Python thread to measure them
beside: shared by bench_reader_gil and bench_gpu.

Variants of the same code:

* ``before``: a PNG goes to its decoder one IDAT chunk (8-64 KiB) per call and a JPEG
  64 KiB per call, CPython's 5 ms switch interval;
* ``one_call``: ``app.tagger.decode`` hands the whole file over in one call (PNG chunks
  joined by ``app.tagger.png_idat``), still 5 ms;
* ``now``: one call, and the readers' 1 ms switch interval
  (``indexer.switch_interval``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from unittest import mock

from app.tagger import decode
from indexer import switch_interval

VARIANTS = ("before", "one_call", "now")


@contextmanager
def variant(name: str) -> Iterator[None]:
    """The code as it is (now), or with the readers' changes undone (see the docstring)."""
    with ExitStack() as stack:
        if name == "before":
            stack.enter_context(mock.patch.object(decode, "DECODE_BLOCK_MAX", 0))
            stack.enter_context(mock.patch.object(decode, "coalesce_idat", lambda data: data))
        if name in ("before", "one_call"):
            stack.enter_context(mock.patch.object(switch_interval, "SWITCH_INTERVAL_S", 0.005))
        stack.enter_context(switch_interval.short_switch_interval())
        yield


class Busy:
    """A thread running Python until stopped, counting its loops: the writer's share of the
    GIL in a real run, and what the readers' waits cost it."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.loops = 0
        self.worker = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stopped.is_set():
            for _ in range(1000):
                self.loops += 1

    def __enter__(self) -> Busy:
        self.worker.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.worker.join()
        self.rate = self.loops / (time.perf_counter() - self.started)


def busy_rate_alone(seconds: float = 1.0) -> float:
    """The busy thread's loops a second with nothing beside it: what its rate beside the
    readers is read against."""
    with Busy() as busy:
        time.sleep(seconds)
    return busy.rate


def timed(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Calls of ``fn``, at least one, for at least ``seconds``: the time taken and the calls
    made (short windows make a busy thread's rate too noisy on 2 cores)."""
    started, calls = time.perf_counter(), 0
    while not calls or time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return time.perf_counter() - started, calls


def alone_and_beside_busy(
    work: Callable[[], object], items: int, alone_rate: float, seconds: float = 0.0
) -> dict[str, float]:
    """ms per item of ``work`` (``items`` a call) alone and beside a :class:`Busy` thread,
    and the busy thread's rate against ``alone_rate``."""
    spent, calls = timed(work, seconds)
    alone = spent / (calls * items)
    with Busy() as busy:
        spent, calls = timed(work, seconds)
    beside = spent / (calls * items)
    return {
        "alone_ms": round(1000 * alone, 1),
        "beside_busy_ms": round(1000 * beside, 1),
        "busy_thread_rate": round(busy.rate / alone_rate, 2),
    }

"""The switch interval: 1 ms while any reader pool or batch pipeline runs, the interpreter's
own value once none does (why: indexer.switch_interval, docs/benchmarks.md)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from app.tagger import TimmTagger
from app.tagger.preprocess import Preprocess
from indexer.forwarding import InFlight
from indexer.readers import ThreadReaders
from indexer.reading import ReadSpec
from indexer.switch_interval import SWITCH_INTERVAL_S, short_switch_interval
from tests.support.index_helpers import make_image


def approx(seconds: float) -> object:
    return pytest.approx(seconds, abs=2e-6)  # CPython keeps it in whole microseconds


SPEC = ReadSpec(Preprocess(32, "pad", "bicubic", (0.5,) * 3, (0.5,) * 3, "RGB"), 10**8, True)


@pytest.fixture(autouse=True)
def interpreter_default() -> Iterator[None]:
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(saved)


def test_reader_threads_run_at_the_short_interval_and_restore_it(tmp_path: Path) -> None:
    files = [make_image(tmp_path / f"{i}.png", seed=i, size=(40, 30)) for i in range(6)]
    seen = []
    for read in ThreadReaders(SPEC, 2, 4).map((str(path), None) for path in files):
        assert read.error is None and read.pixels is not None
        seen.append(sys.getswitchinterval())
    assert seen == [approx(SWITCH_INTERVAL_S)] * len(files)
    assert sys.getswitchinterval() == approx(0.005)


def test_a_run_stopped_early_restores_the_interval(tmp_path: Path) -> None:
    files = [make_image(tmp_path / f"{i}.png", seed=i, size=(40, 30)) for i in range(6)]
    reads = ThreadReaders(SPEC, 2, 4).map((str(path), None) for path in files)
    assert isinstance(reads, Generator)
    next(reads)
    assert sys.getswitchinterval() == approx(SWITCH_INTERVAL_S)
    reads.close()  # the consumer gave up: a failed batch, a stop request
    assert sys.getswitchinterval() == approx(0.005)


def test_overlapping_pools_restore_the_interval_only_when_the_last_ends() -> None:
    first_entered, second_done = threading.Event(), threading.Event()
    seen: dict[str, float] = {}

    def other_pool() -> None:
        with short_switch_interval():
            first_entered.set()
            second_done.wait(5)
        seen["after the other"] = sys.getswitchinterval()

    worker = threading.Thread(target=other_pool)
    with short_switch_interval():
        worker.start()
        first_entered.wait(5)
    seen["after this one"] = sys.getswitchinterval()
    second_done.set()
    worker.join()
    assert seen["after this one"] == approx(SWITCH_INTERVAL_S)
    assert seen["after the other"] == approx(0.005)


def test_a_shorter_interval_set_by_the_user_is_kept() -> None:
    sys.setswitchinterval(0.0002)
    with short_switch_interval():
        assert sys.getswitchinterval() == approx(0.0002)
    assert sys.getswitchinterval() == approx(0.0002)


def test_the_batch_pipeline_runs_at_the_short_interval(tiny_pixai_dir: Path) -> None:
    tagger = TimmTagger(tiny_pixai_dir, device="cpu")
    tagger.load()
    with InFlight[int](tagger, lambda items, prediction: None):
        assert sys.getswitchinterval() == approx(SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == approx(0.005)

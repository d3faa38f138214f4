"""The indexer's readers: files read, hashed and decoded ahead of the model, in input order.

Two implementations of one interface, picked once per run:

* :class:`ThreadReaders` (the default): a thread pool. Pillow and hashlib release the GIL
  while they decode and hash; on a 16-core H200 host threads read 166 img/s against the
  processes' 108, and the index ran faster with them (docs/benchmarks.md). While they run,
  the interpreter's switch interval is 1 ms instead of 5 (:mod:`indexer.switch_interval`).
* :class:`ProcessReaders` (SAGASHI_READ_PROCESSES=on): worker processes, which never take
  the GIL from the model thread between kernel launches. Each reader handles one file at a
  time and sends back the (S, S, 3) uint8 pixels (a quarter of the float tensor's bytes). A
  reader that dies (a codec crash, the OOM killer) is replaced; the file it held is tried
  once more in a fresh reader, and reported as ``decoder_crashed`` if that one dies too.
  Pillow's per-file warnings come back with the result and are logged here, as a thread's
  would be. The run's device-input budget is reserved here, a file's most, before each file
  is sent, and settled on what comes back: processes stay within it as threads do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Protocol, TypeVar

from app.tagger.batching import ordered_map
from app.tagger.errors import ImageDecodeError
from indexer.reading import DeviceInputBudget, Read, ReadSpec, read_file
from indexer.switch_interval import short_switch_interval

log = logging.getLogger(__name__)
T = TypeVar("T")

Task = tuple[str, tuple[int, int] | None]  # path, and the (size, mtime_ns) the scan saw

# Files sent to one reader before its first result is back: the next is waiting in the pipe
# when it finishes one, so it never idles on the round trip.
PER_READER = 2
# Readers that die before finishing any file, in a row, before the run stops: they cannot
# start (a broken environment), and replacing them forever would hang the run.
START_FAILURES = 3


class Readers(Protocol):
    def map(self, tasks: Iterable[Task]) -> Iterator[Read]:
        """Each task's :class:`Read`, in input order, at most ``lookahead`` ahead."""
        ...


class ThreadReaders:
    def __init__(
        self,
        spec: ReadSpec,
        workers: int,
        lookahead: int,
        budget: DeviceInputBudget | None = None,
    ) -> None:
        self.spec, self.workers, self.lookahead = spec, workers, lookahead
        self.budget = budget

    def map(self, tasks: Iterable[Task]) -> Iterator[Read]:
        def read(task: Task) -> Read:
            return read_file(self.spec, *task, self.budget)

        return read_in_threads(read, tasks, self.workers, self.lookahead, "sagashi-read")


def read_in_threads(
    read: Callable[[T], Read], tasks: Iterable[T], workers: int, lookahead: int, name: str
) -> Iterator[Read]:
    """``read`` of each task in a pool of ``workers`` threads, in input order, at most
    ``lookahead`` ahead, at the short switch interval (:mod:`indexer.switch_interval`): the
    file readers' and the object readers' pool."""
    with (
        short_switch_interval(),
        ThreadPoolExecutor(workers, thread_name_prefix=name) as pool,
    ):
        for _task, result in ordered_map(pool, read, tasks, lookahead):
            yield result


def readers_for(
    spec: ReadSpec,
    workers: int,
    lookahead: int,
    processes: bool,
    budget: DeviceInputBudget | None = None,
) -> Readers:
    """The run's readers. ``budget`` bounds what their device inputs hold at once."""
    if processes:
        return ProcessReaders(spec, workers, lookahead, budget)
    return ThreadReaders(spec, workers, lookahead, budget)


@dataclass
class _Reader:
    process: subprocess.Popen[bytes]
    send: Connection  # tasks to the reader
    conn: Connection  # results from it; end of file when it dies
    held: deque[tuple[int, Task]] = field(default_factory=deque)
    finished: int = 0


class ProcessReaders:
    """Reader processes started as ``python -m indexer.reader_main``: a fresh interpreter
    that imports only the reading code (about 0.1 s), inherits no CUDA context, database
    connection or thread of the indexer, and does not re-import the indexer's main module
    as multiprocessing's spawn and forkserver children do."""

    def __init__(
        self,
        spec: ReadSpec,
        workers: int,
        lookahead: int,
        budget: DeviceInputBudget | None = None,
    ) -> None:
        self.spec = spec
        self.workers = max(1, workers)
        self.lookahead = max(lookahead, self.workers * PER_READER)
        self.crashes = 0  # readers replaced during the run, for the log and the tests
        self._live: list[_Reader] = []
        # Only a run with a device path hands inputs on; the others reserve nothing.
        self._budget = budget if spec.device_jpeg or spec.device_resize else None
        self._reserved: dict[int, int] = {}  # by file index, while a reader holds the file

    def pids(self) -> list[int]:
        """The reader processes running now (for the tests' second hand)."""
        return [r.process.pid for r in self._live if r.process.poll() is None]

    def map(self, tasks: Iterable[Task]) -> Iterator[Read]:
        readers = self._live = [self._start() for _ in range(self.workers)]
        try:
            yield from self._run(readers, enumerate(tasks))
        finally:
            for reader in readers:
                self._stop(reader)
            self._live = []
            for index in list(self._reserved):
                self._give_back(index)

    def _run(self, readers: list[_Reader], source: Iterator[tuple[int, Task]]) -> Iterator[Read]:
        done: dict[int, Read] = {}
        again: deque[tuple[int, Task]] = deque()  # held by a reader that died
        tries: dict[int, int] = {}
        next_out = 0
        exhausted = False
        start_failures = 0
        while True:
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            in_hand = sum(len(r.held) for r in readers) + len(done) + len(again)
            for reader in readers:
                while len(reader.held) < PER_READER:
                    if again:  # counted in in_hand already
                        item = again.popleft()
                    elif exhausted or in_hand >= self.lookahead:
                        break
                    else:
                        try:
                            item = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        in_hand += 1
                    reader.held.append(item)
                    try:
                        reader.send.send((*item[1], self._reserve(item[0])))
                    except OSError:
                        break  # it died: its results pipe says so below
            if not any(r.held for r in readers):
                if exhausted and not again:
                    return
                continue
            for conn in wait([r.conn for r in readers]):
                index = next(i for i, r in enumerate(readers) if r.conn is conn)
                reader = readers[index]
                if self._collect(reader, done):
                    continue
                start_failures = start_failures + 1 if reader.finished == 0 else 0
                if start_failures >= START_FAILURES:
                    raise RuntimeError(
                        f"reader processes exit at start ({_exit_reason(reader)}); "
                        "see the messages above"
                    )
                self._lost(reader, done, again, tries)
                readers[index] = self._start()

    def _collect(self, reader: _Reader, done: dict[int, Read]) -> bool:
        """Every result the reader has sent; False when its pipe is closed (it died)."""
        while reader.conn.poll():
            try:
                read, notes = reader.conn.recv()
            except (EOFError, OSError):
                return False
            index, _task = reader.held.popleft()
            if self._budget is not None:
                self._budget.settle(self._reserved.pop(index), read)
            done[index] = read
            reader.finished += 1
            for note in notes:
                logging.getLogger("sagashi").warning("%s", note)
        return True

    def _lost(
        self,
        reader: _Reader,
        done: dict[int, Read],
        again: deque[tuple[int, Task]],
        tries: dict[int, int],
    ) -> None:
        self.crashes += 1
        reason = _exit_reason(reader)
        self._stop(reader)
        for index, _task in reader.held:  # sent again with a new reservation, or not at all
            self._give_back(index)
        if not reader.held:
            return
        index, task = reader.held.popleft()  # the file it was decoding when it died
        tries[index] = tries.get(index, 0) + 1
        if tries[index] > 1:
            log.warning("%s: the decoder process died on this file twice (%s)", task[0], reason)
            done[index] = Read(
                task[0],
                error=ImageDecodeError(
                    "decoder_crashed", f"the decoder process died reading this file ({reason})"
                ),
            )
        else:
            log.warning("a reader process died (%s) on %s; trying it again", reason, task[0])
            again.append((index, task))
        again.extend(reader.held)  # only waiting in its pipe: not its fault
        reader.held.clear()

    def _reserve(self, index: int) -> int | None:
        """The bytes this file's device input may hold (None: its own bound only)."""
        if self._budget is None:
            return None
        self._reserved[index] = self._budget.reserve()
        return self._reserved[index]

    def _give_back(self, index: int) -> None:
        if self._budget is not None and index in self._reserved:
            self._budget.give_back(self._reserved.pop(index))

    def _start(self) -> _Reader:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = subprocess.Popen(
            [sys.executable, "-m", "indexer.reader_main", str(task_r), str(result_w)],
            pass_fds=(task_r, result_w),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        os.close(task_r)
        os.close(result_w)
        send = Connection(task_w, readable=False)
        send.send(self.spec)
        return _Reader(process, send, Connection(result_r, writable=False))

    @staticmethod
    def _stop(reader: _Reader) -> None:
        with contextlib.suppress(OSError):
            reader.send.send(None)
        reader.send.close()
        try:
            reader.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            reader.process.kill()
            reader.process.wait()
        reader.conn.close()


def _exit_reason(reader: _Reader) -> str:
    try:
        code = reader.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        reader.process.kill()
        return "stopped answering"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"

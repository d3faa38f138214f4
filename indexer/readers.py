"""The indexer's readers: files read, hashed and decoded ahead of the model, in input order.

Two implementations of one interface, picked once per run:

* :class:`ThreadReaders`: a thread pool. Pillow releases the GIL while it decodes, which is
  enough beside a CPU forward (torch releases it too).
* :class:`ProcessReaders`: worker processes. Beside a GPU the model thread is mostly Python
  launching kernels, and decode threads take the GIL from it between every launch; processes
  never do. Each reader handles one file at a time and sends back the (S, S, 3) uint8 pixels
  (a quarter of the float tensor's bytes). A reader that dies (a codec crash, the OOM
  killer) is replaced; the file it held is tried once more in a fresh reader, and reported
  as ``decoder_crashed`` if that one dies too. Pillow's per-file warnings come back with the
  result and are logged here, as a thread's would be.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Protocol

from app.process import die_with_parent
from app.tagger.batching import ordered_map
from app.tagger.errors import ImageDecodeError
from indexer.reading import Read, ReadSpec, read_file

log = logging.getLogger(__name__)

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
    def __init__(self, spec: ReadSpec, workers: int, lookahead: int) -> None:
        self.spec, self.workers, self.lookahead = spec, workers, lookahead

    def map(self, tasks: Iterable[Task]) -> Iterator[Read]:
        def read(task: Task) -> Read:
            return read_file(self.spec, *task)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="sagashi-read") as pool:
            for _task, result in ordered_map(pool, read, tasks, self.lookahead):
                yield result


def readers_for(spec: ReadSpec, workers: int, lookahead: int, processes: bool) -> Readers:
    if processes:
        return ProcessReaders(spec, workers, lookahead)
    return ThreadReaders(spec, workers, lookahead)


@dataclass
class _Reader:
    process: BaseProcess
    conn: Connection
    held: deque[tuple[int, Task]] = field(default_factory=deque)
    finished: int = 0


class ProcessReaders:
    def __init__(self, spec: ReadSpec, workers: int, lookahead: int) -> None:
        self.spec = spec
        self.workers = max(1, workers)
        self.lookahead = max(lookahead, self.workers * PER_READER)
        # spawn, not fork: the parent may hold CUDA and database connections, which a
        # forked child must not inherit.
        self.context = multiprocessing.get_context("spawn")
        self.crashes = 0  # readers replaced during the run, for the log and the tests

    def map(self, tasks: Iterable[Task]) -> Iterator[Read]:
        readers = [self._start() for _ in range(self.workers)]
        try:
            yield from self._run(readers, enumerate(tasks))
        finally:
            for reader in readers:
                self._stop(reader)

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
                    reader.conn.send(item[1])
                    reader.held.append(item)
            if not any(r.held for r in readers):
                if exhausted and not again:
                    return
                continue
            ready = set(wait([r.conn for r in readers] + [r.process.sentinel for r in readers]))
            for index, reader in enumerate(readers):
                if reader.conn in ready:
                    self._collect(reader, done)
                if reader.process.sentinel in ready and not reader.process.is_alive():
                    start_failures = start_failures + 1 if reader.finished == 0 else 0
                    if start_failures >= START_FAILURES:
                        raise RuntimeError(
                            "reader processes exit at start (exit code "
                            f"{reader.process.exitcode}); see the messages above"
                        )
                    self._lost(reader, done, again, tries)
                    readers[index] = self._start()

    def _collect(self, reader: _Reader, done: dict[int, Read]) -> None:
        """Every result the reader has sent (a dead reader's last ones too)."""
        while reader.held and reader.conn.poll():
            try:
                read, notes = reader.conn.recv()
            except (EOFError, OSError):
                return
            index, _task = reader.held.popleft()
            done[index] = read
            reader.finished += 1
            for note in notes:
                logging.getLogger("sagashi").warning("%s", note)

    def _lost(
        self,
        reader: _Reader,
        done: dict[int, Read],
        again: deque[tuple[int, Task]],
        tries: dict[int, int],
    ) -> None:
        self._collect(reader, done)
        self.crashes += 1
        reader.conn.close()
        if not reader.held:
            return
        index, task = reader.held.popleft()  # the file it was decoding when it died
        tries[index] = tries.get(index, 0) + 1
        code = _exit_reason(reader.process.exitcode)
        if tries[index] > 1:
            log.warning("%s: the decoder process died on this file twice (%s)", task[0], code)
            done[index] = Read(
                task[0],
                error=ImageDecodeError(
                    "decoder_crashed", f"the decoder process died reading this file ({code})"
                ),
            )
        else:
            log.warning("a reader process died (%s) on %s; trying it again", code, task[0])
            again.append((index, task))
        again.extend(reader.held)  # only waiting in its pipe: not its fault
        reader.held.clear()

    def _start(self) -> _Reader:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=_reader_main, args=(child, self.spec), name="sagashi-reader", daemon=True
        )
        process.start()
        child.close()
        return _Reader(process, parent)

    @staticmethod
    def _stop(reader: _Reader) -> None:
        with contextlib.suppress(OSError):
            reader.conn.send(None)
        reader.process.join(timeout=5)
        if reader.process.is_alive():
            reader.process.kill()
            reader.process.join()
        reader.conn.close()


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


class _Notes(logging.Handler):
    """The reader's log warnings (Pillow's, through pillow_notes), sent with its result."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def _reader_main(conn: Connection, spec: ReadSpec) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    notes = _Notes()
    sagashi = logging.getLogger("sagashi")
    sagashi.addHandler(notes)
    sagashi.propagate = False
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        read = read_file(spec, *task)
        conn.send((read, notes.take()))

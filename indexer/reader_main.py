"""One reader process of :class:`indexer.readers.ProcessReaders`.

    python -m indexer.reader_main TASK_FD RESULT_FD

Reads its :class:`~indexer.reading.ReadSpec`, then tasks, from TASK_FD and answers each
with ``(Read, notes)`` on RESULT_FD until it reads None or the pipe closes. A task is a path,
the (size, mtime_ns) the scan saw, and the bytes its device input may hold (reserved by the
parent from the run's budget; None: the file's own bound only). ``notes`` are the log
warnings the read raised (Pillow's, named by file), for the parent to log.
"""

from __future__ import annotations

import logging
import signal
import sys
from multiprocessing.connection import Connection

from app.process import die_with_parent
from indexer.reading import DeviceInputBudget, read_file


class _Notes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def main(task_fd: int, result_fd: int) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    tasks, results = Connection(task_fd, writable=False), Connection(result_fd, readable=False)
    notes = _Notes()
    sagashi = logging.getLogger("sagashi")
    sagashi.addHandler(notes)
    sagashi.propagate = False
    try:
        spec = tasks.recv()
        while (task := tasks.recv()) is not None:
            path, expect, allowance = task
            budget = None if allowance is None else DeviceInputBudget(allowance)
            results.send((read_file(spec, path, expect, budget), notes.take()))
    except (EOFError, BrokenPipeError):
        return  # the indexer is gone or done


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))

"""Progress bars on stderr for long operations (hidden when stderr is not a terminal)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)


class _Progress(Progress):
    """A bar that, hidden, prints nothing when it stops: rich before 14.3 ends a hidden bar
    with an empty line on stderr, before the summary or the one-line error."""

    def stop(self) -> None:
        if not self.disable:
            super().stop()


def progress_bar(unit: str = "files") -> Progress:
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not stderr_console.is_terminal,
        transient=False,
    )


def rate_text(done: int, seconds: float, unit: str) -> str:
    return f"{done / seconds:.1f} {unit}/s" if seconds > 0 else f"- {unit}/s"


@contextmanager
def migration_bar() -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` for migrations that work through every image (0006 reads
    each file for its md5): a bar that appears with the first report of a non-zero total."""
    started = time.perf_counter()
    with progress_bar() as bar:
        task: TaskID | None = None

        def report(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                if not total:
                    return
                task = bar.add_task("migrating: md5 of indexed files", total=total, rate="")
            rate = rate_text(done, time.perf_counter() - started, "files")
            bar.update(task, completed=done, rate=rate)

        yield report

"""Progress bars on stderr for long operations (hidden when stderr is not a terminal)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)


def progress_bar(unit: str = "files") -> Progress:
    return Progress(
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

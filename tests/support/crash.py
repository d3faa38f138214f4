"""kill -9 of a real ``sagashi`` run at a chosen moment, for the crash tests: the run is
started, watched, and killed the moment what it has done so far says so.

Watching a free-running process by polling kills it late by however much it does in one
poll, and on a loaded CI machine the watcher can lose the CPU for far longer than its poll
(a run then finishes its last batch before the kill lands). ``paced`` runs it in short
slices instead, stopped (SIGSTOP) while ``ready()`` is checked, so the kill lands within
one slice of the moment chosen whatever the load. The slice must be short: with the tiny
test model a run commits a batch of 8 in a few milliseconds (slices of 50 ms let a kill
meant for image 80 land after all 160)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from tests.support.cli import SAGASHI


def kill_when(
    args: list[str],
    env: dict[str, str],
    ready: Callable[[], bool],
    poll: float,
    new_session: bool = False,
    after_kill: Callable[[int], None] | None = None,
    paced: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``sagashi *args`` and kill -9 it as soon as ``ready()`` holds (checked every
    ``poll`` seconds, for at most 300 s); a run that ends first is left to end. The process
    returns waited for, its exit status in ``returncode``; ``after_kill(pid)`` runs after it
    has gone either way (to end what the run started in its own session). ``paced``: the
    run goes ``poll`` seconds at a time, stopped while ``ready()`` is checked."""
    process = subprocess.Popen(
        [SAGASHI, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    try:
        (step_until if paced else poll_until)(process, ready, poll)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if after_kill is not None:
            after_kill(process.pid)
    return process


def poll_until(process: subprocess.Popen[Any], ready: Callable[[], bool], poll: float) -> None:
    """Return once ``ready()`` holds or the process has ended (at most 300 s)."""
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            return
        time.sleep(poll)


def step_until(process: subprocess.Popen[Any], ready: Callable[[], bool], step: float) -> None:
    """Run the process ``step`` seconds at a time, stopped while ``ready()`` is checked;
    return with it stopped once ``ready()`` holds, or once it has ended (at most 300 s)."""
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        os.kill(process.pid, signal.SIGSTOP)
        if ready():
            return
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(step)

"""kill -9 of a real ``sagashi`` run at a chosen moment, for the crash tests: the run is
started, watched, and killed the moment what it has done so far says so."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from tests.support.cli import SAGASHI


def kill_when(
    args: list[str],
    env: dict[str, str],
    ready: Callable[[], bool],
    poll: float,
    new_session: bool = False,
    after_kill: Callable[[int], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``sagashi *args`` and kill -9 it as soon as ``ready()`` holds (checked every
    ``poll`` seconds, for at most 300 s); a run that ends first is left to end. The process
    returns waited for, its exit status in ``returncode``; ``after_kill(pid)`` runs after it
    has gone either way (to end what the run started in its own session)."""
    process = subprocess.Popen(
        [SAGASHI, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                break
            time.sleep(poll)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if after_kill is not None:
            after_kill(process.pid)
    return process

"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import ctypes
import logging
import signal
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies. Without it, a
    parent killed with SIGKILL (the OOM killer, kill -9) leaves its children running: server
    workers holding the port, a segment merge holding memory for nothing."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        log.warning("could not tie this process to its parent: errno %d", ctypes.get_errno())

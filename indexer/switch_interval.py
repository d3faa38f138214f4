"""The interpreter's switch interval, shortened while a run's threads hand the GIL around.

Reader threads give the GIL up in every call into Pillow or hashlib (about ten a file), and
staging threads in every torch call; each one wanting it back while another thread runs
Python (the writer, the model thread) waits for that thread's switch interval to end.
With Pillow fed whole files, CPython's 5 ms still made a real anime PNG cost 88 ms beside
one busy thread instead of 36 alone; 1 ms made it 48 (docs/benchmarks.md). The interval is
process-wide: it is shortened while any reader pool or batch pipeline runs, and the
interpreter's own value comes back when the last ends.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SWITCH_INTERVAL_S = 0.001


class _SwitchInterval:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = 0.0

    @contextmanager
    def shortened(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = sys.getswitchinterval()
                # Never longer than the interpreter's: a user's shorter one is kept.
                sys.setswitchinterval(min(self._saved, SWITCH_INTERVAL_S))
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    sys.setswitchinterval(self._saved)


short_switch_interval = _SwitchInterval().shortened

"""A real ``sagashi serve`` process on a free port, for tests that need the real uvicorn
(its protocol, timeouts and limits) rather than an app in the test process."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.cli import SAGASHI, run_sagashi
from tests.support.network import free_port, wait_for


@contextmanager
def sagashi_serve(root: Path, settings: dict[str, str]) -> Iterator[str]:
    """Migrates a fresh database under root, serves it, yields the base URL; on exit stops the
    server and checks it shut down cleanly. The log goes to root/serve.log (a pipe nobody
    reads would fill up and stall the server)."""
    # One process unless the test asks for more: limits and timeouts are per process.
    environment = {"SAGASHI_DATA_DIR": str(root / "data"), "SAGASHI_WORKERS": "1", **settings}
    migrated = run_sagashi("db", "upgrade", env=environment)
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    log_path = root / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [SAGASHI, "serve", "--port", str(port)],
            env={**os.environ, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        output = log_path.read_text()
        assert "Application shutdown complete" in output, output
        assert "Traceback" not in output, output

"""A real ``sagashi serve`` process on a free port, for tests that need the real uvicorn
(its protocol, timeouts and limits) rather than an app in the test process: the one way the
tests start one and check that it stopped cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.cli import SAGASHI, run_sagashi
from tests.support.network import free_port, wait_for


@dataclass(frozen=True)
class Served:
    """A running server: its base URL, its process and the file its log goes to."""

    base: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def serving(root: Path, environment: dict[str, str], *args: str) -> Iterator[Served]:
    """``sagashi serve --port P *args`` on what ``environment`` names (no 'db upgrade' first),
    once it answers /readyz; on exit SIGTERM, and a check that it shut down cleanly. The log
    goes to root/serve.log: a pipe nobody reads would fill up and stall the server."""
    port = free_port()
    log_path = root / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [SAGASHI, "serve", "--port", str(port), *args],
            env={**os.environ, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_for(
            lambda: process.poll() is not None or httpx.get(f"{served.base}/readyz").is_success
        )
        assert process.poll() is None, served.output()
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    output = served.output()
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


@contextmanager
def sagashi_serve(root: Path, settings: dict[str, str]) -> Iterator[str]:
    """Migrates a fresh database under root, serves it, yields the base URL (see
    :func:`serving`)."""
    # One process unless the test asks for more: limits and timeouts are per process.
    environment = {"SAGASHI_DATA_DIR": str(root / "data"), "SAGASHI_WORKERS": "1", **settings}
    migrated = run_sagashi("db", "upgrade", env=environment)
    assert migrated.returncode == 0, migrated.stderr
    with serving(root, environment) as served:
        yield served.base

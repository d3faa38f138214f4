"""A real ``sagashi serve`` under pixel bombs: its peak memory, and many uploads at once
(the test of the bounds and its benchmark share them)."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Server:
    client: httpx.Client
    process: subprocess.Popen[Any]

    def peak_rss(self) -> int:
        """The server process's peak resident memory so far (VmHWM), in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024


def upload_all(server: Server, data: bytes, count: int) -> list[tuple[httpx.Response, float]]:
    """``count`` uploads of ``data`` sent at once, each with its own connection."""
    base = str(server.client.base_url)

    def one(_: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        with httpx.Client(base_url=base, timeout=60) as client:
            response = client.post(
                "/api/similar", files={"file": ("bomb.png", data, "image/png")}, data={"k": "2"}
            )
        return response, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))

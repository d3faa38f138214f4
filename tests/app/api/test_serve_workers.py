"""'sagashi serve --workers 2' with the segment engine, over real HTTP: two processes answer
on one port, searches during an index run that changes the collection are all 200, and every
worker sees the change within seconds of the run's end (each refreshes from the change log
at most once a second)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.support.api_helpers import make_library
from tests.support.cli import SAGASHI, run_sagashi
from tests.support.network import free_port, wait_for
from tests.support.serve_helpers import serving


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def counts(base: str, requests: int) -> list[int]:
    """The image count from ``requests`` searches, each on a new connection (so uvicorn's
    workers share them out)."""
    seen = []
    for _ in range(requests):
        with httpx.Client(base_url=base, timeout=30) as client:
            response = client.get("/api/search", params={"limit": 1})
            assert response.status_code == 200, response.text
            seen.append(response.json()["count"])
    return seen


def test_two_workers_share_the_segments_and_follow_changes(
    tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    make_library(tmp_path / "library", 6)
    env = {
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_SEARCH_ENGINE": "segments",
        "SAGASHI_TORCH_THREADS": "1",
    }
    assert run_sagashi("db", "upgrade", env=env).returncode == 0
    assert run_sagashi("index", str(tmp_path / "library"), env=env).returncode == 0
    with serving(tmp_path, env, "--workers", "2") as served:
        base = served.base
        # A worker accepts connections only once warm: after one 200, every new connection
        # lands on a ready worker, never on one still opening its index.
        for _ in range(20):
            with httpx.Client(base_url=base, timeout=30) as client:
                assert client.get("/readyz").status_code == 200
        wait_for(lambda: len(children(served.process.pid)) >= 2)
        assert set(counts(base, 10)) == {6}
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                with httpx.Client(base_url=base, timeout=30) as client:
                    statuses.append(client.get("/api/search", params={"q": "1girl"}).status_code)

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            make_library(tmp_path / "more", 4)
            indexed = run_sagashi("index", str(tmp_path / "more"), env=env)
            assert indexed.returncode == 0, indexed.stderr
        finally:
            stop.set()
            thread.join(60)
        assert statuses and set(statuses) == {200}
        deadline = time.monotonic() + 10
        while set(counts(base, 10)) != {10}:
            assert time.monotonic() < deadline, "a worker did not see the new images"
            time.sleep(0.2)


def test_workers_end_with_a_killed_parent(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    """kill -9 of uvicorn's parent (the OOM killer, say) must not leave its workers serving
    the port, or a restarted server could not bind it."""
    env = {"SAGASHI_DATA_DIR": str(tmp_path / "data"), "SAGASHI_SEARCH_ENGINE": "segments"}
    assert run_sagashi("db", "upgrade", env=env).returncode == 0
    port = free_port()
    server = subprocess.Popen(
        [SAGASHI, "serve", "--port", str(port), "--workers", "2"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200)
    workers = wait_for(lambda: (found := children(server.pid)) and len(found) >= 2 and found)
    server.send_signal(signal.SIGKILL)
    server.wait(30)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their parent"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

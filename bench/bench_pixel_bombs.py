"""What pixel bombs cost a real ``sagashi serve``: answers, latency and server memory.

    python -m bench.bench_pixel_bombs [--bombs 6] [--baseline-code DIR]

Starts ``sagashi serve`` (tiny model, default settings) on a small index, sends ``--bombs``
13,000 x 13,000 PNGs of zeros (169 MP in about 160 KB) at once to ``POST /api/similar``,
then eight 4,400 x 4,400 PNGs (19 MP, under the upload limit) at once, and reports the
answers, the slowest one and the growth of the server's peak resident memory (``VmHWM``).
``--baseline-code DIR`` runs the same against another checkout first (for example a
``git worktree`` of the commit before a change), in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import machine
from tests.support.api_helpers import make_library
from tests.support.bad_images import png_bomb
from tests.support.network import free_port, wait_for
from tests.support.pixel_bombs import Server, upload_all
from tests.support.tiny_models import build_tiny_pixai

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from indexer.cli import main; sys.argv[0] = 'sagashi'; main()"


def serve(code: Path, root: Path, model: Path) -> Server:
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "SAGASHI_DATA_DIR": str(root / "data"),
        "SAGASHI_MODEL_DIR": str(model),
        "SAGASHI_DEVICE": "cpu",
        "SAGASHI_TORCH_THREADS": "1",
        "SAGASHI_MODEL_LOAD": "startup",
        "SAGASHI_WORKERS": "1",  # the memory measured is the one server process's
    }
    command = [sys.executable, "-c", CLI]
    for args in (["db", "upgrade"], ["index", str(root / "library")]):
        subprocess.run(command + args, env=env, cwd=code, check=True, capture_output=True)
    port = free_port()
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)],
        env=env,
        cwd=code,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    wait_for(lambda: client.get("/readyz").status_code == 200, 120)
    return Server(client, process)


def measure(server: Server, label: str, size: int, count: int) -> dict[str, object]:
    data = png_bomb(size, size)
    before = server.peak_rss()
    started = time.monotonic()
    answers = upload_all(server, data, count)
    statuses = Counter(response.status_code for response, _ in answers)
    return {
        "code": label,
        "image": f"{size}x{size}",
        "bytes": len(data),
        "at_once": count,
        "answers": dict(sorted(statuses.items())),
        "slowest_s": round(max(seconds for _, seconds in answers), 2),
        "wall_s": round(time.monotonic() - started, 2),
        "rss_growth_mb": round((server.peak_rss() - before) / 2**20),
    }


def run(code: Path, label: str, bombs: int, work: Path, model: Path) -> None:
    root = work / label
    make_library(root / "library", 4)
    server = serve(code, root, model)
    try:
        for size, count in ((13_000, bombs), (4_400, 8)):
            print(json.dumps(measure(server, label, size, count)), flush=True)
    finally:
        server.client.close()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bombs", type=int, default=6)
    parser.add_argument("--baseline-code", type=Path, default=None)
    args = parser.parse_args()
    print(json.dumps(machine()))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = work / "model"
        model.mkdir()
        build_tiny_pixai(model)
        if args.baseline_code is not None:
            run(args.baseline_code.resolve(), "baseline", args.bombs, work, model)
        run(REPO, "current", args.bombs, work, model)


if __name__ == "__main__":
    main()

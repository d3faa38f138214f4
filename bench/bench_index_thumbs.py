"""Thumbnails at index time (SAGASHI_INDEX_THUMBS): what they cost 'sagashi index', and the
first gallery view (the first 60 thumbnails, fetched 6 at a time as a browser does) from a
fresh 'sagashi serve' with and without them.

    python -m bench.bench_index_thumbs --model-dir ./models/pixai-v0.9-onnx --images 300

Without --model-dir it builds the tests' tiny PixAI model (random weights, a 2-layer ViT):
inference then costs next to nothing, so the thumbnails' share of the run is an upper bound
of what a real model's run pays. Images are generated JPEG photos-like noise of --size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

FIRST_VIEW = 60
SAGASHI = str(Path(sys.executable).with_name("sagashi"))


def make_images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    for i in range(count):
        tile = np.roll(base, i, axis=0)
        image = Image.fromarray(tile).resize((size, size * 3 // 4), Image.Resampling.BILINEAR)
        image.save(folder / f"{i:05d}.jpg", quality=90)


def index(library: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [SAGASHI, "index", str(library)], env={**os.environ, **env}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def first_view(env: dict[str, str]) -> float:
    port = free_port()
    server = subprocess.Popen(
        [SAGASHI, "serve", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=120) as client:
            started = time.perf_counter()
            items = client.get("/api/search", params={"limit": FIRST_VIEW}).json()["items"]

            def thumb(item: dict[str, int]) -> int:
                return client.get(f"/api/images/{item['id']}/thumb").status_code

            with ThreadPoolExecutor(6) as pool:  # a browser's connections per host
                statuses = list(pool.map(thumb, items))
            elapsed = time.perf_counter() - started
        assert statuses == [200] * len(items), statuses
        return elapsed
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=1600, help="Width of the images.")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-thumbs-"))
    try:
        model_dir = args.model_dir
        if model_dir is None:
            sys.path.insert(0, str(Path(__file__).parents[1]))
            from tests.support.tiny_models import build_tiny_pixai

            model_dir = build_tiny_pixai(root / "tiny")
        library = root / "library"
        make_images(library, args.images, args.size)
        print(f"{args.images} JPEGs {args.size}x{args.size * 3 // 4}, model {model_dir}")
        for run in range(args.runs):
            for setting in ("false", "true"):
                data = root / f"data-{setting}-{run}"
                env = {
                    "SAGASHI_DATA_DIR": str(data),
                    "SAGASHI_MODEL_DIR": str(model_dir),
                    "SAGASHI_INDEX_THUMBS": setting,
                    "SAGASHI_WORKERS": "1",
                }
                seconds = index(library, env)
                view = first_view(env)
                print(
                    f"run {run + 1} SAGASHI_INDEX_THUMBS={setting:5}: index {seconds:6.1f} s "
                    f"({args.images / seconds:5.1f} img/s), first view of {FIRST_VIEW} "
                    f"thumbnails {view:5.2f} s",
                    flush=True,
                )
                shutil.rmtree(data)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""HTTP API latency and upload throughput, against a real 'sagashi serve' process.

    python -m bench.bench_api --images 100000

1. Search over HTTP: the tag-query mix of bench_search, each a GET /api/search page of 40
   items with their top tags, from one keep-alive client; the baseline is the same queries
   through an in-process SearchService (no HTTP, no JSON, no top tags), measured in the
   same run. Then the same queries from --clients concurrent clients: requests per second.
2. Uploads: POST /api/tag of generated 512x512 JPEGs, one client at a time versus
   --clients at once, images per second. The server runs the tiny test model
   (tests/support/tiny_models.py), so this measures the request path and the micro-batcher, not
   the real EVA02-Large (see bench_tagger.py for that).
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
from PIL import Image

from app.search.service import SearchService
from app.store.aliases import load_aliases
from app.store.db import create_db_engine
from bench.bench_search import latencies, prepared_database, query_mix, ranked_tags
from bench.common import latency_table, machine
from tests.support.tiny_models import build_tiny_pixai

log = logging.getLogger("bench.api")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(
    url: str, data_dir: Path, model_dir: Path, workers: int = 1
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    environment = {
        **os.environ,
        "SAGASHI_DATABASE_URL": url,
        "SAGASHI_DATA_DIR": str(data_dir),
        "SAGASHI_MODEL_DIR": str(model_dir),
        "SAGASHI_MODEL_LOAD": "startup",
        "SAGASHI_DEVICE": "cpu",
        "SAGASHI_LOG_LEVEL": "WARNING",
        "SAGASHI_WORKERS": str(workers),
    }
    sagashi = str(Path(sys.executable).with_name("sagashi"))
    process = subprocess.Popen([sagashi, "serve", "--port", str(port)], env=environment, text=True)
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit("the server exited during start-up")
        time.sleep(0.5)
    log.info("server ready in %.1fs", time.perf_counter() - started)
    return process, base


def http_latencies(base: str, queries: list[str]) -> np.ndarray:
    times = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for text in queries:
            started = time.perf_counter()
            response = client.get("/api/search", params={"q": text, "limit": 40})
            response.raise_for_status()
            times.append(time.perf_counter() - started)
    return np.array(times) * 1000


def concurrent_rate(clients: int, work: Sequence[T], call: Callable[[T], object]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(call, work))
    return len(work) / (time.perf_counter() - started)


def search_part(url: str, data_dir: Path, base: str, queries: int, clients: int) -> None:
    engine = create_db_engine(url)
    mix = query_mix(ranked_tags(engine), queries)
    service = SearchService(engine, data_dir, load_aliases(), "memory")
    latencies(service, mix[:50])
    direct = latencies(service, mix)
    http_latencies(base, mix[:50])
    over_http = http_latencies(base, mix)
    latency_table(
        log,
        "path",
        [("in-process SearchService (baseline)", direct), ("GET /api/search", over_http)],
    )
    local = httpx.Client(base_url=base, timeout=120, limits=httpx.Limits(max_connections=clients))

    def one(text: str) -> None:
        local.get("/api/search", params={"q": text, "limit": 40}).raise_for_status()

    one_client = concurrent_rate(1, list(mix), one)
    many = concurrent_rate(clients, list(mix), one)
    log.info(
        "search throughput: 1 client %.0f req/s, %d clients %.0f req/s", one_client, clients, many
    )
    local.close()
    engine.dispose()


def upload_part(base: str, uploads: int, clients: int) -> None:
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(uploads):
        pixels = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        bodies.append({"inputs": {"image": base64.b64encode(buffer.getvalue()).decode()}})
    client = httpx.Client(base_url=base, timeout=120, limits=httpx.Limits(max_connections=clients))

    def tag(body: dict[str, dict[str, str]]) -> None:
        client.post("/api/tag", json=body).raise_for_status()

    concurrent_rate(1, bodies[:8], tag)  # warm-up
    sequential = concurrent_rate(1, list(bodies), tag)
    parallel = concurrent_rate(clients, list(bodies), tag)
    log.info(
        "POST /api/tag (tiny model, 512x512 JPEG): 1 client %.1f img/s, %d clients %.1f img/s "
        "(%.2fx)",
        sequential,
        clients,
        parallel,
        parallel / sequential,
    )
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--uploads", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    log.info("machine: %s", machine())
    url = prepared_database(args.work, args.images)
    data_dir = args.work / f"data-{args.images}"
    model_dir = build_tiny_pixai(Path(tempfile.mkdtemp(prefix="sagashi-tiny-")))
    process, base = start_server(url, data_dir, model_dir)
    try:
        search_part(url, data_dir, base, args.queries, args.clients)
        upload_part(base, args.uploads, args.clients)
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    main()

"""Load: concurrent clients with mixed traffic against a real 'sagashi serve', and abuse.

    python -m bench.bench_load --images 100000 --clients 16 --seconds 60 [--workers 1 2]

On the synthetic --images database of bench_search (imported once), a 'sagashi serve'
process gets, for --seconds each, first from one client (the baseline) and then from
--clients concurrent clients (asyncio + httpx, keep-alive), a mix of 60% tag searches (the
bench_search query mix), 20% autocomplete (prefixes of real tag names) and 20% similarity
searches by image id, half of them filtered. Reported: requests, errors (anything but
2xx), throughput and p50/p99 latency per kind, and the load generator's own CPU time (it
shares the machine with the server). With several --workers counts, a server with each
count in turn (SAGASHI_WORKERS) gets the same traffic. Then abusive queries, each timed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import func, select

from app.store.db import create_db_engine, session_factory
from app.store.models import Image
from bench.bench_api import start_server
from bench.bench_search import prepared_database, query_mix, ranked_tags
from bench.common import latency_table, machine
from tests.support.tiny_models import build_tiny_pixai

log = logging.getLogger("bench.load")

ABUSE = {
    "10k-character query (limit is 10,000)": "a " * 4_999,
    "1,000 nested parentheses": "(" * 1000 + "solo" + ")" * 1000,
    "10k-term OR list (cut at 10,000 characters)": " or ".join(f"t{i}" for i in range(10_000))[
        :10_000
    ],
    "wildcard matching everything": "*",
    "four wildcards": "a* b* c* d*",
    "order:random over everything": "order:random",
}


class Traffic:
    def __init__(self, tags: list[tuple[str, int]], max_id: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.queries = query_mix(tags, 2000, seed)
        self.names = [name for name, _ in tags[:3000] if name.isascii()]
        self.max_id = max_id

    def next(self) -> tuple[str, str, dict[str, str | int]]:
        roll = self.rng.random()
        if roll < 0.6:
            q = self.rng.choice(self.queries)
            return "search", "/api/search", {"q": q, "limit": 40}
        if roll < 0.8:
            name = self.rng.choice(self.names)
            prefix = name[: self.rng.randint(1, min(4, len(name)))]
            return "autocomplete", "/api/tags", {"prefix": prefix, "limit": 10}
        image_id = self.rng.randint(1, self.max_id)
        body: dict[str, str | int] = {"image_id": image_id, "k": 20}
        if self.rng.random() < 0.5:
            body["q"] = self.rng.choice(self.queries[:200]).split(" order:")[0]
        return "similar", "/api/similar", body


async def client_loop(
    base: str, traffic: Traffic, until: float, results: dict[str, list[float]], errors: list[str]
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while time.perf_counter() < until:
            kind, path, params = traffic.next()
            started = time.perf_counter()
            try:
                if kind == "similar":
                    response = await client.post(path, json=params)
                else:
                    response = await client.get(path, params=params)
                ok = 200 <= response.status_code < 300
                reason = f"{kind} {response.status_code} {response.text[:120]}"
            except httpx.HTTPError as exc:
                ok, reason = False, f"{kind} {type(exc).__name__}"
            results[kind].append(time.perf_counter() - started)
            if not ok:
                errors.append(reason)


async def run_load(base: str, traffic: Traffic, clients: int, seconds: float) -> None:
    results: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    until = time.perf_counter() + seconds
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(
        *(client_loop(base, traffic, until, results, errors) for _ in range(clients))
    )
    elapsed = time.perf_counter() - started
    total = sum(len(v) for v in results.values())
    log.info(
        "%d clients, %.0f s: %d requests, %d errors, %.1f requests/s; the load generator "
        "used %.0f%% of one core",
        clients,
        elapsed,
        total,
        len(errors),
        total / elapsed,
        100 * (time.process_time() - cpu) / elapsed,
    )
    rows = [(kind, np.array(values) * 1000) for kind, values in sorted(results.items())]
    latency_table(log, "kind", rows)
    for reason in errors[:10]:
        log.info("error: %s", reason)


def abuse(base: str) -> None:
    log.info("| abusive query | status | ms |")
    log.info("|---|---|---|")
    with httpx.Client(base_url=base, timeout=120) as client:
        for name, query in ABUSE.items():
            started = time.perf_counter()
            response = client.get("/api/search", params={"q": query, "limit": 40})
            elapsed = (time.perf_counter() - started) * 1000
            code = response.status_code
            detail = response.json().get("error", {}).get("code", "") if code >= 400 else ""
            log.info("| %s | %d %s | %.1f |", name, code, detail, elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="server processes")
    parser.add_argument("--no-abuse", action="store_true", help="skip the abusive queries")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument(
        "--database-url", default=None, help="e.g. postgresql://user@host/db (default: SQLite)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    log.info("machine: %s", machine())
    url = prepared_database(args.work, args.images, args.database_url)
    backend = url.split(":", 1)[0]
    engine = create_db_engine(url)
    tags = ranked_tags(engine)
    with session_factory(engine)() as session:
        max_id = session.scalar(select(func.max(Image.id))) or 1
    engine.dispose()
    model_dir = build_tiny_pixai(args.work / "tiny-model")
    # SQLite shares bench_search's folder (its FAISS files and segments)
    data_dir = args.work / (f"data-{args.images}" + ("" if backend == "sqlite" else f"-{backend}"))
    for workers in args.workers:
        process, base = start_server(url, data_dir, model_dir, workers)
        log.info("## %d server worker process(es)", workers)
        try:
            httpx.post(f"{base}/api/similar", json={"image_id": 1, "k": 1}, timeout=600)
            for clients in (1, args.clients):
                traffic = Traffic(tags, max_id, seed=clients)
                asyncio.run(run_load(base, traffic, clients, args.seconds))
            if not args.no_abuse:
                abuse(base)
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()

"""Shared helpers for the benchmarks: machine description, the real-data location, results
and scratch databases."""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import Engine, create_engine, text

from app.store import migrate
from app.store.db import create_db_engine

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, {gpu}"
    )


def latency_table(log: logging.Logger, first: str, rows: Sequence[tuple[str, np.ndarray]]) -> None:
    """Log a Markdown table of latencies in milliseconds: p50, p99 and mean per row."""
    log.info("| %s | queries | p50 ms | p99 ms | mean ms |", first)
    log.info("|---|---|---|---|---|")
    for name, values in rows:
        log.info(
            "| %s | %d | %.2f | %.2f | %.2f |",
            name,
            len(values),
            np.percentile(values, 50),
            np.percentile(values, 99),
            values.mean(),
        )


def emit(results: object, out: str | Path | None, indent: int = 1) -> None:
    """A bench's results as JSON on stdout, and in ``out`` when given."""
    shown = json.dumps(results, indent=indent)
    print(shown)
    if out:
        Path(out).write_text(shown)


@contextmanager
def scratch_database(url: str | None, work: Path) -> Iterator[str]:
    """SQLite in ``work``, or a fresh schema in the PostgreSQL at ``url``, dropped after."""
    if url is None:
        yield f"sqlite:///{work / 'bench.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        joiner = "&" if "?" in url else "?"
        yield f"{url}{joiner}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def measured_on_scratch(
    url: str | None, measure: Callable[[Engine], dict[str, object]]
) -> dict[str, object]:
    """``measure``'s results on a freshly migrated scratch database, with the machine."""
    with tempfile.TemporaryDirectory() as tmp, scratch_database(url, Path(tmp)) as scratch:
        migrate.upgrade(scratch)
        engine = create_db_engine(scratch)
        try:
            return {"machine": machine(), **measure(engine)}
        finally:
            engine.dispose()

"""Shared helpers for the benchmarks: machine description and the real-data location."""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

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
    text = json.dumps(results, indent=indent)
    print(text)
    if out:
        Path(out).write_text(text)

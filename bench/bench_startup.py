"""How long the ``sagashi`` command takes to start, for the commands that run no model.

    python -m bench.bench_startup --runs 10

Each case is a fresh process, run --runs times after one warm-up (the page cache holds the
files); the table gives the median and the fastest wall time. The same-run baseline is the
CLI with the tagger module (and so torch) imported first, which is what every command paid
before 2026-11-28, when torch became an import of the commands that run a model only.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine

log = logging.getLogger("bench.startup")
SAGASHI = str(Path(sys.executable).with_name("sagashi"))
# What the CLI imported at start before: the tagger module, which brings torch.
PRELOAD = "import app.tagger.timm_tagger; from indexer.cli import main; sys.argv = {argv!r}; main()"


def cases() -> list[tuple[str, list[str]]]:
    python = [sys.executable, "-c"]
    return [
        ("sagashi --help", [SAGASHI, "--help"]),
        ("sagashi search 'ratng:s' (exits 2: bad query)", [SAGASHI, "search", "ratng:s"]),
        (
            "baseline: the tagger module (torch) imported, then --help",
            [*python, "import sys; " + PRELOAD.format(argv=["sagashi", "--help"])],
        ),
        (
            "baseline: the tagger module imported, then search 'ratng:s'",
            [*python, "import sys; " + PRELOAD.format(argv=["sagashi", "search", "ratng:s"])],
        ),
    ]


def wall_times(command: list[str], runs: int, env: dict[str, str]) -> list[float]:
    subprocess.run(command, capture_output=True, env=env, check=False)  # warm the page cache
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("machine: %s", machine())
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "SAGASHI_DATA_DIR": data_dir}
        log.info("| command | median s | fastest s |")
        log.info("|---|---|---|")
        for name, command in cases():
            times = wall_times(command, args.runs, env)
            log.info("| %s | %.2f | %.2f |", name, statistics.median(times), min(times))


if __name__ == "__main__":
    main()

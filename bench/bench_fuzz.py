"""Parser fuzz at volume: generated query strings through the parser, outcomes counted.

    python -m bench.bench_fuzz --queries 1000000

Uses the generator of tests/app/api/test_reliability.py, tests/support/query_fuzz.py (the
grammar's own pieces glued at random, plus random characters). Any exception other than
QueryError stops the run with it.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter

from app.query import QueryError, parse
from bench.common import machine
from tests.support.query_fuzz import generated_queries

log = logging.getLogger("bench.fuzz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("machine: %s", machine())
    outcomes: Counter[str] = Counter()
    started = time.perf_counter()
    for text in generated_queries(args.queries, args.seed):
        try:
            parse(text)
            outcomes["parsed"] += 1
        except QueryError as exc:
            outcomes[f"refused: {exc.code}"] += 1
    elapsed = time.perf_counter() - started
    log.info(
        "%d queries in %.1f s (%.0f/s); no exception but QueryError",
        args.queries,
        elapsed,
        args.queries / elapsed,
    )
    for outcome, count in outcomes.most_common():
        log.info("| %s | %d |", outcome, count)


if __name__ == "__main__":
    main()

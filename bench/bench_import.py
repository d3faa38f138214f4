"""Import rate and on-disk size of ``sagashi import`` at scale, per database.

    python -m bench.bench_import --images 100000                     # SQLite
    python -m bench.bench_import --images 1000000 --database-url postgresql+psycopg://postgres@127.0.0.1/test
    python -m bench.bench_import --images 100000 --baseline   # the previous code's way first
    python -m bench.bench_import --format parquet --reader-only --baseline   # Parquet reading

Generates the synthetic predictions (bench/synthetic.py, JSONL + row-aligned .npy, real
PixAI tag frequencies, ~60 tags per image) once into --work, then times the import alone:
parsing, validation, alias normalisation and every database write. The FAISS build that
follows an import is timed separately (--no-faiss skips it).

--baseline first imports the same data as the code before 2026-11-28 (second session) did,
into a fresh database in the same run: the file read in the importer's own process and, on
SQLite, 4 KiB pages. --split adds a run with 16 KiB pages still read in-process, to tell the
two changes apart.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from app.store import migrate
from app.store.aliases import load_aliases
from app.store.db import SQLITE_PAGE_SIZE, create_db_engine
from app.store.vectors import rebuild
from app.tagger.vocab import load_pixai_vocabulary
from bench.common import machine
from bench.synthetic import SyntheticCorpus, write_dataset
from indexer.importer import Importer, ImportOptions, Prepared, Row, prepare, read_rows

log = logging.getLogger("bench.import")


def dataset(work: Path, images: int, fmt: str = "jsonl") -> Path:
    target = work / f"synthetic-{images}.{fmt}"
    if not target.exists():
        started = time.perf_counter()
        write_dataset(SyntheticCorpus(images), target, "npy" if fmt == "jsonl" else fmt)
        log.info("generated %d images in %.0fs", images, time.perf_counter() - started)
    return target


def database_size(url: str, engine_path: Path | None) -> int:
    if engine_path is not None:
        return sum(p.stat().st_size for p in engine_path.parent.glob(engine_path.name + "*"))
    engine = create_db_engine(url)
    with engine.connect() as connection:
        size = connection.execute(
            text(
                "select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c "
                "join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = current_schema() and c.relkind = 'r'"
            )
        ).scalar()
    engine.dispose()
    return int(size or 0)


def fresh_database(url: str | None, work: Path, name: str) -> tuple[str, Path | None]:
    """An empty database for one measurement: a new SQLite file, or a new PostgreSQL schema."""
    if url is None:
        sqlite_file = work / f"{name}.db"
        for old in work.glob(sqlite_file.name + "*"):
            old.unlink()
        return f"sqlite:///{sqlite_file}", sqlite_file
    engine = create_db_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    engine.dispose()
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{name}", None


@dataclass(frozen=True)
class Variant:
    label: str
    child: bool  # read the file in a child process
    page_size: int  # SQLite only


def pin_page_size(sqlite_file: Path, page_size: int) -> None:
    """Create the file with this page size; a table makes it stick (the migrations would
    otherwise set theirs on the still-empty file)."""
    connection = sqlite3.connect(sqlite_file)
    connection.execute(f"PRAGMA page_size={page_size}")
    connection.execute("CREATE TABLE bench_page_size (x)")
    connection.close()


def measure(
    url: str,
    sqlite_file: Path | None,
    source: Path,
    options: ImportOptions,
    variant: Variant,
    faiss: bool,
) -> dict[str, Any]:
    if sqlite_file is not None:
        pin_page_size(sqlite_file, variant.page_size)
    migrate.upgrade(url)
    engine = create_db_engine(url)
    started = time.perf_counter()
    summary = Importer(engine, options).run_file(source, child=variant.child)
    imported = time.perf_counter() - started
    faiss_seconds, kind = float("nan"), "skipped"
    if faiss:
        started = time.perf_counter()
        kind = rebuild(engine, source.parent / "data", 1).meta.kind
        faiss_seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "images": summary.new,
        "seconds": imported,
        "size": database_size(url, sqlite_file),
        "faiss": faiss_seconds,
        "kind": kind,
    }


def older_parquet_rows(path: Path) -> Iterator[Row]:
    """The Parquet reader before 2026-11-28 (third session), kept as the baseline: every
    column through ``to_pydict``, embeddings included."""
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        columns = batch.to_pydict()
        for i in range(batch.num_rows):
            number += 1
            tags = columns.get("tag", [None] * batch.num_rows)[i]
            scores = columns.get("score", [None] * batch.num_rows)[i]
            raw: dict[str, Any] = {
                k: columns[k][i] for k in ("path", "sha256", "width", "height") if k in columns
            }
            if tags is not None and scores is not None:
                raw["tags"] = dict(zip(tags, scores, strict=False))
            vector = columns.get("embedding", [None] * batch.num_rows)[i]
            yield Row(number, raw, None if vector is None else np.asarray(vector, np.float32))


def time_reader(rows: Iterator[Row], options: ImportOptions) -> tuple[int, float]:
    """(valid rows, seconds) to read and validate, with no database."""
    started = time.perf_counter()
    count = sum(
        len(item.facts) for item in prepare(rows, options, set()) if isinstance(item, Prepared)
    )
    return count, time.perf_counter() - started


def readers(source: Path, options: ImportOptions, baseline: bool) -> None:
    runs: list[tuple[str, Callable[[], Iterator[Row]]]] = [
        ("current", lambda: read_rows(source, None))
    ]
    if baseline and source.suffix == ".parquet":
        runs.insert(0, ("baseline (older Parquet reader)", lambda: older_parquet_rows(source)))
    log.info("| reader | format | rows | s | rows/s |")
    log.info("|---|---|---|---|---|")
    for label, rows in runs:
        count, seconds = time_reader(rows(), options)
        log.info(
            "| %s | %s | %d | %.1f | %.0f |", label, source.suffix, count, seconds, count / seconds
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first import the same data as the previous code did: read in-process with "
        "4 KiB pages (see above)",
    )
    parser.add_argument(
        "--split", action="store_true", help="with --baseline: also 16 KiB pages, in-process"
    )
    parser.add_argument("--no-faiss", action="store_true", help="skip the FAISS builds")
    parser.add_argument(
        "--format", choices=["jsonl", "parquet"], default="jsonl", help="jsonl: with a .npy"
    )
    parser.add_argument(
        "--reader-only",
        action="store_true",
        help="time reading and validation alone, no database; with --baseline and "
        "--format parquet, the older Parquet reader first",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    source = dataset(args.work, args.images, args.format)
    vocab = load_pixai_vocabulary(Path(f"{source}.vocab.json"), None)
    options = ImportOptions("synthetic", vocab, load_aliases(), 0.05, strict=False)
    if args.reader_only:
        log.info("machine: %s", machine())
        readers(source, options, args.baseline)
        return
    runs = [Variant("current", True, SQLITE_PAGE_SIZE)]
    if args.baseline:
        runs.insert(0, Variant("baseline", False, 4096))
        if args.split and not args.database_url:  # pages are SQLite's
            runs.insert(1, Variant("16 KiB pages only", False, 16384))
    log.info("machine: %s", machine())
    dialect = "postgresql" if args.database_url else "sqlite"
    results = []
    for number, variant in enumerate(runs):
        url, sqlite_file = fresh_database(args.database_url, args.work, f"import_{number}")
        r = measure(url, sqlite_file, source, options, variant, not args.no_faiss)
        results.append(row_text(variant.label, dialect, r))
        log.info("done: %s", results[-1])  # a long run that is stopped keeps what it measured
    log.info("| run | database | images | import s | images/s | DB size GB | FAISS build s |")
    log.info("|---|---|---|---|---|---|---|")
    for line in results:
        log.info("%s", line)


def row_text(label: str, dialect: str, r: dict[str, Any]) -> str:
    return "| {} | {} | {} | {:.0f} | {:.0f} | {:.2f} | {:.0f} ({}) |".format(
        label,
        dialect,
        r["images"],
        r["seconds"],
        r["images"] / r["seconds"],
        r["size"] / 1e9,
        r["faiss"],
        r["kind"],
    )


if __name__ == "__main__":
    main()

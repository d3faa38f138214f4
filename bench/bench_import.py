"""Import rate and on-disk size of ``sagashi import`` at scale, per database.

    python -m bench.bench_import --images 100000                     # SQLite
    python -m bench.bench_import --images 1000000 --database-url postgresql+psycopg://postgres@127.0.0.1/test
    python -m bench.bench_import --images 100000 --baseline   # the previous settings first

Generates the synthetic predictions (bench/synthetic.py, JSONL + row-aligned .npy, real
PixAI tag frequencies, ~60 tags per image) once into --work, then times the import alone:
parsing, validation, alias normalisation and every database write. The FAISS build that
follows an import is timed separately.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import text

from app.store import migrate
from app.store.aliases import load_aliases
from app.store.db import create_db_engine
from app.store.vectors import rebuild
from app.tagger.vocab import load_pixai_vocabulary
from bench.common import machine
from bench.synthetic import SyntheticCorpus, write_dataset
from indexer.importer import Importer, ImportOptions, read_rows

log = logging.getLogger("bench.import")


def dataset(work: Path, images: int) -> Path:
    target = work / f"synthetic-{images}.jsonl"
    if not target.exists():
        started = time.perf_counter()
        write_dataset(SyntheticCorpus(images), target, "npy")
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


def measure(
    url: str, sqlite_file: Path | None, source: Path, options: ImportOptions, revision: str
) -> dict[str, float]:
    migrate.upgrade(url, revision)
    engine = create_db_engine(url)
    started = time.perf_counter()
    summary = Importer(engine, options).run(read_rows(source, None))
    imported = time.perf_counter() - started
    started = time.perf_counter()
    index = rebuild(engine, source.parent / "data", 1)
    faiss_seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "images": summary.new,
        "seconds": imported,
        "size": database_size(url, sqlite_file),
        "faiss": faiss_seconds,
        "kind": index.meta.kind,  # type: ignore[dict-item]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first import the same data as the code before 2026-11-28 did: a commit per "
        "5,000 rows, the 64 MiB page cache, and (PostgreSQL) the postings' foreign keys",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    source = dataset(args.work, args.images)
    vocab = load_pixai_vocabulary(Path(f"{source}.vocab.json"), None)
    current = ImportOptions("synthetic", vocab, load_aliases(), 0.05, strict=False)
    runs = [("current", current, "head")]
    if args.baseline:
        before = replace(current, commit_every=current.batch_size, cache_mb=64)
        runs.insert(0, ("baseline", before, "0004"))
    log.info("machine: %s", machine())
    results = []
    for label, options, revision in runs:
        url, sqlite_file = fresh_database(args.database_url, args.work, f"import_{label}")
        results.append((label, measure(url, sqlite_file, source, options, revision)))
    log.info("| run | database | images | import s | images/s | DB size GB | FAISS build s |")
    log.info("|---|---|---|---|---|---|---|")
    dialect = "postgresql" if args.database_url else "sqlite"
    for label, r in results:
        log.info(
            "| %s | %s | %d | %.0f | %.0f | %.2f | %.0f (%s) |",
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

"""Import rate and on-disk size of ``sagashi import`` at scale, per database.

    python -m bench.bench_import --images 100000                     # SQLite
    python -m bench.bench_import --images 1000000 --database-url postgresql+psycopg://postgres@127.0.0.1/test

Generates the synthetic predictions (bench/synthetic.py, JSONL + row-aligned .npy, real
PixAI tag frequencies, ~60 tags per image) once into --work, then times the import alone:
parsing, validation, alias normalisation and every database write. The FAISS build that
follows an import is timed separately.
"""

from __future__ import annotations

import argparse
import logging
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sagashi-bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    source = dataset(args.work, args.images)
    sqlite_file = None
    url = args.database_url
    if url is None:
        sqlite_file = args.work / f"import-{args.images}.db"
        for old in args.work.glob(sqlite_file.name + "*"):
            old.unlink()
        url = f"sqlite:///{sqlite_file}"
    migrate.upgrade(url)
    engine = create_db_engine(url)
    vocab = load_pixai_vocabulary(Path(f"{source}.vocab.json"), None)
    options = ImportOptions("synthetic", vocab, load_aliases(), 0.05, strict=False)
    log.info("machine: %s", machine())
    started = time.perf_counter()
    summary = Importer(engine, options).run(read_rows(source, None))
    imported = time.perf_counter() - started
    started = time.perf_counter()
    index = rebuild(engine, args.work / "data", 1)
    faiss_seconds = time.perf_counter() - started
    size = database_size(url, sqlite_file)
    log.info(
        "| database | images | import s | images/s | DB size GB | FAISS (%s) build s |",
        index.meta.kind,
    )
    log.info("|---|---|---|---|---|---|")
    log.info(
        "| %s | %d | %.0f | %.0f | %.2f | %.0f |",
        engine.dialect.name,
        summary.new,
        imported,
        summary.new / imported,
        size / 1e9,
        faiss_seconds,
    )


if __name__ == "__main__":
    main()

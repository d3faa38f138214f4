"""The import format's optional ``size``, ``mtime_ns`` and ``format``: imported files that
are unchanged on disk are skipped by the next ``sagashi index`` (what ``--ray`` relies on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.store import repository as repo
from app.store.db import create_db_engine
from app.store.digests import of_file
from app.tagger.factory import open_tagger
from indexer.importer import Importer, ImportOptions, Row
from indexer.pipeline import Indexer, IndexOptions
from tests.support.index_helpers import make_image


def test_imported_file_facts_let_the_index_skip_unchanged_files(
    migrated_url: str, tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    files = [make_image(tmp_path / "art" / f"{i}.png", seed=i) for i in range(4)]
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
    dim = tagger.info.embedding_dim
    rows = []
    for number, path in enumerate(files, start=1):
        digests, stat = of_file(str(path)), path.stat()
        raw = {
            "path": str(path),
            "sha256": digests.sha256,
            "md5": digests.md5,
            "width": 48,
            "height": 40,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "format": "png",
            "tags": {"solo": 0.9},
        }
        rows.append(Row(number, raw, np.ones(dim, dtype=np.float32)))
    bad = {**rows[0].raw, "path": str(tmp_path / "other.png"), "size": -1}
    rows.append(Row(5, bad, np.ones(dim, dtype=np.float32)))
    options = ImportOptions(
        "tiny",
        tagger.vocab,
        {},
        0.05,
        strict=False,
        identity=repo.GenerationIdentity.of(tagger.info),
    )
    engine = create_db_engine(migrated_url)
    try:
        summary = Importer(engine, options).run(iter(rows))
        assert (summary.new, summary.failures) == (
            4,
            [(5, "'size' must be a non-negative integer, got -1")],
        )
        index_options = IndexOptions(8, 1, 10**8, True, 0.05, {})
        make_image(files[0], seed=100)  # changed since it was tagged: read and tagged again
        indexed = Indexer(engine, tagger, index_options).run([tmp_path / "art"])
        assert (indexed.unchanged, indexed.modified, indexed.new) == (3, 1, 0)
    finally:
        engine.dispose()

"""md5 beside sha256: computed from the same bytes when indexing and importing, backfilled
from the files by migration 0006 (with its progress reported), and searchable as ``md5:``
on every engine, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text

from app.search.service import SearchRequest, SearchService
from app.store.db import create_db_engine, session_factory
from app.store.migrate import upgrade
from app.store.models import Image
from indexer.importer import Importer, ImportOptions
from indexer.jobs import index_options
from indexer.pipeline import Indexer
from tests.support.api_helpers import make_library, settings_for
from tests.support.cli import SAGASHI
from tests.support.index_helpers import make_image


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _insert_at_0005(url: str, rows: list[tuple[str, str]]) -> None:
    """Image rows as a database of schema 0005 holds them (no md5 column yet)."""
    engine = create_db_engine(url)
    stamp = datetime.now(UTC)
    with engine.begin() as connection:
        for path, sha in rows:
            connection.execute(
                text(
                    "INSERT INTO images (path, sha256, size_bytes, width, height, format, "
                    "mtime_ns, indexed_at) VALUES (:path, :sha, 1, 1, 1, 'png', 1, :stamp)"
                ),
                {"path": path, "sha": sha, "stamp": stamp},
            )
    engine.dispose()


def _md5s(url: str) -> dict[str, str | None]:
    engine = create_db_engine(url)
    with engine.connect() as connection:
        found = dict(connection.execute(select(Image.path, Image.md5)).all())  # type: ignore[arg-type]
    engine.dispose()
    return found


def test_migration_backfills_md5_from_the_files(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url, "0005")
    files = make_library(tmp_path / "library", 5)
    changed = files[3]
    rows = [(str(p), sha_of(p)) for p in files]
    rows.append((str(tmp_path / "imported-without-its-file.png"), "e" * 64))
    _insert_at_0005(db_url, rows)
    changed.write_bytes(changed.read_bytes() + b"changed since it was indexed")
    reports: list[tuple[int, int]] = []
    upgrade(db_url, progress=lambda done, total: reports.append((done, total)))
    found = _md5s(db_url)
    for path in files[:3] + files[4:]:
        assert found[str(path)] == md5_of(path)
    assert found[str(changed)] is None  # its sha256 no longer describes these bytes
    assert found[str(tmp_path / "imported-without-its-file.png")] is None
    assert reports[0] == (0, 6) and reports[-1] == (6, 6)


def test_db_upgrade_shows_the_backfill_as_a_progress_bar(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagashi.db'}"
    upgrade(url, "0005")
    files = make_library(tmp_path / "library", 3)
    _insert_at_0005(url, [(str(p), sha_of(p)) for p in files])
    leader, follower = pty.openpty()  # a terminal: the bar shows only on one
    environment = {**os.environ, "SAGASHI_DATABASE_URL": url, "COLUMNS": "160"}
    process = subprocess.Popen(
        [SAGASHI, "db", "upgrade"], stdout=follower, stderr=follower, env=environment
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0, output
    os.close(leader)
    shown = output.decode(errors="replace")
    assert "md5 of indexed files" in shown and "3/3" in shown, shown
    assert set(_md5s(url).values()) == {md5_of(p) for p in files}


def test_index_stores_the_md5_of_the_bytes_it_hashed(
    migrated_url: str, tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    from app.tagger import TimmTagger

    files = make_library(tmp_path / "library", 4)
    settings = settings_for(tmp_path, migrated_url, tiny_pixai_dir)
    engine = create_db_engine(migrated_url)
    tagger = TimmTagger(tiny_pixai_dir, "cpu", 1)
    tagger.load()
    Indexer(engine, tagger, index_options(settings)).run([tmp_path / "library"])
    assert _md5s(migrated_url) == {str(p): md5_of(p) for p in files}
    # a row that lost its md5 (a file 0006 could not read) gets it on the next index run
    with engine.begin() as connection:
        forget = text("UPDATE images SET md5 = NULL WHERE path = :p")
        connection.execute(forget, {"p": str(files[0])})
    summary = Indexer(engine, tagger, index_options(settings)).run([tmp_path / "library"])
    assert summary.unchanged == 4 and summary.modified == 0
    assert _md5s(migrated_url)[str(files[0])] == md5_of(files[0])
    service = SearchService(engine, tmp_path / "data", {}, "memory")
    for path in files:
        page = service.search(SearchRequest(f"md5:{md5_of(path).upper()}"))
        assert [hit.path for hit in page.hits] == [str(path)]
    engine.dispose()


def test_import_takes_md5_given_or_computes_both_from_the_file(
    migrated_url: str, tmp_path: Path
) -> None:
    local = make_image(tmp_path / "local.png", seed=1)
    vector = np.ones(8, dtype=np.float32).tolist()
    rows = [
        {"path": str(local), "width": 10, "height": 10, "tags": {"a": 0.9}, "embedding": vector},
        {
            "path": "/cluster/given.jpg",
            "sha256": "a" * 64,
            "md5": "b" * 32,
            "width": 10,
            "height": 10,
            "tags": {"a": 0.9},
            "embedding": vector,
        },
        {
            "path": "/cluster/sha-only.jpg",
            "sha256": "c" * 64,
            "width": 10,
            "height": 10,
            "tags": {"a": 0.9},
            "embedding": vector,
        },
        {
            "path": "/cluster/bad.jpg",
            "sha256": "d" * 64,
            "md5": "not hex",
            "width": 10,
            "height": 10,
            "tags": {"a": 0.9},
            "embedding": vector,
        },
    ]
    source = tmp_path / "predictions.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    engine = create_db_engine(migrated_url)
    options = ImportOptions("cluster", None, {}, 0.05, strict=False)
    summary = Importer(engine, options).run_file(source)
    assert summary.failures == [(4, "'md5' must be 32 lowercase hex digits")]
    assert _md5s(migrated_url) == {
        str(local): md5_of(local),
        "/cluster/given.jpg": "b" * 32,
        "/cluster/sha-only.jpg": None,
    }
    with session_factory(engine)() as session:
        sha = session.scalar(select(Image.sha256).where(Image.path == str(local)))
    assert sha == sha_of(local)
    engine.dispose()


@pytest.mark.parametrize("kind", ["memory", "segments", "sql"])
def test_md5_metatag_on_every_engine(migrated_url: str, tmp_path: Path, kind: str) -> None:
    from tests.support.search_helpers import build_index, fixture_md5

    engine = create_db_engine(migrated_url)
    _generation, data, _catalog = build_index(engine, [{"a": 0.9}] * 6)
    ids = sorted(data)
    service = SearchService(engine, tmp_path / "data", {}, kind)  # type: ignore[arg-type]

    def found(query: str) -> list[int]:
        return sorted(hit.id for hit in service.search(SearchRequest(query)).hits)

    assert found(f"md5:{fixture_md5(4)}") == [ids[4]]
    assert found(f"a md5:{fixture_md5(0)} or md5:{fixture_md5(1)}") == [ids[0], ids[1]]
    assert found(f"md5:{5:032x}") == []  # image 5 has no md5
    assert found(f"-md5:{fixture_md5(0)}") == ids[1:]
    engine.dispose()

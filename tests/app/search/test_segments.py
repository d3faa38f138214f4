"""The segment engine's files: opened when current, rebuilt from the database when missing,
truncated, flipped (the postings' flips found by the check after the start, searches refused
until the rebuilt set is mapped), from another generation or format; changes after the set
replayed as a delta and followed live; a delta flushed to disk as delta segments, folded
geometrically; a delta that outgrows its limit merged into a new set; a write refused by a
full disk or killed with -9 never leaves a half-read set. Every answer is checked against
the SQL engine on random queries, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import logging
import mmap
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from app.query import QueryError, parse
from app.search import postings as posting_module
from app.search import segment_engine as segment_engine_module
from app.search.binder import bind
from app.search.catalog import Catalog
from app.search.segment_deltas import MAX_DELTAS
from app.search.segment_engine import SegmentEngine, SegmentsDamaged, store_for
from app.search.segment_files import CURRENT, DEFERRED, MANIFEST
from app.search.sql_engine import execute
from app.store import repository as repo
from app.store.db import create_db_engine, session_factory
from tests.support.search_helpers import (
    GROUPS,
    FixtureImages,
    brute,
    build_index,
    random_images,
    random_query,
)


def assert_equals_sql(
    engine: Engine, tags: SegmentEngine, catalog: Catalog, seed: int, queries: int = 150
) -> int:
    rng = random.Random(seed)
    checked = 0
    with session_factory(engine)() as session:
        for _ in range(queries):
            try:
                plan = bind(parse(random_query(rng)).root, catalog)
            except QueryError:
                continue
            expected = execute(session, plan, tags.generation_id)
            assert list(tags.evaluate(session, plan)) == expected
            checked += 1
    return checked


def opened(engine: Engine, generation: int, data_dir: Path) -> SegmentEngine:
    with session_factory(engine)() as session:
        return SegmentEngine.open(session, generation, data_dir)


def _is_mapped(array: np.ndarray) -> bool:
    """Whether the array's memory is a file mapping (somewhere down its chain of bases)."""
    base: object = array
    while base is not None:
        if isinstance(base, (mmap.mmap, np.memmap)):
            return True
        base = getattr(base, "base", None)
    return False


def current_set(data_dir: Path, generation: int) -> str:
    info = store_for(data_dir, generation).current()
    assert info is not None
    return info.name


@pytest.fixture
def indexed(migrated_url: str) -> Iterator[tuple[Engine, int, Catalog]]:
    engine = create_db_engine(migrated_url)
    generation, _data, catalog = build_index(engine, random_images(random.Random(5), 150), GROUPS)
    yield engine, generation, catalog
    engine.dispose()


def test_a_missing_set_is_built_then_opened_from_its_files(
    indexed: tuple[Engine, int, Catalog], tmp_path: Path
) -> None:
    engine, generation, catalog = indexed
    first = opened(engine, generation, tmp_path)
    name = current_set(tmp_path, generation)
    assert assert_equals_sql(engine, first, catalog, 1) > 100
    again = opened(engine, generation, tmp_path)
    assert current_set(tmp_path, generation) == name  # read, not rebuilt
    columns = again.postings.segments[0].attributes.columns
    assert _is_mapped(columns["width"])  # mapped, not parsed
    assert assert_equals_sql(engine, again, catalog, 2) > 100
    with session_factory(engine)() as session:
        ids = sorted(again.live(session))[:3]
        assert again.describe(session, ids) == first.describe(session, ids)


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 7)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _older_format(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["format"] = 0
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _other_generation(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["generation_id"] += 1
    (folder / MANIFEST).write_text(json.dumps(manifest))


DAMAGE: dict[str, Callable[[Path], object]] = {
    "truncated": lambda folder: _truncate(folder / "posting_ids.npy"),
    "bit-flipped": lambda folder: _flip(folder / "posting_neg_scores.npy"),
    "bit-flipped ids": lambda folder: _flip(folder / "posting_ids.npy"),
    "bit-flipped column": lambda folder: _flip(folder / "column_width.npy"),
    "bit-flipped paths": lambda folder: _flip(folder / "paths.npy"),
    "older format": _older_format,
    "other generation": _other_generation,
    "missing file": lambda folder: (folder / "column_width.npy").unlink(),
    "bad pointer": lambda folder: (folder.parent / CURRENT).write_text("{not json"),
}

# Flips in the postings (DEFERRED: their checksums are verified after the start); every other
# damage is found at open.
FOUND_AFTER_THE_START = {"bit-flipped", "bit-flipped ids"}
assert {"posting_neg_scores.npy", "posting_ids.npy"} == DEFERRED


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_set_is_detected_logged_and_rebuilt(
    indexed: tuple[Engine, int, Catalog],
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, generation, catalog = indexed
    opened(engine, generation, tmp_path)
    name = current_set(tmp_path, generation)
    DAMAGE[damage](store_for(tmp_path, generation).folder / name)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.search.segment_engine"):
        rebuilt = opened(engine, generation, tmp_path)
        if damage in FOUND_AFTER_THE_START:
            # The postings' checksums are left to the check after the start: it finds the
            # flip, searches are refused from then on, and a refresh maps a rebuilt set.
            assert "rebuilding" not in caplog.text
            with session_factory(engine)() as session:
                found = rebuilt.verify(session)
                assert found is not None and "fails its checksum" in found
                with pytest.raises(SegmentsDamaged, match="being rebuilt"):
                    rebuilt.evaluate(session, bind(parse("a").root, catalog))
                rebuilt = rebuilt.refreshed(session)
    assert "rebuilding" in caplog.text
    assert current_set(tmp_path, generation) != name
    assert assert_equals_sql(engine, rebuilt, catalog, 3) > 100
    with session_factory(engine)() as session:
        assert rebuilt.verify(session) is None  # the rebuilt files are whole


def test_changes_after_the_set_are_replayed_and_followed(
    indexed: tuple[Engine, int, Catalog], tmp_path: Path
) -> None:
    engine, generation, catalog = indexed
    live = opened(engine, generation, tmp_path)
    name = current_set(tmp_path, generation)
    with session_factory(engine)() as session:
        gone = sorted(live.live(session))[:10]
        repo.mark_deleted(session, gone)
        session.commit()
        followed = live.refreshed(session)
    assert followed is not live and not set(gone) & set(followed.postings.live)
    assert assert_equals_sql(engine, followed, catalog, 4) > 100
    fresh = opened(engine, generation, tmp_path)  # the old set plus the replayed delta
    assert current_set(tmp_path, generation) == name
    assert len(fresh.postings.segments) == 2
    assert assert_equals_sql(engine, fresh, catalog, 5) > 100


def test_a_delta_over_its_limit_is_merged_in_the_background(
    indexed: tuple[Engine, int, Catalog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, generation, catalog = indexed
    live = opened(engine, generation, tmp_path)
    name = current_set(tmp_path, generation)
    monkeypatch.setattr(posting_module, "MIN_DELTA_LIMIT", 0)
    monkeypatch.setattr(posting_module, "MAX_DELTA_SHARE", 0.0)
    with session_factory(engine)() as session:
        repo.mark_deleted(session, sorted(live.live(session))[:5])
        session.commit()
        serving = live.refreshed(session)
        _low, high = posting_module.latest_change(session)
        # Served at once from the old set and a delta, while a child process merges.
        assert serving.base_seq == live.base_seq and len(serving.postings.segments) == 2
        assert serving.merger.process is not None
        assert assert_equals_sql(engine, serving, catalog, 6) > 100
        serving.merger.wait(120)
        merged = serving.refreshed(session)
    info = store_for(tmp_path, generation).current()
    assert info is not None and info.name != name and info.seq == high
    assert merged.base_seq == high and len(merged.postings.segments) == 1
    assert assert_equals_sql(engine, merged, catalog, 7) > 100


def test_many_small_deltas_fold_without_rereading_the_bulk_segment(
    indexed: tuple[Engine, int, Catalog], tmp_path: Path
) -> None:
    engine, generation, catalog = indexed
    tags = opened(engine, generation, tmp_path)
    bulk = tags.postings.segments[0]
    with session_factory(engine)() as session:
        ids = sorted(tags.live(session))
        for round_ in range(3 * posting_module.MAX_SEGMENTS):
            repo.mark_deleted(session, ids[round_ : round_ + 1])
            session.commit()
            tags = tags.refreshed(session)
            assert len(tags.postings.segments) <= posting_module.MAX_SEGMENTS
            # the bulk segment's arrays are the mapped ones, never reloaded
            assert tags.postings.segments[0].postings is bulk.postings
    assert tags.merger.process is None
    assert assert_equals_sql(engine, tags, catalog, 12) > 100


def test_a_delta_is_flushed_as_delta_segments_that_fold_and_are_mapped_at_open(
    indexed: tuple[Engine, int, Catalog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's delta past FLUSH_IMAGES is written by the background child as a delta
    segment on top of the bulk set (never rewritten), folded geometrically, and mapped by
    every engine on its next refresh; a fresh open maps them and replays nothing."""
    engine, generation, catalog = indexed
    monkeypatch.setattr(segment_engine_module, "FLUSH_IMAGES", 2)
    tags = opened(engine, generation, tmp_path)
    bulk, bulk_segment = current_set(tmp_path, generation), tags.postings.segments[0]
    store = store_for(tmp_path, generation)
    with session_factory(engine)() as session:
        ids = sorted(tags.live(session))
        for round_ in range(2 * MAX_DELTAS):
            for image in ids[3 * round_ : 3 * round_ + 3]:  # 3 moved images: over 2
                repo.move_image(session, image, f"/moved/{round_}/{image}.png", 1, 1)
            session.commit()
            tags = tags.refreshed(session)
            assert tags.merger.process is not None  # flushing in the background
            tags.merger.wait(120)
            assert tags.merger.retry_at == -float("inf")  # it did not fail
            _low, high = posting_module.latest_change(session)
            info = store.current()
            assert info is not None and info.name == bulk and info.covered == high
            assert 1 <= len(info.deltas) <= MAX_DELTAS
            sizes = [delta.changed for delta in info.deltas]
            assert all(a > 2 * b for a, b in itertools.pairwise(sizes)), sizes
            tags = tags.refreshed(session)  # maps the new delta; the bulk is not mapped again
            assert tags.base_seq == high and tags.files is not None
            assert tags.files.segments[0] is bulk_segment
            assert tags.postings.flushed == len(tags.postings.segments) == 1 + len(sizes)
            assert assert_equals_sql(engine, tags, catalog, 40 + round_, 40) > 25
    fresh = opened(engine, generation, tmp_path)
    assert fresh.postings.flushed == len(fresh.postings.segments) > 1  # nothing replayed
    assert assert_equals_sql(engine, fresh, catalog, 60) > 100


def test_corruption_found_in_the_background_is_reported_refused_and_rebuilt(
    indexed: tuple[Engine, int, Catalog], tmp_path: Path
) -> None:
    """A server opens without reading the postings or the FAISS files through; the check it
    runs once ready finds a flipped bit in each, rebuilds both and swaps them in."""
    from app.search.service import SearchService
    from app.store import vectors

    engine, generation, catalog = indexed

    def started() -> SearchService:  # as a server starts: the tag engine and FAISS opened
        service = SearchService(engine, tmp_path, {}, kind="segments")
        service.open_vectors()
        return service

    started()  # writes the files
    assert started().verify_files() == "verified"
    name = current_set(tmp_path, generation)
    _flip(store_for(tmp_path, generation).folder / name / "posting_ids.npy")
    _flip(vectors.matrix_path(tmp_path, generation))
    service = started()  # sizes, headers and counts are right: opened as they are
    assert service.files == "not verified yet" and current_set(tmp_path, generation) == name
    found = service.verify_files()
    assert found.startswith("rebuilt: ") and found == service.files
    assert "posting_ids.npy fails its checksum" in found and "checksum differs" in found
    assert current_set(tmp_path, generation) != name
    state = service.current()
    assert state.index is not None and state.index.usable().verify() is None
    assert isinstance(state.tags, SegmentEngine) and state.tags.damage.problem is None
    assert assert_equals_sql(engine, state.tags, catalog, 70) > 100
    assert started().verify_files() == "verified"


def test_a_merge_killed_at_random_points_leaves_a_readable_set(
    indexed: tuple[Engine, int, Catalog], migrated_url: str, tmp_path: Path
) -> None:
    from app.search.segment_merge import URL_VARIABLE

    engine, generation, catalog = indexed
    opened(engine, generation, tmp_path)
    store = store_for(tmp_path, generation)
    rng = random.Random(11)
    for round_ in range(4):
        with session_factory(engine)() as session:
            ids = sorted(opened(engine, generation, tmp_path).live(session))
            repo.mark_deleted(session, ids[:2])
            session.commit()
            _low, high = posting_module.latest_change(session)
        merge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.search.segment_merge",
                str(store.root),
                str(generation),
                str(high),
            ],
            env={**os.environ, URL_VARIABLE: migrated_url},
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 2.0))
        merge.send_signal(signal.SIGKILL)
        merge.wait(30)
        with session_factory(engine)() as session:
            segment, info = store.read(posting_module.tag_groups(session))  # never half
        assert info.seq <= high and info.images == len(segment.live)
        reopened = opened(engine, generation, tmp_path)
        assert assert_equals_sql(engine, reopened, catalog, 20 + round_, 60) > 40


WRITER = """
import sys
from pathlib import Path
from typing import Any
from app.search.segment_engine import write_segments
from app.store.db import create_db_engine, session_factory
engine = create_db_engine(sys.argv[1])
with session_factory(engine)() as session:
    for _ in range(int(sys.argv[4])):
        write_segments(session, Path(sys.argv[2]), int(sys.argv[3]), full=sys.argv[5] == "full")
"""


def _writer(
    url: str, data_dir: Path, generation: int, rounds: int, how: str = "full", **kwargs: Any
) -> Any:
    """A process writing the set ``rounds`` times: a whole new set each time (``full``), or
    a delta segment of what changed (``delta``)."""
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(data_dir), str(generation), str(rounds), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("how", ["full", "delta"])
def test_a_full_disk_leaves_the_old_set_serving(
    indexed: tuple[Engine, int, Catalog], migrated_url: str, tmp_path: Path, how: str
) -> None:
    engine, generation, catalog = indexed
    live = opened(engine, generation, tmp_path)
    name = current_set(tmp_path, generation)
    with session_factory(engine)() as session:  # a delta of 100 images, files over 4 KiB
        for image in sorted(live.live(session))[:100]:
            repo.move_image(session, image, f"/moved/{image}.png", 1, 1)
        session.commit()

    def small_files() -> None:  # the kernel refuses writes past 4 KiB, as a full disk does
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    writer = _writer(migrated_url, tmp_path, generation, 1, how, preexec_fn=small_files)
    _out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert "cannot write the segment set" in err
    assert current_set(tmp_path, generation) == name
    info = store_for(tmp_path, generation).current()
    assert info is not None and info.deltas == ()
    leftovers = [p.name for p in store_for(tmp_path, generation).folder.iterdir()]
    assert sorted(leftovers) == sorted([CURRENT, name, "write.lock"])
    assert assert_equals_sql(engine, opened(engine, generation, tmp_path), catalog, 7) > 100


def test_kill_9_while_writing_never_leaves_a_half_set(
    indexed: tuple[Engine, int, Catalog], migrated_url: str, tmp_path: Path
) -> None:
    engine, generation, catalog = indexed
    opened(engine, generation, tmp_path)
    rng = random.Random(9)
    for round_ in range(4):
        writer = _writer(migrated_url, tmp_path, generation, 50)
        time.sleep(rng.uniform(0.5, 2.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        with session_factory(engine)() as session:
            store = store_for(tmp_path, generation)
            segment, _info = store.read(posting_module.tag_groups(session))  # never half
        reopened = opened(engine, generation, tmp_path)
        assert assert_equals_sql(engine, reopened, catalog, 10 + round_, 60) > 40
        assert len(segment.live) == len(reopened.postings.live)


def test_index_and_import_write_a_current_set(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    from tests.support.api_helpers import make_library
    from tests.support.cli import run_sagashi

    make_library(tmp_path / "library", 6)
    make_library(tmp_path / "more", 2)
    env = {
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_SEARCH_ENGINE": "segments",
    }
    assert run_sagashi("db", "upgrade", env=env).returncode == 0
    assert run_sagashi("index", str(tmp_path / "library"), env=env).returncode == 0
    engine = create_db_engine(f"sqlite:///{tmp_path / 'data' / 'sagashi.db'}")
    with session_factory(engine)() as session:
        generation = repo.active_generation(session)
        assert generation is not None
        _low, high = posting_module.latest_change(session)
    engine.dispose()
    info = store_for(tmp_path / "data", generation.id).current()
    assert info is not None and info.seq == high and info.images == 6
    found = run_sagashi("search", "", "--json", env=env)
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 6
    assert store_for(tmp_path / "data", generation.id).current() == info  # opened, not rebuilt
    # A later run writes what it changed as a delta segment on top of the same set.
    assert run_sagashi("index", str(tmp_path / "more"), env=env).returncode == 0
    engine = create_db_engine(f"sqlite:///{tmp_path / 'data' / 'sagashi.db'}")
    with session_factory(engine)() as session:
        _low, high = posting_module.latest_change(session)
    engine.dispose()
    later = store_for(tmp_path / "data", generation.id).current()
    assert later is not None and later.name == info.name and later.covered == high
    assert [(d.images, d.changed) for d in later.deltas] == [(2, 2)]
    found = run_sagashi("search", "", "--json", env=env)
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 8


def test_prebuilt_bitmaps_are_stored_and_read_on_first_use(
    indexed: tuple[Engine, int, Catalog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, generation, catalog = indexed
    monkeypatch.setattr(posting_module, "PREBUILD_MIN", 1)  # every tag gets its bitmaps
    opened(engine, generation, tmp_path)
    segment = opened(engine, generation, tmp_path).postings.segments[0]
    plans = segment.prebuilt_plans()
    assert plans and not dict.keys(segment._prebuilt)  # stored, none deserialized yet
    with session_factory(engine)() as session:
        fresh = posting_module.PostingEngine.load(session, generation).segments[0]
    for plan in plans:
        assert segment.prebuilt(plan) == fresh.prebuilt(plan)
    assert assert_equals_sql(engine, opened(engine, generation, tmp_path), catalog, 21) > 100


def _three_ways(
    engine: Engine,
    tags: SegmentEngine,
    catalog: Catalog,
    data: FixtureImages,
    rng: random.Random,
    queries: int,
) -> int:
    """Random queries on the segment engine against the SQL engine and the brute force."""
    checked = 0
    with session_factory(engine)() as session:
        for _ in range(queries):
            try:
                plan = bind(parse(random_query(rng)).root, catalog)
            except QueryError:
                continue
            found = list(tags.evaluate(session, plan))
            assert found == brute(plan, data)
            assert found == execute(session, plan, tags.generation_id)
            checked += 1
    return checked


def test_segments_equal_sql_and_brute_force_opened_with_a_delta_and_merged(
    migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 1,000 random queries in all, on each database: the engine opened from its
    files, then with a delta replayed at open, then after a background merge."""
    engine = create_db_engine(migrated_url)
    rng = random.Random(31)
    generation, data, catalog = build_index(engine, random_images(rng, 200), GROUPS)
    opened(engine, generation, tmp_path)  # writes the set
    from_files = opened(engine, generation, tmp_path)
    assert len(from_files.postings.segments) == 1
    checked = _three_ways(engine, from_files, catalog, data, rng, 400)
    gone = rng.sample(sorted(data), 30)
    with session_factory(engine)() as session:
        repo.mark_deleted(session, gone)
        session.commit()
    data = data.without(gone)
    with_delta = opened(engine, generation, tmp_path)
    assert len(with_delta.postings.segments) == 2
    checked += _three_ways(engine, with_delta, catalog, data, rng, 400)
    monkeypatch.setattr(posting_module, "MIN_DELTA_LIMIT", 0)
    monkeypatch.setattr(posting_module, "MAX_DELTA_SHARE", 0.0)
    with session_factory(engine)() as session:
        repo.mark_deleted(session, [min(data)])
        session.commit()
        data.pop(min(data))
        merging = with_delta.refreshed(session)
        merging.merger.wait(120)
        merged = merging.refreshed(session)
    assert len(merged.postings.segments) == 1 and merged.base_seq > with_delta.base_seq
    checked += _three_ways(engine, merged, catalog, data, rng, 400)
    assert checked >= 1000
    engine.dispose()


def test_a_set_streamed_from_the_database_equals_one_written_from_memory(
    indexed: tuple[Engine, int, Catalog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.search.segment_build import build_from_database

    monkeypatch.setattr(posting_module, "PREBUILD_MIN", 10)  # prebuilt bitmaps here too
    engine, generation, catalog = indexed
    streamed, in_memory = (
        store_for(tmp_path / "a", generation),
        store_for(tmp_path / "b", generation),
    )
    with session_factory(engine)() as session:
        _low, seq = posting_module.latest_change(session)
        build_from_database(streamed, session, seq)
        in_memory.write(posting_module.PostingEngine.load(session, generation).segments[0], seq)
    manifests = []
    for root in (tmp_path / "a", tmp_path / "b"):
        folder = store_for(root, generation).folder / current_set(root, generation)
        manifests.append(json.loads((folder / MANIFEST).read_text()))
    assert manifests[0]["files"] == manifests[1]["files"]  # every file, byte for byte
    assert manifests[0]["images"] == manifests[1]["images"] == 150
    assert manifests[0]["files"]["prebuilt.npy"]["bytes"] > 1000
    assert assert_equals_sql(engine, opened(engine, generation, tmp_path / "a"), catalog, 3) > 100

"""The FAISS index and the gather matrix on disk: written by streaming from the database,
opened memory-mapped, and rebuilt from the database whenever they are missing, stale,
truncated, corrupt or of another format (never trusted), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from pyroaring import BitMap
from sqlalchemy import Engine

from app.search import similar
from app.store import ivf_build, matrix, vectors
from app.store import repository as repo
from app.store.db import create_db_engine, session_factory
from app.store.filecheck import checksum
from app.tagger.preprocess import Preprocess
from app.tagger.protocol import ModelInfo

DIM = 16
INFO = ModelInfo(
    name="vectors",
    family="pixai",
    vocabulary_digest="e" * 64,
    embedding_dim=DIM,
    num_tags=0,
    preprocess=Preprocess(56, "stretch", "bilinear", (0.5,) * 3, (0.5,) * 3, "RGB"),
)


def _unit_rows(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors around 20 centres, rounded to float16 as the database stores them."""
    centres = rng.standard_normal((20, dim))
    rows = centres[rng.integers(0, 20, count)] + 0.7 * rng.standard_normal((count, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float16)


def _write_matrix(path: Path, ids: np.ndarray, rows: np.ndarray, batch: int = 97) -> None:
    with matrix.MatrixWriter(path, rows.shape[1]) as writer:
        for start in range(0, len(ids), batch):
            writer.append(ids[start : start + batch], rows[start : start + batch])
        writer.finish()


def test_matrix_file_round_trip_and_exact_gather(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(100_000, 1_000, replace=False)).astype(np.int64) + 1
    rows = _unit_rows(rng, 1_000)
    path = tmp_path / "m.vectors"
    _write_matrix(path, ids, rows)
    opened = matrix.Matrix.open(path, DIM, 1_000)
    np.testing.assert_array_equal(opened.ids, ids)
    np.testing.assert_array_equal(opened.rows, rows)
    np.testing.assert_array_equal(opened.read(np.array([7, 0, 999])), rows[[7, 0, 999]])
    assert path.stat().st_size == 64 + 1_000 * DIM * 2 + 1_000 * 4

    absent = np.array([0, ids[3] + 1 if ids[3] + 1 not in ids else 0, 10**9], dtype=np.int64)
    _rows, found = opened.positions(np.concatenate([ids[[5, 900]], absent]))
    assert found.tolist() == [True, True, False, False, False]
    with pytest.raises(KeyError):
        opened.vectors(absent)
    np.testing.assert_array_equal(opened.vectors(ids[[7, 8]]), rows[[7, 8]].astype(np.float32))

    query = rows[10].astype(np.float32)
    wanted = rng.choice(ids, 300, replace=False)
    asked = np.concatenate([wanted, absent])  # ids the matrix lacks are skipped
    got_ids, got_scores = opened.nearest(query, 10, asked.astype(np.uint32))
    member = np.isin(ids, wanted)
    exact = rows[member].astype(np.float32) @ query
    order = np.argsort(-exact, kind="stable")[:10]
    np.testing.assert_array_equal(np.sort(got_ids), np.sort(ids[member][order]))
    np.testing.assert_allclose(got_scores, exact[order], rtol=1e-5, atol=1e-6)
    assert opened.nearest(query, 10, absent.astype(np.uint32))[0].size == 0


def test_matrix_writer_refuses_unordered_ids(tmp_path: Path) -> None:
    with matrix.MatrixWriter(tmp_path / "m.vectors", 4) as writer:
        writer.append(np.array([1, 5]), np.zeros((2, 4), np.float16))
        with pytest.raises(ValueError, match="ascending"):
            writer.append(np.array([5, 6]), np.zeros((2, 4), np.float16))
        with pytest.raises(ValueError, match="ascending"):
            writer.append(np.array([9, 7]), np.zeros((2, 4), np.float16))


def test_a_streamed_ivf_file_is_what_faiss_itself_writes(tmp_path: Path) -> None:
    """Lists written straight from the matrix: the same file, byte for byte, as FAISS's
    add_with_ids then write_index on the same trained quantizer, and it opens mapped."""
    rng = np.random.default_rng(1)
    count, nlist = 6_000, 24
    ids = np.sort(rng.choice(50_000, count, replace=False)).astype(np.int64)
    rows = _unit_rows(rng, count)
    path = tmp_path / "m.vectors"
    _write_matrix(path, ids, rows, batch=1_000)
    source = matrix.Matrix.open(path, DIM, count, populate=False)
    trained = ivf_build.train(source, nlist)
    lists = ivf_build.assign(trained, source)
    assert np.bincount(lists, minlength=nlist).min() > 0  # every list used: FAISS writes "full"
    streamed = tmp_path / "streamed.faiss"
    with open(streamed, "wb") as handle:
        ivf_build.write(trained, source, lists, handle)

    reference = faiss.clone_index(trained)
    reference.add_with_ids(rows.astype(np.float32), ids)
    expected = faiss.serialize_index(reference).tobytes()
    assert streamed.read_bytes() == expected
    # And the in-memory build from all the vectors at once trains the same centroids.
    in_memory = vectors.build_index(rows.astype(np.float32), ids, "ivf", {"nlist": nlist})
    assert faiss.serialize_index(in_memory).tobytes() == expected

    mapped = faiss.read_index(str(streamed), vectors.OPEN_FLAGS)
    faiss.extract_index_ivf(reference).nprobe = faiss.extract_index_ivf(mapped).nprobe = 4
    queries = rows[:20].astype(np.float32)
    for got, want in zip(mapped.search(queries, 10), reference.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)


# Damage done to the written files; each must be noticed at open and rebuilt.
def _flip(offset: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[offset % len(data)] ^= 0x10
        path.write_bytes(bytes(data))

    return damage


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _remove(path: Path) -> None:
    path.unlink()


def _older_sidecar(data_dir: Path, generation_id: int) -> None:
    """The sidecar as the code before the gather matrix wrote it: no format, no files."""
    _, meta_path = vectors.index_paths(data_dir, generation_id)
    raw = json.loads(meta_path.read_text())
    del raw["format"], raw["files"]
    meta_path.write_text(json.dumps(raw))


def _matrix_of_another_format(data_dir: Path, generation_id: int) -> None:
    """A matrix whose header says another format, its sidecar checksum made to match: only
    the header check can tell."""
    path = vectors.matrix_path(data_dir, generation_id)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, matrix.FORMAT + 1)
    path.write_bytes(bytes(data))
    _, meta_path = vectors.index_paths(data_dir, generation_id)
    raw = json.loads(meta_path.read_text())
    check = checksum(path)
    raw["files"]["vectors"] = {"bytes": check.bytes, "xxh3": check.xxh3}
    meta_path.write_text(json.dumps(raw))


def _on_file(name: str, damage: Callable[[Path], None]) -> Callable[[Path, int], None]:
    def apply(data_dir: Path, generation_id: int) -> None:
        index_path, _ = vectors.index_paths(data_dir, generation_id)
        paths = {"faiss": index_path, "vectors": vectors.matrix_path(data_dir, generation_id)}
        damage(paths[name])

    return apply


DAMAGE: dict[str, Callable[[Path, int], None]] = {
    "matrix truncated": _on_file("vectors", _truncate),
    "matrix row flipped": _on_file("vectors", _flip(64 + 5 * DIM * 2 + 3)),
    "matrix id flipped": _on_file("vectors", _flip(-7)),
    "matrix header flipped": _on_file("vectors", _flip(20)),
    "matrix missing": _on_file("vectors", _remove),
    "matrix of another format": _matrix_of_another_format,
    "index truncated": _on_file("faiss", _truncate),
    "index flipped": _on_file("faiss", _flip(-40)),
    "index missing": _on_file("faiss", _remove),
    "older sidecar": _older_sidecar,
}


# The flips an open cannot see (sizes, header and counts are right); every other damage is
# found at open.
FOUND_AFTER_THE_START = {"matrix row flipped", "matrix id flipped", "index flipped"}


def _fill(engine: Engine, count: int, seed: int = 0) -> int:
    """A generation of ``count`` images with clustered embeddings; its id."""
    rows = _unit_rows(np.random.default_rng(seed), count)
    with session_factory(engine)() as session:
        generation = repo.generation_for_index(session, INFO)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        items = [
            (
                repo.FileFacts(f"/v/{i}.png", f"{i:064x}", 100, 1, 10, 20, "png"),
                repo.StoredPrediction(*empty, rows[i].astype(np.float32)),
                None,
            )
            for i in range(count)
        ]
        repo.write_images(session, generation.id, items)
        session.commit()
        return generation.id


def _assert_exact(
    index: vectors.FaissIndex, engine: Engine, generation_id: int, unfiltered: bool = True
) -> None:
    """The plans answer as a brute force over the database's vectors: the gather plan, and
    the unfiltered one when it is exact (a flat index)."""
    ids, data = vectors.load_embeddings(engine, generation_id, DIM)
    assert index.meta.count == len(ids) == index.index.ntotal
    np.testing.assert_array_equal(index.matrix.ids, ids)
    live = BitMap(ids.tolist())
    rng = np.random.default_rng(5)
    subset = BitMap(rng.choice(ids, 40, replace=False).tolist())
    for q in rng.choice(len(ids), 5, replace=False):
        for allowed in (None, subset) if unfiltered else (subset,):
            member = ids if allowed is None else np.array(sorted(allowed))
            exact = member[np.argsort(-(data[np.searchsorted(ids, member)] @ data[q]))[:5]]
            found, _plan = similar.nearest(index, data[q], 5, allowed, live, gather_limit=100)
            assert [i for i, _ in found] == exact.tolist()


def _inodes(data_dir: Path, generation_id: int) -> list[int]:
    return [p.stat().st_ino for p in vectors.generation_files(data_dir, generation_id)]


def test_written_files_are_opened_as_they_are(migrated_url: str, tmp_path: Path) -> None:
    engine = create_db_engine(migrated_url)
    generation_id = _fill(engine, 300)
    built = vectors.load_fresh(engine, tmp_path, generation_id)
    assert built.meta.format == vectors.FORMAT and set(built.meta.files) == {"faiss", "vectors"}
    before = _inodes(tmp_path, generation_id)
    opened = vectors.load_fresh(engine, tmp_path, generation_id)
    assert _inodes(tmp_path, generation_id) == before  # nothing rewritten
    assert opened.meta == built.meta
    assert set(opened.deferred) == set(vectors.generation_files(tmp_path, generation_id)[:2])
    assert opened.verify() is None and opened.usable() is opened
    _assert_exact(opened, engine, generation_id)
    engine.dispose()


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_files_are_rebuilt_from_the_database(
    migrated_url: str, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_db_engine(migrated_url)
    generation_id = _fill(engine, 300)
    vectors.load_fresh(engine, tmp_path, generation_id)
    DAMAGE[damage](tmp_path, generation_id)
    with caplog.at_level(logging.INFO, logger="app.store.vectors"):
        rebuilt = vectors.load_fresh(engine, tmp_path, generation_id)
        if damage in FOUND_AFTER_THE_START:
            # Checksums are left to the check after the start (a server's verify_files):
            # it finds the damage, searches are refused, the rebuilt index replaces it.
            assert "rebuilding" not in caplog.text, caplog.text
            found = rebuilt.verify()
            assert found is not None and "checksum differs" in found
            with pytest.raises(vectors.VectorsDamaged, match="being rebuilt"):
                rebuilt.usable()
            rebuilt = vectors.load_fresh(engine, tmp_path, generation_id, written_failed=True)
            assert "built flat FAISS index" in caplog.text, caplog.text
        else:
            assert "rebuilding" in caplog.text, caplog.text
    assert rebuilt.verify() is None
    assert rebuilt.meta.format == vectors.FORMAT
    _assert_exact(rebuilt, engine, generation_id)
    # The rebuilt files are whole again: the next open uses them as they are.
    before = _inodes(tmp_path, generation_id)
    _assert_exact(vectors.load_fresh(engine, tmp_path, generation_id), engine, generation_id)
    assert _inodes(tmp_path, generation_id) == before
    engine.dispose()


def test_stale_files_are_rebuilt_after_a_change(migrated_url: str, tmp_path: Path) -> None:
    engine = create_db_engine(migrated_url)
    generation_id = _fill(engine, 300)
    old = vectors.load_fresh(engine, tmp_path, generation_id)
    with session_factory(engine)() as session:
        repo.mark_deleted(session, [int(old.matrix.ids[0]), int(old.matrix.ids[1])])
        session.commit()
    fresh = vectors.load_fresh(engine, tmp_path, generation_id)
    assert fresh.meta.version > old.meta.version and fresh.meta.count == 298
    _assert_exact(fresh, engine, generation_id)
    # The old files stay readable by whoever still maps them (a rename, not a rewrite).
    assert old.matrix.count == 300 and old.index.ntotal == 300
    engine.dispose()


def test_an_ivf_index_is_streamed_from_the_database(
    migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The IVF path of a rebuild, at a size a test can afford: the flat limit lowered."""
    monkeypatch.setattr(vectors, "FLAT_LIMIT", 1_000)
    engine = create_db_engine(migrated_url)
    generation_id = _fill(engine, 2_500, seed=3)
    index = vectors.load_fresh(engine, tmp_path, generation_id)
    assert index.meta.kind == "ivf" and index.meta.params["nlist"] == int(4 * 2_500**0.5)
    assert "calibrated_recall" in index.meta.params
    ivf = faiss.extract_index_ivf(index.index)
    assert ivf.nprobe == index.meta.params["nprobe"]
    ids, data = vectors.load_embeddings(engine, generation_id, DIM)
    assert sorted(vectors.stored_ids(index.index).tolist()) == ids.tolist()
    every = faiss.SearchParametersIVF(nprobe=ivf.nlist)  # type: ignore[call-arg]
    _scores, found = index.index.search(data[:10], 5, params=every)
    for row, q in enumerate(range(10)):
        exact = ids[np.argsort(-(data @ data[q]))[:5]]
        assert set(found[row].tolist()) == set(exact.tolist())
    _assert_exact(index, engine, generation_id, unfiltered=False)
    engine.dispose()

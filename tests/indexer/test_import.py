"""``sagashi import``: round trips in every format and the rejections, on both databases."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.store.aliases import load_aliases
from app.store.db import create_db_engine
from indexer.importer import (
    Importer,
    ImportError_,
    ImportOptions,
    Row,
    _validate_tags,
    _validate_tags_exactly,
    read_rows,
)
from tests.support.cli import SAGASHI
from tests.support.import_records import DIM, record, sha, vector, write_jsonl
from tests.support.index_helpers import snapshot, stored_vector


def run_import(  # type: ignore[no-untyped-def]
    url: str, file: Path, strict: bool = False, embeddings: Path | None = None, child=False
):
    options = ImportOptions("cluster-pixai", None, load_aliases(), 0.05, strict, batch_size=2)
    return Importer(create_db_engine(url), options).run_file(file, embeddings, child=child)


# Large files are read in a child process; both readers must give the same result.
READERS = pytest.mark.parametrize("child", [False, True], ids=["inline", "child"])


def expected_vector(i: int) -> np.ndarray:
    v = np.asarray(vector(i), dtype=np.float32)
    return (v / np.linalg.norm(v)).astype("<f2")


def test_jsonl_round_trip(migrated_url: str, tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "p.jsonl", [record(i) for i in range(5)])
    summary = run_import(migrated_url, file)
    assert summary.as_dict() == {"new": 5, "updated": 0, "failed": 0}
    state = snapshot(create_db_engine(migrated_url))
    assert len(state) == 5
    first = state["/cluster/img/000.jpg"]
    # Aliased (doughnut -> donut), floored (solo at 0.02 dropped), scores kept.
    assert first["tags"] == {"1girl": 0.97, "donut": 0.61, "long_hair": 0.4}
    assert first["sha256"] == sha("0") and first["size"] == (800, 600)
    assert stored_vector(first).tolist() == expected_vector(0).tolist()
    again = run_import(migrated_url, file)
    assert again.as_dict() == {"new": 0, "updated": 5, "failed": 0}
    assert snapshot(create_db_engine(migrated_url)) == state


@READERS
def test_jsonl_with_row_aligned_npy(migrated_url: str, tmp_path: Path, child: bool) -> None:
    rows = [record(i) for i in range(5)]
    matrix = np.asarray([r.pop("embedding") for r in rows], dtype=np.float16)
    file = write_jsonl(tmp_path / "p.jsonl", rows)
    np.save(tmp_path / "p.jsonl.npy", matrix)  # found beside the file automatically
    summary = run_import(migrated_url, file, child=child)  # batches of 2: the last is short
    assert summary.as_dict() == {"new": 5, "updated": 0, "failed": 0}
    state = snapshot(create_db_engine(migrated_url))
    got = stored_vector(state["/cluster/img/002.jpg"]).astype(np.float32)
    want = matrix[2].astype(np.float32)
    np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=2e-3)


def test_parquet_round_trip(migrated_url: str, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [record(i) for i in range(3)]
    table = pa.table(
        {
            "path": [r["path"] for r in rows],
            "sha256": [r["sha256"] for r in rows],
            "width": pa.array([800] * 3, pa.int32()),
            "height": pa.array([600] * 3, pa.int32()),
            "tag": [list(r["tags"]) for r in rows],  # type: ignore[call-overload]
            "score": [list(r["tags"].values()) for r in rows],  # type: ignore[attr-defined]
            "embedding": [r["embedding"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    assert run_import(migrated_url, tmp_path / "p.parquet").as_dict() == {
        "new": 3,
        "updated": 0,
        "failed": 0,
    }
    state = snapshot(create_db_engine(migrated_url))
    assert state["/cluster/img/001.jpg"]["tags"] == {"1girl": 0.97, "donut": 0.61, "long_hair": 0.4}


def test_parquet_embeddings_in_any_list_type_and_their_bad_rows(
    migrated_url: str, tmp_path: Path
) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    vectors = [vector(0), None, vector(2)[:5], [*vector(3)[:7], None], vector(4)]
    rows = [record(i) for i in range(len(vectors))]
    columns = {
        "path": [r["path"] for r in rows],
        "sha256": [r["sha256"] for r in rows],
        "width": [800] * len(rows),
        "height": [600] * len(rows),
        "tag": [list(r["tags"]) for r in rows],  # type: ignore[call-overload]
        "score": [list(r["tags"].values()) for r in rows],  # type: ignore[attr-defined]
        "embedding": pa.array(vectors, pa.list_(pa.float32())),
    }
    pq.write_table(pa.table(columns), tmp_path / "p.parquet")
    summary = run_import(migrated_url, tmp_path / "p.parquet")
    assert summary.new == 2
    assert dict(summary.failures) == {
        2: "no 'embedding' (a list of floats, or a row-aligned .npy file)",
        3: "embedding has 5 values, the index uses 8",
        4: "embedding contains NaN or infinite values",
    }
    state = snapshot(create_db_engine(migrated_url))
    got = stored_vector(state["/cluster/img/004.jpg"])
    assert got.tolist() == expected_vector(4).tolist()  # the right row's values, in order

    fixed = pa.array([vector(i) for i in range(5)], pa.list_(pa.float64(), DIM))
    pq.write_table(pa.table({**columns, "embedding": fixed}), tmp_path / "fixed.parquet")
    assert run_import(migrated_url, tmp_path / "fixed.parquet").as_dict() == {
        "new": 3,  # the rows refused above
        "updated": 2,
        "failed": 0,
    }
    state = snapshot(create_db_engine(migrated_url))
    got = stored_vector(state["/cluster/img/003.jpg"])
    assert got.tolist() == expected_vector(3).tolist()
    texts = {**columns, "embedding": [["a", "b"]] * 5}
    pq.write_table(pa.table(texts), tmp_path / "text.parquet")
    with pytest.raises(ImportError_, match="column 'embedding' must hold lists of numbers"):
        run_import(migrated_url, tmp_path / "text.parquet")


@READERS
def test_bad_rows_are_rejected_with_their_reason(
    migrated_url: str, tmp_path: Path, child: bool
) -> None:
    lines = [
        json.dumps(record(0)),
        json.dumps(record(1, embedding=vector(1)[:5])),
        json.dumps(record(2, tags={"1girl": float("nan")})),
        json.dumps(record(3, tags={"1girl": 1.5})),
        json.dumps(record(4, path="/cluster/img/000.jpg", sha256=sha("x"))),
        json.dumps(record(5, width=0)),
        json.dumps(record(6, sha256="xyz")),
        json.dumps(record(7, sha256=None)),
        "{not json",
        "[1, 2]",
        json.dumps(record(10, embedding=[0.0] * DIM)),
        json.dumps(record(11, tags={"1girl": "high"})),
        json.dumps(record(12, embedding=None)),
    ]
    file = tmp_path / "bad.jsonl"
    file.write_text("\n".join(lines) + "\n")
    summary = run_import(migrated_url, file, child=child)
    assert summary.new == 1
    assert dict(summary.failures) == {
        2: "embedding has 5 values, the index uses 8",
        3: "score for '1girl' is nan, not a finite number",
        4: "score for '1girl' is 1.5, outside [0, 1]",
        5: "duplicate path '/cluster/img/000.jpg' in this import",
        6: "'width' must be a positive integer, got 0",
        7: "'sha256' must be 64 lowercase hex digits",
        8: "no 'sha256' given and the file cannot be read to compute it",
        9: "not valid JSON (Expecting property name enclosed in double quotes)",
        10: "not an object",
        11: "embedding is all zeros",
        12: "score for '1girl' must be a number, got 'high'",
        13: "no 'embedding' (a list of floats, or a row-aligned .npy file)",
    }
    assert len(snapshot(create_db_engine(migrated_url))) == 1


def test_strict_rejects_unknown_tags(migrated_url: str, tmp_path: Path) -> None:
    run_import(migrated_url, write_jsonl(tmp_path / "a.jsonl", [record(0)]))
    known = {"1girl": 0.9, "donut": 0.5}  # stored by the first import
    file = write_jsonl(
        tmp_path / "b.jsonl", [record(1, tags=known), record(2, tags={"brand_new_tag": 0.9})]
    )
    summary = run_import(migrated_url, file, strict=True)
    assert summary.new == 1
    assert summary.failures == [(2, "unknown tag 'brand_new_tag' (--strict)")]


def test_file_level_errors(migrated_url: str, tmp_path: Path) -> None:
    with pytest.raises(ImportError_, match="unknown format '.csv'"):
        list(read_rows(tmp_path / "x.csv", None))
    with pytest.raises(ImportError_, match="cannot open"):
        list(read_rows(tmp_path / "missing.jsonl", None))
    with pytest.raises(ImportError_, match="embeddings file .* does not exist"):
        list(read_rows(write_jsonl(tmp_path / "a.jsonl", [record(0)]), tmp_path / "none.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(8, np.float32))
    with pytest.raises(ImportError_, match="must be a 2-d"):
        list(read_rows(tmp_path / "a.jsonl", tmp_path / "flat.npy"))


def test_the_child_reader_reports_file_level_errors_and_writes_nothing(
    migrated_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ImportError_, match="cannot open"):
        run_import(migrated_url, tmp_path / "missing.jsonl", child=True)
    rows = [record(i) for i in range(5)]
    for r in rows:
        r.pop("embedding")
    file = write_jsonl(tmp_path / "p.jsonl", rows)
    np.save(tmp_path / "short.npy", np.ones((3, DIM), np.float16))
    # Rows 1-2 make a whole batch before row 4 finds no embedding; nothing was committed.
    with pytest.raises(ImportError_, match="more lines than the 3 embedding rows"):
        run_import(migrated_url, file, embeddings=tmp_path / "short.npy", child=True)
    assert snapshot(create_db_engine(migrated_url)) == {}


def test_a_different_dimension_is_refused_for_the_whole_file(
    migrated_url: str, tmp_path: Path
) -> None:
    from app.store.repository import GenerationMismatch

    run_import(migrated_url, write_jsonl(tmp_path / "a.jsonl", [record(0)]))
    other = write_jsonl(tmp_path / "b.jsonl", [record(1, embedding=[0.5] * 16)])
    with pytest.raises(GenerationMismatch, match="differs in vocabulary, embedding size"):
        run_import(migrated_url, other)


def test_cli_import(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = {**os.environ, "SAGASHI_DATABASE_URL": url, "SAGASHI_DATA_DIR": str(tmp_path / "data")}
    subprocess.run([SAGASHI, "db", "upgrade"], env=env, check=True, capture_output=True)
    file = write_jsonl(tmp_path / "p.jsonl", [record(0), record(1, width=-3)])
    result = subprocess.run(
        [SAGASHI, "import", str(file), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert f"{file}:2: 'width' must be a positive integer, got -3" in result.stderr
    assert json.loads(result.stdout)["new"] == 1
    missing = subprocess.run(
        [SAGASHI, "import", str(tmp_path / "nope.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "sagashi: error: cannot open" in missing.stderr


def test_cli_import_of_more_rows_than_a_batch_on_sqlite(tmp_path: Path) -> None:
    """The job record's heartbeat waits for a commit: on SQLite a write from its own
    connection during the import's open transaction waited, then failed as 'locked'."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = {**os.environ, "SAGASHI_DATABASE_URL": url, "SAGASHI_DATA_DIR": str(tmp_path / "data")}
    subprocess.run([SAGASHI, "db", "upgrade"], env=env, check=True, capture_output=True)
    rows = 12_001  # over two batches of 5,000
    file = write_jsonl(tmp_path / "p.jsonl", [record(i, path=f"/c/{i}.jpg") for i in range(rows)])
    result = subprocess.run(
        [SAGASHI, "import", str(file)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"\n  new      {rows}\n  updated      0\n  failed       0" in result.stderr
    assert len(snapshot(create_db_engine(url))) == rows


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["1girl", "Solo ", "doughnut", "donut", "", " long_hair", "x"]),
        st.one_of(st.floats(0, 1), st.integers(0, 1), st.just(0.05)),
        max_size=7,
    )
)
def test_fast_tag_validation_agrees_with_the_exact_one(tags: dict[str, float]) -> None:
    options = ImportOptions("m", None, {"doughnut": "donut"}, 0.05, strict=False)
    assert _validate_tags(tags, options, set()) == _validate_tags_exactly(tags, options, set())


class Interrupted(Exception):
    pass


def test_an_interrupted_import_keeps_whole_commits_and_a_rerun_finishes_it(
    migrated_url: str, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", [record(i) for i in range(20)])
    options = ImportOptions(
        "cluster-pixai", None, load_aliases(), 0.05, False, batch_size=2, commit_every=6
    )

    def until_row_15() -> Iterator[Row]:
        for row in read_rows(source, None):
            if row.number == 15:
                raise Interrupted  # the input stops mid-import, as a killed reader would
            yield row

    engine = create_db_engine(migrated_url)
    with pytest.raises(Interrupted):
        Importer(engine, options).run(until_row_15())
    kept = snapshot(engine)
    # Batches of 2 are committed every 6 rows: rows 1-12 are in, 13-14 were rolled back.
    assert sorted(kept) == [f"/cluster/img/{i:03d}.jpg" for i in range(12)]
    assert all(state["tags"] and state["vector"] is not None for state in kept.values())

    summary = Importer(engine, options).run(read_rows(source, None))
    assert (summary.new, summary.updated, summary.failed) == (8, 12, 0)
    final = snapshot(engine)
    engine.dispose()
    assert sorted(final) == [f"/cluster/img/{i:03d}.jpg" for i in range(20)]
    for path, state in kept.items():  # updated in place: same ids, same content
        assert final[path] == state

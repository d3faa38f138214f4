"""Files replaced whole (app.atomic_files), the one way derived and exported files are written."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from app.atomic_files import atomic_file, atomic_path, sweep, write_atomic


def test_a_reader_sees_the_old_file_or_the_new_one_never_a_part(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    write_atomic(target, b"a" * 200_000)
    stop = threading.Event()
    seen: set[bytes] = set()

    def read() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            seen.add((data[:1] * len(data) == data and data[:1]) or b"torn")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(60):  # a second hand replaces the file while it is read
            write_atomic(target, (b"a" if round_ % 2 else b"b") * 200_000, durable=False)
    finally:
        stop.set()
        reader.join()
    assert b"torn" not in seen and seen <= {b"a", b"b"}
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_an_error_in_the_block_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "kept.txt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk full, say")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_a_path_writer_and_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "index.faiss"
    old = os.umask(0o027)
    try:
        with atomic_path(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.startswith(".")
            temporary.write_bytes(b"written by a library that wants a path")
            assert not target.exists()
    finally:
        os.umask(old)
    assert target.read_bytes() == b"written by a library that wants a path"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # open()'s 0o666 less the umask


def test_sweep_removes_what_killed_writers_left_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / ".shard.parquet.123-abcd.tmp").write_bytes(b"half")
    (tmp_path / "shard.parquet").write_bytes(b"whole")
    (tmp_path / ".hidden").write_bytes(b"not ours")
    (tmp_path / ".folder.tmp").mkdir()
    assert sweep(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".folder.tmp", ".hidden", "shard.parquet"]
    assert sweep(tmp_path / "missing") == 0

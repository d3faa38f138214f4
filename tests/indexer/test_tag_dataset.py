"""``sagashi tag-dataset``: predictions into Parquet shards in the import format, without an
index. The shards imported with ``sagashi import DIR --model-dir M`` give the index
``sagashi index`` builds of the same files (SQLite and PostgreSQL); captions equal
``sagashi export --captions``; a rerun resumes, and drops rows of files changed or gone;
bad input is one line and exit status 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.settings import Settings
from app.store import migrate
from app.store.db import create_db_engine, session_factory
from app.store.models import Image
from app.tagger.factory import open_tagger
from app.tagger.protocol import Tagger
from indexer import jobs
from indexer.cli import app as cli
from indexer.tag_dataset import (
    DatasetError,
    DatasetOptions,
    DatasetSummary,
    caption_options,
    output_lock,
    tag_dataset,
)
from tests.support.cli import SAGASHI
from tests.support.index_helpers import (
    assert_same_index,
    failed,
    index_locally,
    make_image,
    snapshot,
)
from tests.support.tag_dataset_helpers import IMAGES, collection, rows_in, settings_for


def run(
    settings: Settings,
    tagger: Tagger,
    sources: list[Path],
    out: Path,
    captions: bool = False,
    deny: frozenset[str] | None = None,
) -> DatasetSummary:
    index = jobs.index_options(settings)
    caption = None
    if captions:
        caption = caption_options(
            settings, index.aliases, None, deny, "character,copyright,general"
        )
    options = DatasetOptions(out, shard_rows=8, captions=caption)
    seen: list[tuple[int, int]] = []
    summary = tag_dataset(tagger, index, sources, options, lambda d, t: seen.append((d, t)))
    assert all(done <= total for done, total in seen)
    assert seen[-1] == (summary.found, summary.found), "every file found is counted once"
    return summary


def state(url: str) -> dict[str, dict[str, object]]:
    """Live images by path: content, tags, scores and embedding bytes, and the file facts
    the next index compares (size, mtime, format, md5); image ids left out."""
    engine = create_db_engine(url)
    try:
        got = snapshot(engine)
        with session_factory(engine)() as session:
            rows = session.execute(
                select(Image.path, Image.size_bytes, Image.mtime_ns, Image.format, Image.md5)
            ).all()
    finally:
        engine.dispose()
    for path, size, mtime_ns, kind, md5 in rows:
        if path in got:
            got[path].pop("id")
            got[path]["file"] = (size, mtime_ns, kind, md5)
    return got


def cli_env(url: str, data_dir: Path, model_dir: Path) -> dict[str, str]:
    return {
        "SAGASHI_DATABASE_URL": url,
        "SAGASHI_DATA_DIR": str(data_dir),
        "SAGASHI_MODEL_DIR": str(model_dir),
        "SAGASHI_BATCH_SIZE": "8",
        "SAGASHI_DEVICE": "cpu",
    }


def test_imported_shards_equal_a_local_index(
    migrated_url: str, tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    root = collection(tmp_path / "art")
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    migrate.upgrade(local_url)
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
    settings = settings_for(migrated_url, tmp_path / "data", tiny_pixai_dir)
    out = tmp_path / "out"

    summary = run(settings, tagger, [root], out)
    want = index_locally(settings_for(local_url, tmp_path / "l", tiny_pixai_dir), tagger, root)
    assert (summary.tagged, summary.failed) == (want.new, want.failed) == (IMAGES + 2, 2)
    assert failed(summary.failures) == failed(want.failures), "the index's per-file errors"
    assert summary.shards_written == 3  # 22 rows, 8 a shard
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    env = cli_env(migrated_url, tmp_path / "data", tiny_pixai_dir)
    result = CliRunner().invoke(
        cli, ["import", str(out), "--model-dir", str(tiny_pixai_dir)], env=env
    )
    assert result.exit_code == 0, result.output
    got, want_state = state(migrated_url), state(local_url)
    # Scores within 1e-4: PostgreSQL sends a REAL back as its shortest text, which the
    # snapshot's rounding to 6 places can tell from the SQLite value.
    assert_same_index(got, want_state)
    assert {p: s["file"] for p, s in got.items()} == {p: s["file"] for p, s in want_state.items()}
    if migrated_url.startswith("sqlite"):
        assert got == want_state, "equal to the bit"

    # The index of the same files over the import finds every one unchanged.
    again = index_locally(settings, tagger, root)
    assert (again.new, again.modified, again.unchanged) == (0, 0, IMAGES + 2)


def test_captions_equal_the_exported_ones(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    root = collection(tmp_path / "art")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
    settings = settings_for(url, tmp_path / "data", tiny_pixai_dir)
    out = tmp_path / "out"
    # A tag the tiny model gives some images above the general threshold, denied in both.
    denied = frozenset({"solo"})
    summary = run(settings, tagger, [root], out, captions=True, deny=denied)
    assert summary.captions_written == IMAGES + 2
    index_locally(settings, tagger, root)
    exported = tmp_path / "exported"
    result = CliRunner().invoke(
        cli,
        ["export", "--captions", str(exported), "--deny", "solo"],
        env=cli_env(url, tmp_path / "data", tiny_pixai_dir),
    )
    assert result.exit_code == 0, result.output
    ours = {
        p.relative_to(out / "captions"): p.read_text() for p in (out / "captions").rglob("*.txt")
    }
    theirs = {p.relative_to(exported): p.read_text() for p in exported.rglob("*.txt")}
    assert ours == theirs
    assert {Path("2/b.txt"), Path("2/b.png.txt")} <= set(ours), "a shared stem as in the export"
    assert any(text.strip() for text in ours.values())


def test_a_rerun_skips_what_is_there_and_drops_rows_of_changed_or_gone_files(
    tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    root = collection(tmp_path / "art")
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
    settings = settings_for("sqlite://", tmp_path / "data", tiny_pixai_dir)
    out = tmp_path / "out"
    first = run(settings, tagger, [root], out, captions=True)
    assert first.tagged == IMAGES + 2

    same = run(settings, tagger, [root], out, captions=True)
    assert (same.already_tagged, same.tagged, same.shards_written) == (IMAGES + 2, 0, 0)
    assert failed(same.failures) == failed(first.failures), "failed files are tried again"

    make_image(root / "0" / "003.png", seed=3003)  # changed
    (root / "1" / "012.png").unlink()  # gone
    make_image(root / "1" / "new.png", seed=77)  # new
    # Rows of another folder an earlier run tagged into the same DIR stay.
    other = tmp_path / "other"
    make_image(other / "x.png", seed=88)
    run(settings, tagger, [other], out)
    changed = run(settings, tagger, [root], out, captions=True)
    assert (changed.tagged, changed.already_tagged) == (2, IMAGES)
    assert changed.rows_removed == 2 and changed.captions_removed == 1

    rows = rows_in(out)
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)), "every file once"
    found = sorted(
        str(p) for p in root.rglob("*.*") if p.name not in ("cut.png", "not-an-image.png")
    )
    assert sorted(paths) == sorted([*found, str(other / "x.png")])
    for row in rows:
        facts = os.stat(row["path"])
        assert (row["size"], row["mtime_ns"]) == (facts.st_size, facts.st_mtime_ns)
    assert not (out / "captions" / "1" / "012.txt").exists(), "a gone file's caption goes"
    assert (out / "captions" / "1" / "new.txt").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    busy = "another 'sagashi tag-dataset' is writing to"
    with output_lock(out), pytest.raises(DatasetError, match=busy), output_lock(out):
        pass
    with output_lock(out):  # free again once the first is done
        pass


def bad_input_cases(tmp_path: Path, model_dir: Path) -> list[tuple[list[str], dict[str, str], str]]:
    art = tmp_path / "art"
    make_image(art / "a.png", seed=1)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    unwritable = Path("/sys/sagashi-out") if os.geteuid() == 0 else tmp_path / "ro" / "out"
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
    model = {"SAGASHI_MODEL_DIR": str(model_dir)}
    return [
        (
            [str(tmp_path / "nope"), "--out", str(tmp_path / "o1")],
            model,
            f"no such file or folder: {tmp_path / 'nope'}",
        ),
        ([str(art), "--out", str(a_file)], model, f"--out {a_file} is not a folder"),
        ([str(art), "--out", str(unwritable)], model, f"cannot write to --out {unwritable}: "),
        (
            [str(art), "--out", str(tmp_path / "o2")],
            {"SAGASHI_MODEL_DIR": ""},
            "no model directory: pass --model-dir DIR or set SAGASHI_MODEL_DIR",
        ),
        (
            [str(art), "--out", str(tmp_path / "o3"), "--captions", "--order", "general,nope"],
            model,
            "--order: unknown group 'nope'",
        ),
    ]


def test_bad_input_exits_2_with_one_line(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    for args, extra, reason in bad_input_cases(tmp_path, tiny_pixai_dir):
        env = {**os.environ, "SAGASHI_DATA_DIR": str(tmp_path / "data"), **extra}
        if not extra.get("SAGASHI_MODEL_DIR"):
            env.pop("SAGASHI_MODEL_DIR", None)
        result = subprocess.run(
            [SAGASHI, "tag-dataset", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"sagashi: error: {reason}"), lines

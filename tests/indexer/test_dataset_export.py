"""``sagashi export --where QUERY DIR``: a search exported as a training-set folder, on the
real store (SQLite and PostgreSQL) with real files: every --images mode, a query, name
collisions, re-runs, vanished files and hard links across filesystems."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from app.query import QueryError
from app.store.db import create_db_engine
from indexer.dataset import (
    MANIFEST,
    DatasetOptions,
    ImageMode,
    export_dataset,
    place_image,
)
from indexer.export import CaptionOptions, EmptyIndexError
from tests.support.api_helpers import ADMIN_TOKEN, make_library
from tests.support.cli import run_sagashi
from tests.support.export_helpers import (
    ALIASES,
    HU_TAO,
    MIKU,
    MIKU_CAPTION,
    NOTHING,
    ExportCli,
    add_images,
)
from tests.support.serve_helpers import sagashi_serve

HU_TAO_CAPTION = "hu tao (genshin impact), genshin impact, 1girl\n"


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    created = create_db_engine(migrated_url)
    yield created
    created.dispose()


def library(engine: Engine, root: Path) -> dict[str, Path]:
    """Three images with real, distinct bytes; two share the stem 'pic'."""
    paths = {
        "miku": root / "a" / "pic.png",
        "hutao": root / "b" / "pic.jpg",
        "nothing": root / "c" / "other.webp",
    }
    add_images(engine, {paths["miku"]: MIKU, paths["hutao"]: HU_TAO, paths["nothing"]: NOTHING})
    for name, path in paths.items():
        path.write_bytes(f"image bytes of {name}".encode())
    return paths


def run(engine: Engine, out: Path, mode: ImageMode, where: str = "", **caption: Any) -> Any:
    options = DatasetOptions(CaptionOptions(**caption), mode, where)
    return export_dataset(engine, out, options, ALIASES)


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def listing(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("mode", list(ImageMode))
def test_each_mode_puts_images_beside_their_captions(
    engine: Engine, tmp_path: Path, mode: ImageMode
) -> None:
    paths = library(engine, tmp_path / "art")
    out = tmp_path / "dataset"
    progress: list[tuple[int, int]] = []
    options = DatasetOptions(CaptionOptions(), mode, "1girl")
    summary = export_dataset(engine, out, options, ALIASES, lambda d, t: progress.append((d, t)))
    # 1girl at 0.30 matches miku (0.99) and hu tao (0.3 exactly: inclusive), not 'nothing'
    ids = {entry["path"]: entry for entry in manifest(out)}
    miku_id, hutao_id = ids[str(paths["miku"])]["id"], ids[str(paths["hutao"])]["id"]
    assert miku_id < hutao_id  # the lower id keeps the shared stem
    hutao_name = f"pic_{hutao_id}.jpg"
    images = [] if mode is ImageMode.none else ["pic.png", hutao_name]
    assert listing(out) == sorted([MANIFEST, "pic.txt", f"pic_{hutao_id}.txt", *images])
    assert (out / "pic.txt").read_text() == MIKU_CAPTION
    assert (out / f"pic_{hutao_id}.txt").read_text() == HU_TAO_CAPTION
    if mode is not ImageMode.none:
        assert (out / "pic.png").read_bytes() == b"image bytes of miku"
        assert (out / hutao_name).read_bytes() == b"image bytes of hutao"
        assert (out / "pic.png").is_symlink() == (mode is ImageMode.symlink)
        same_inode = os.stat(out / "pic.png").st_ino == os.stat(paths["miku"]).st_ino
        assert same_inode == (mode in (ImageMode.hardlink, ImageMode.symlink))
    entries = manifest(out)
    assert [e["file_name"] for e in entries] == ["pic.png", hutao_name]
    assert entries[0]["text"] == MIKU_CAPTION.strip()
    assert entries[0]["tags"][0] == {"name": "1girl", "group": "general", "score": 0.99}
    assert {e["sha256"] for e in entries} and all(e["width"] == 8 for e in entries)
    written = 0 if mode is ImageMode.none else 2
    assert summary.as_dict() == {
        "matched": 2,
        "images_written": written,
        "images_skipped": 0,
        "copied_not_linked": 0,
        "captions_written": 2,
        "captions_skipped": 0,
        "empty_captions": 0,
        "renamed": 1,
        "failed": 0,
        "failed_by_reason": {},
    }
    assert summary.renames == [(str(paths["hutao"]), hutao_name)]
    assert progress == [(2, 2)]

    # A re-run changes nothing, reports no rename, and lists the same entries.
    before = {name: (out / name).read_bytes() for name in listing(out)}
    again = run(engine, out, mode, "1girl")
    assert listing(out) == sorted(before) and manifest(out) == entries
    assert again.images_skipped == written and again.captions_skipped == 2
    assert again.images_written == again.captions_written == again.renamed == 0
    assert again.renames == [] and again.failed == 0


def test_names_survive_a_lost_manifest_and_a_wider_query(engine: Engine, tmp_path: Path) -> None:
    paths = library(engine, tmp_path / "art")
    out = tmp_path / "dataset"
    run(engine, out, ImageMode.copy, "hu_tao_(genshin_impact)")
    # only hu tao matched: it got the plain name
    assert listing(out) == [MANIFEST, "pic.jpg", "pic.txt"]
    (out / MANIFEST).unlink()
    summary = run(engine, out, ImageMode.copy, "1girl")
    entries = {e["path"]: e["file_name"] for e in manifest(out)}
    # hu tao keeps pic.jpg (recognised as its own copy); miku may not take the stem 'pic'
    assert entries[str(paths["hutao"])] == "pic.jpg"
    miku_name = entries[str(paths["miku"])]
    assert miku_name.startswith("pic_") and miku_name.endswith(".png")
    assert (out / miku_name).read_bytes() == b"image bytes of miku"
    assert (out / "pic.txt").read_text() == HU_TAO_CAPTION
    assert summary.images_skipped == 1 and summary.images_written == 1
    # a foreign file in the folder is never overwritten or claimed
    (out / "other.webp").write_bytes(b"the user's own file")
    run(engine, out, ImageMode.copy, "")
    assert (out / "other.webp").read_bytes() == b"the user's own file"
    entries = {e["path"]: e["file_name"] for e in manifest(out)}
    assert entries[str(paths["nothing"])].startswith("other_")
    assert len(entries) == 3


def test_vanished_files_are_reported_per_file(engine: Engine, tmp_path: Path) -> None:
    paths = library(engine, tmp_path / "art")
    paths["miku"].unlink()
    out = tmp_path / "dataset"
    for mode in (ImageMode.copy, ImageMode.hardlink, ImageMode.symlink):
        summary = run(engine, out / mode.value, mode, "1girl")
        assert summary.failed == 1 and summary.failed_by_reason == {"not_found": 1}
        assert summary.failures[0].path == str(paths["miku"])
        # no caption without its image, no dangling link
        names = listing(out / mode.value)
        assert "pic.png" not in names and "pic.txt" not in names
        assert [e["path"] for e in manifest(out / mode.value)] == [str(paths["hutao"])]


def test_hard_links_across_filesystems_fall_back_to_a_copy(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary folder")
    source = tmp_path / "image.png"
    source.write_bytes(b"bytes")
    folder = shm / f"sagashi-test-{os.getpid()}"
    folder.mkdir()
    try:
        target = folder / "image.png"
        assert place_image(str(source), target, ImageMode.hardlink, False) == "copied"
        assert target.read_bytes() == b"bytes" and not target.is_symlink()
        assert place_image(str(source), target, ImageMode.hardlink, False) == "skipped"
        assert [p.name for p in folder.iterdir()] == ["image.png"]  # no temporary left
    finally:
        for item in folder.iterdir():
            item.unlink()
        folder.rmdir()


def test_a_bad_query_and_an_empty_index(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(EmptyIndexError):
        run(engine, tmp_path / "out", ImageMode.copy)
    library(engine, tmp_path / "art")
    with pytest.raises(QueryError):
        run(engine, tmp_path / "out", ImageMode.copy, "order:score")
    summary = run(engine, tmp_path / "out", ImageMode.copy, "no_such_tag")
    assert summary.matched == 0 and listing(tmp_path / "out") == [MANIFEST]
    # thresholds apply to the query as to the captions: hu tao's 1girl is 0.3
    summary = run(engine, tmp_path / "t", ImageMode.none, "1girl", threshold_general=0.31)
    assert [e["file_name"] for e in manifest(tmp_path / "t")] == ["pic.png"]


def test_the_command(tmp_path: Path, export_cli: ExportCli) -> None:
    out = tmp_path / "set"
    code, output = export_cli("--where", "1girl", str(out))
    assert code == 2 and "sagashi: error: the index is empty" in output
    engine = create_db_engine(export_cli.url)
    paths = library(engine, tmp_path / "art")
    engine.dispose()
    code, output = export_cli("--where", "((", str(out))
    assert code == 2 and "sagashi: error: bad --where query at character" in output
    code, output = export_cli("--images", "copy", "--captions", str(out))
    assert code == 2 and "--images needs a dataset folder" in output
    code, output = export_cli("--captions", str(out), str(out))
    assert code == 2 and "give either DIR" in output

    code, output = export_cli("--where", "hatsune_miku", "--images", "hardlink", str(out))
    assert code == 0, output
    assert listing(out) == [MANIFEST, "pic.png", "pic.txt"]
    assert "exported 1 matching images" in output and "images written" in output
    paths["hutao"].unlink()
    code, output = export_cli("--where", "1girl", str(out))
    assert code == 1, output
    assert f"failed: {paths['hutao']}: not_found" in output
    code, output = export_cli("--where", "1girl", str(out))
    assert output.count("name taken") == 0 and code == 1

    # --where also narrows the captions-only export
    code, output = export_cli(
        "--where", "hu_tao_(genshin_impact)", "--captions", str(tmp_path / "c")
    )
    assert code == 0, output
    assert [p.name for p in (tmp_path / "c").rglob("*.txt")] == ["pic.txt"]
    assert (tmp_path / "c" / "pic.txt").read_text() == HU_TAO_CAPTION  # root: art/b


def test_the_gallery_queues_an_export_that_a_worker_runs(
    tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    """Over HTTP against a real 'sagashi serve'; a real 'sagashi worker' runs the job."""
    settings = {
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_ADMIN_TOKEN": ADMIN_TOKEN,
        "SAGASHI_DEVICE": "cpu",
        "SAGASHI_TORCH_THREADS": "1",
        "SAGASHI_DECODE_WORKERS": "1",
        "SAGASHI_EXPORT_DIR": str(tmp_path / "exports"),
    }
    environment = {"SAGASHI_DATA_DIR": str(tmp_path / "data"), **settings}
    images = make_library(tmp_path / "library", 6)
    with sagashi_serve(tmp_path, settings) as base:
        indexed = run_sagashi("index", str(tmp_path / "library"), env=environment)
        assert indexed.returncode == 0, indexed.stderr
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=base, timeout=30) as client:
            body = {"name": "set", "q": "", "images": "symlink", "threshold_general": 0.2}
            assert client.post("/api/admin/export", json=body).status_code == 401
            bad = client.post("/api/admin/export", headers=auth, json={**body, "name": "../x"})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
            bad = client.post("/api/admin/export", headers=auth, json={**body, "q": "(("})
            assert bad.status_code == 400 and bad.json()["error"]["position"] == 1
            queued = client.post("/api/admin/export", headers=auth, json=body)
            assert queued.status_code == 202, queued.text
            job = queued.json()
            assert job["kind"] == "export" and job["state"] == "queued"
            assert job["params"]["where"] == "" and job["params"]["images"] == "symlink"
            worker = run_sagashi("worker", "--once", env=environment)
            assert worker.returncode == 0, worker.stderr
            done = client.get(f"/api/admin/jobs/{job['id']}", headers=auth).json()
    assert done["state"] == "done", done
    assert done["done"] == done["total"] == 6 and done["failed"] == 0
    folder = tmp_path / "exports" / "set"
    assert done["summary"]["folder"] == str(folder)
    assert done["summary"]["images_written"] == done["summary"]["captions_written"] == 6
    entries = manifest(folder)
    assert sorted(e["path"] for e in entries) == sorted(str(p) for p in images)
    for entry in entries:
        assert os.readlink(folder / entry["file_name"]) == entry["path"]
        stem = os.path.splitext(entry["file_name"])[0]
        assert (folder / f"{stem}.txt").read_text() == entry["text"] + "\n"
